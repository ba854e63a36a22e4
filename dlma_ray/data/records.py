"""Prompt and preference-pair loading: many row formats in, one validated ``PromptRecord`` out.

Sources (``data.source``):
  builtin:demo / builtin:demo-eval   64 / 24 short prompts shipped in ``dlma_ray/assets`` (half harmful)
  builtin:heldout                    64 evaluation prompts, never trained on: 32 harmful, 32 borderline-safe
  path.jsonl, path.jsonl.gz          one JSON object a line
  path.json, path.json.gz            a top-level list of objects, or of plain strings (each one a prompt)
  path.parquet                       read with pyarrow
  hf:<name or folder>                a ``save_to_disk`` folder (``data.split`` picks from a DatasetDict), else
                                     ``load_dataset(name, split, data_dir=data.data_dir, revision=data.revision)``

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
TRL's conversational rows (dlma_ray.data.formats), such as a round exported by dlma_ray.views.export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

from dlma_ray.config.tree import DataConfig
from dlma_ray.data.formats import conversational_parts, is_conversational_pair
from dlma_ray.data.sources import RowError, read_rows, sample

log = logging.getLogger(__name__)

Chat = list[dict[str, str]]
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
    examples: list[str] = field(default_factory=list)  # where the first skipped rows are, and why

    def skip(self, reason: str, where: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"{where or self.source}: {reason}")

    def summary(self) -> str:
        parts = [f"{self.source or 'source'}: read {self.rows_read} rows, kept {self.kept}"]
        if self.skipped:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
            parts.append(f"skipped {sum(self.skipped.values())} ({reasons}; first: {', '.join(self.examples)})")
        for label, n in (("duplicates", self.duplicates), ("too long", self.too_long),
                         ("left out by sampling", self.sampled_out)):
            if n:
                parts.append(f"{label} {n}")
        return "; ".join(parts)


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
    preference format (dlma_ray.data.formats) as a PreferencePair."""
    row = _as_object(row)
    if row.get("chosen") is None or row.get("rejected") is None:
        raise RowError("missing field", "chosen/rejected")
    if is_conversational_pair(row):  # completions as texts; whole dialogues when the prompt is implicit
        prompt, first, second = conversational_parts(row)
    elif isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
        prompt, first, second = row.get("prompt"), row["chosen"], row["rejected"]
        if prompt is None and any(_TRAILING_EMPTY_ASSISTANT.search(t) for t in (first, second)):
            raise RowError("empty", "a dialogue ends with an empty assistant turn")
    else:
        raise RowError("wrong type", "chosen/rejected must be strings or chat messages")
    if prompt is not None:
        chat = _chat_from_value(prompt)
        chosen, rejected = first.strip(), second.strip()
    else:
        chat, other = _chat_from_value(first), _chat_from_value(second)
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


# ---------------------------------------------------------------- public loaders

def _collect(rows: Iterator[Any], convert: Callable[[Any], T], key: Callable[[T], Any] | None,
             fits: Callable[[T], bool] | None, limit: int, seed: int, report: LoadReport) -> list[T]:
    """Convert rows, skip bad ones, drop repeats (by ``key``) and misfits, then sample: counting each."""
    items: list[T] = []
    seen: set[Any] = set()
    for row in rows:
        report.rows_read += 1
        try:
            if isinstance(row, RowError):
                raise row
            item = convert(row)
        except RowError as err:
            report.skip(err.reason, err.where or f"{report.source} row {report.rows_read}")
            continue
        if key is not None and key(item) in seen:
            report.duplicates += 1
            continue
        seen.add(key(item) if key is not None else None)
        if fits is not None and not fits(item):
            report.too_long += 1
            continue
        items.append(item)
    sampled = sample(items, limit, seed)
    report.sampled_out, report.kept = len(items) - len(sampled), len(sampled)
    log.info(report.summary())
    return sampled


def load_prompts(cfg: DataConfig, seed: int, count_tokens: Callable[[Chat], int] | None = None,
                 require_target: bool = False) -> tuple[list[PromptRecord], LoadReport]:
    """Read, validate, de-duplicate, length-filter (words, then tokens) and sample the prompts of ``cfg.source``.
    ``require_target`` (Self-Contrast) skips prompts without an SFT target, counted as "no target", before
    the ``max_prompts`` sample, so the sample holds only usable prompts."""
    report = LoadReport(source=cfg.source)

    def fits(r: PromptRecord) -> bool:  # words first (cheap; the released hh-rlhf filter), then tokens
        if cfg.max_prompt_words and sum(len(m.content.split()) for m in r.messages) > cfg.max_prompt_words:
            return False
        return count_tokens is None or count_tokens(r.as_chat()) <= cfg.max_prompt_tokens

    def convert(row: Any) -> PromptRecord:
        record = record_from_row(row, cfg.prompt_field)
        if require_target and not record.target:
            raise RowError("no target", "the prompt has no final assistant turn nor a target/response column")
        return record

    records = _collect(read_rows(cfg.source, cfg.split, cfg.prompt_field, cfg.data_dir, cfg.revision), convert,
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
