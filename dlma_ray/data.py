"""Prompt and preference-pair loading: many row formats in, one validated ``PromptRecord`` out.

Sources (``data.source``):
  builtin:demo / builtin:demo-eval   64 / 24 short prompts shipped in ``dlma_ray/assets`` (half harmful)
  builtin:heldout                    64 evaluation prompts, never trained on: 32 harmful, 32 borderline-safe
  path.jsonl, path.jsonl.gz          one JSON object a line
  path.json, path.json.gz            a top-level list of objects, or of plain strings (each one a prompt)
  path.parquet                       read with pyarrow
  hf:<name or folder>                a folder written by ``save_to_disk`` (``data.split`` picks from a
                                     DatasetDict), else ``datasets.load_dataset(name, split=data.split)``

The prompt column (``data.prompt_field``) holds one of:
  plain text                         "How do I bake bread?" -> one user message
  an hh-rlhf dialogue                "\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: bake bread?"
  a list of chat messages            [{"role": "system"|"user"|"assistant", "content": "..."}]
A dialogue that ends with an assistant turn loses that turn, which becomes the record's SFT ``target``
(a string ``target`` or ``response`` column overrides it). An optional string ``kind`` column is kept.

Bad rows are skipped and counted by reason in a ``LoadReport``, never raised; an unreadable source
(missing file, unknown format, broken JSON document) is a config error and raises with its name.

Preference pairs (``load_preference_pairs``) are rows of two hh dialogues ``{"chosen", "rejected"}`` that
share every turn but the last assistant turn, rows of explicit ``{"prompt", "chosen", "rejected"}``, or
rows in TRL's conversational preference format (chat messages; ``dlma_ray.preference_formats``), e.g. a
round exported by ``dlma_ray.export``. A folder written by ``save_to_disk`` is read like ``hf:<folder>``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from dlma_ray.config import DataConfig

log = logging.getLogger(__name__)

Chat = list[dict[str, str]]
ASSETS = Path(__file__).resolve().parent / "assets"
BUILTIN_SOURCES = {"builtin:demo": "demo_prompts.jsonl", "builtin:demo-eval": "demo_eval_prompts.jsonl",
                   "builtin:heldout": "heldout_prompts.jsonl"}
_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_TRAILING_EMPTY_ASSISTANT = re.compile(r"\n\nAssistant:\s*$")
T = TypeVar("T")


# ---------------------------------------------------------------- records

@dataclass(frozen=True)
class Message:
    role: str  # "system" (first message only), "user" or "assistant"
    content: str


def prompt_id_of(chat: Chat) -> str:
    """First 16 hex chars of sha256 of the messages' canonical JSON: equal dialogues, equal ids."""
    canonical = json.dumps(chat, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PromptRecord:
    prompt_id: str
    messages: tuple[Message, ...]  # ends with a user message
    target: str | None = None  # the dialogue's own final assistant turn, if it had one
    kind: str = ""  # label from the data, e.g. "harmful" / "ordinary"

    def __post_init__(self) -> None:
        if not self.messages or self.messages[-1].role != "user":
            raise ValueError("a prompt's last message must come from the user")

    @classmethod
    def from_chat(cls, chat: Chat, target: str | None = None, kind: str = "") -> PromptRecord:
        messages = tuple(Message(m["role"], m["content"]) for m in chat)
        return cls(prompt_id_of(chat), messages, target, kind)

    def as_chat(self) -> Chat:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    @property
    def prompt(self) -> str:
        return self.messages[-1].content


@dataclass(frozen=True)
class PreferencePair:
    prompt: PromptRecord
    chosen: str
    rejected: str


@dataclass
class LoadReport:
    rows_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    duplicates: int = 0
    too_long: int = 0
    sampled_out: int = 0  # usable rows left out by the max_prompts / limit sample
    kept: int = 0
    source: str = ""

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        parts = [f"{self.source or 'source'}: read {self.rows_read} rows, kept {self.kept}"]
        if self.skipped:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
            parts.append(f"skipped {sum(self.skipped.values())} ({reasons})")
        for label, n in (("duplicates", self.duplicates), ("too long", self.too_long),
                         ("left out by sampling", self.sampled_out)):
            if n:
                parts.append(f"{label} {n}")
        return "; ".join(parts)


class RowError(ValueError):
    """Why one row cannot be used; ``reason`` is the LoadReport key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---------------------------------------------------------------- parsing rows

def parse_hh_dialogue(text: str) -> Chat:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages with stripped contents."""
    marks = list(_HH_MARKER.finditer(text))
    if not marks:
        raise ValueError("no 'Human:' / 'Assistant:' turns found")
    if text[:marks[0].start()].strip():
        raise ValueError("text before the first 'Human:' / 'Assistant:' marker")
    chat: Chat = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        role = "user" if mark.group(1) == "Human" else "assistant"
        content = text[mark.end():end].strip()
        if not content:
            raise ValueError(f"turn {i + 1} ({mark.group(1)}) is empty")
        if chat and chat[-1]["role"] == role:
            raise ValueError(f"turns {i} and {i + 1} are both {mark.group(1)} turns")
        chat.append({"role": role, "content": content})
    return chat


def _check_turns(chat: Chat) -> None:
    """Optional leading system message, then user/assistant turns alternating from a user turn."""
    body = chat[1:] if chat and chat[0]["role"] == "system" else chat
    if not body:
        raise RowError("bad dialogue", "no user turn")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise RowError("bad dialogue", f"message {i + 1} is {m['role']!r}, expected {expected!r}")


def _chat_from_value(value: Any) -> Chat:
    """A prompt column's value as checked chat messages (may still end with an assistant turn)."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError("empty")
        if "\n\nHuman:" not in value:
            return [{"role": "user", "content": value.strip()}]
        # "...\n\nAssistant:" with nothing after it only marks whose turn is next.
        try:
            chat = parse_hh_dialogue(_TRAILING_EMPTY_ASSISTANT.sub("", value))
        except ValueError as exc:
            raise RowError("bad dialogue", str(exc)) from None
    elif isinstance(value, (list, tuple)):
        if not value:
            raise RowError("empty")
        chat = []
        for m in value:
            ok = (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                  and isinstance(m.get("content"), str) and m["content"].strip())
            if not ok:
                raise RowError("bad dialogue", f"not a message with a role and non-empty content: {m!r:.80}")
            chat.append({"role": m["role"], "content": m["content"].strip()})
    else:
        raise RowError("wrong type", type(value).__name__)
    _check_turns(chat)
    return chat


def _as_object(row: Any) -> dict:
    if isinstance(row, RowError):  # the reader could not even decode this row
        raise row
    if not isinstance(row, dict):
        raise RowError("not an object", type(row).__name__)
    return row


def _kind(row: dict) -> str:
    return row["kind"] if isinstance(row.get("kind"), str) else ""


def record_from_row(row: Any, prompt_field: str = "prompt") -> PromptRecord:
    """One source row as a PromptRecord, or RowError naming why it is unusable."""
    row = _as_object(row)
    if row.get(prompt_field) is None:
        raise RowError("missing field", prompt_field)
    chat = _chat_from_value(row[prompt_field])
    target = None
    if chat[-1]["role"] == "assistant":
        target = chat.pop()["content"]
    for column in ("target", "response"):
        if isinstance(row.get(column), str) and row[column].strip():
            target = row[column].strip()
            break
    return PromptRecord.from_chat(chat, target, _kind(row))


def pair_from_row(row: Any) -> PreferencePair:
    """A ``{chosen, rejected}`` hh row, a ``{prompt, chosen, rejected}`` row, or a row in TRL's conversational
    preference format (dlma_ray.preference_formats) as a PreferencePair."""
    from dlma_ray.preference_formats import conversational_pair, is_conversational_pair

    row = _as_object(row)
    if row.get("chosen") is None or row.get("rejected") is None:
        raise RowError("missing field", "chosen/rejected")
    if is_conversational_pair(row):  # TRL's conversational preference format
        chat, chosen, rejected = conversational_pair(row)
    elif not isinstance(row["chosen"], str) or not isinstance(row["rejected"], str):
        raise RowError("wrong type", "chosen/rejected must be strings or chat messages")
    elif row.get("prompt") is not None:
        chat = _chat_from_value(row["prompt"])
        chosen, rejected = row["chosen"].strip(), row["rejected"].strip()
    else:
        if any(_TRAILING_EMPTY_ASSISTANT.search(row[c]) for c in ("chosen", "rejected")):
            raise RowError("empty", "a dialogue ends with an empty assistant turn")
        chat = _chat_from_value(row["chosen"])
        other = _chat_from_value(row["rejected"])
        if chat[-1]["role"] != "assistant" or other[-1]["role"] != "assistant":
            raise RowError("bad pair", "a dialogue does not end with an assistant turn")
        if chat[:-1] != other[:-1]:
            raise RowError("bad pair", "chosen and rejected differ before their last turn")
        chosen, rejected = chat.pop()["content"], other[-1]["content"]
    if chat[-1]["role"] != "user":
        raise RowError("bad dialogue", "the prompt ends with an assistant turn")
    if not chosen or not rejected:
        raise RowError("empty", "chosen/rejected")
    if chosen == rejected:
        raise RowError("bad pair", "chosen == rejected")
    return PreferencePair(PromptRecord.from_chat(chat, None, _kind(row)), chosen, rejected)


# ---------------------------------------------------------------- reading sources

def _read_jsonl(path: Path, source: str) -> Iterator[Any]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue  # blank lines (e.g. a trailing one) are not rows
                try:
                    text = raw.decode("utf-8-sig")
                except UnicodeDecodeError:
                    yield RowError("undecodable line")
                    continue
                try:
                    yield json.loads(text)
                except json.JSONDecodeError:
                    yield RowError("invalid json")
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"data source {source!r} cannot be read: {exc}") from exc


def _read_document(path: Path, source: str, prompt_field: str) -> Iterator[Any]:
    """A .json(.gz) list or a .parquet table, read whole: a broken document is one config error."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return iter(pq.read_table(path).to_pylist())
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        data = json.loads(raw.decode("utf-8-sig"))
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # pyarrow and json errors are ValueErrors
        raise ValueError(f"data source {source!r} cannot be read: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError(f"data source {source!r}: expected a top-level JSON list, got {type(data).__name__}")
    return iter({prompt_field: item} if isinstance(item, str) else item for item in data)


def _read_hf(name: str, split: str, source: str) -> Iterator[Any]:
    import datasets  # heavy: only when an hf: source is asked for

    folder = Path(name).expanduser()
    try:
        ds = datasets.load_from_disk(str(folder)) if folder.is_dir() else datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types; all mean the same config error here
        raise ValueError(f"data source {source!r} cannot be loaded: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"data source {source!r} has no split {split!r}; splits: {', '.join(ds)}")
        ds = ds[split]
    return iter(ds)


def read_rows(source: str, split: str = "train", prompt_field: str = "prompt") -> Iterator[Any]:
    """Raw rows of a source; rows that cannot be decoded come as RowError instances to be counted."""
    if source.startswith("builtin:"):
        if source not in BUILTIN_SOURCES:
            raise ValueError(f"data source {source!r} is not a built-in; built-ins: {', '.join(BUILTIN_SOURCES)}")
        return _read_jsonl(ASSETS / BUILTIN_SOURCES[source], source)
    if source.startswith("hf:"):
        if not source[3:]:
            raise ValueError(f"data source {source!r}: give a dataset name or folder after 'hf:'")
        return _read_hf(source[3:], split, source)
    path = Path(source).expanduser()
    if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "dataset_info.json")):
        return _read_hf(str(path), split, source)  # a folder written by save_to_disk
    if not path.is_file():
        raise FileNotFoundError(f"data source {source!r}: no such file")
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem.endswith(".jsonl"):
        return _read_jsonl(path, source)
    if stem.endswith(".json") or name.endswith(".parquet"):
        return _read_document(path, source, prompt_field)
    raise ValueError(f"data source {source!r}: unknown format; expected .jsonl, .json (.gz ok), .parquet, "
                     "builtin:demo or hf:<name>")


def _sample(items: list[T], k: int, seed: int) -> list[T]:
    """k seeded picks, kept in source order so runs stay readable."""
    if k <= 0 or k >= len(items):
        return items
    picked = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in picked]


# ---------------------------------------------------------------- public loaders

def _collect(rows: Iterator[Any], convert: Callable[[Any], T], key: Callable[[T], Any] | None,
             fits: Callable[[T], bool] | None, limit: int, seed: int, report: LoadReport) -> list[T]:
    """Convert rows, skip bad ones, drop repeats (by ``key``) and misfits, then sample: counting each."""
    items: list[T] = []
    seen: set[Any] = set()
    for row in rows:
        report.rows_read += 1
        try:
            item = convert(row)
        except RowError as err:
            report.skip(err.reason)
            continue
        if key is not None and key(item) in seen:
            report.duplicates += 1
            continue
        if key is not None:
            seen.add(key(item))
        if fits is not None and not fits(item):
            report.too_long += 1
            continue
        items.append(item)
    sampled = _sample(items, limit, seed)
    report.sampled_out, report.kept = len(items) - len(sampled), len(sampled)
    log.info(report.summary())
    return sampled


def load_prompts(cfg: DataConfig, seed: int, count_tokens: Callable[[Chat], int] | None = None,
                 require_target: bool = False) -> tuple[list[PromptRecord], LoadReport]:
    """Read, validate, de-duplicate, length-filter and sample the prompts of ``cfg.source``.

    ``require_target`` (Self-Contrast) skips prompts without an SFT target, counted as "no target", before
    the ``max_prompts`` sample, so the sample holds only usable prompts.
    """
    report = LoadReport(source=cfg.source)
    fits = None if count_tokens is None else (lambda r: count_tokens(r.as_chat()) <= cfg.max_prompt_tokens)

    def convert(row: Any) -> PromptRecord:
        record = record_from_row(row, cfg.prompt_field)
        if require_target and not record.target:
            raise RowError("no target", "the prompt has no final assistant turn nor a target/response column")
        return record

    records = _collect(read_rows(cfg.source, cfg.split, cfg.prompt_field), convert,
                       (lambda r: r.prompt_id) if cfg.dedup else None, fits, cfg.max_prompts, seed, report)
    return records, report


def load_preference_pairs(path: str, limit: int = 0, seed: int = 0,
                          split: str = "train") -> tuple[list[PreferencePair], LoadReport]:
    """Preference pairs from any source ``read_rows`` reads (a jsonl.gz file, ``hf:<name or folder>``, a
    saved folder; ``split`` picks from an HF dataset); exact repeats are dropped, then ``limit`` sampled."""
    report = LoadReport(source=path)
    pairs = _collect(read_rows(path, split), pair_from_row, lambda p: (p.prompt.prompt_id, p.chosen, p.rejected),
                     None, limit, seed, report)
    return pairs, report
