"""Reading the rows of a data source: built-in assets, JSON lines, JSON documents, Parquet, HF datasets
(a hub name, or a folder written by `save_to_disk`, with or without `hf:`).

Rows come out raw (dicts, strings); a row that cannot even be decoded comes out as a `RowError` naming its
source and line, for the loader (dlma_ray.data.records) to skip and count. An unreadable source raises.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from pathlib import Path
from typing import Any, Iterator, TypeVar

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # dlma_ray/assets: package data
BUILTIN_SOURCES = {"builtin:demo": "demo_prompts.jsonl", "builtin:demo-eval": "demo_eval_prompts.jsonl",
                   "builtin:heldout": "heldout_prompts.jsonl"}
T = TypeVar("T")


class RowError(ValueError):
    """Why one row cannot be used; ``reason`` is the LoadReport key."""

    def __init__(self, reason: str, detail: str = "", where: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.where = reason, where  # where: "source:line" when the reader knows it


def _read_jsonl(path: Path, source: str) -> Iterator[Any]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for line, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue  # blank lines (e.g. a trailing one) are not rows
                try:
                    text = raw.decode("utf-8-sig")
                except UnicodeDecodeError:
                    yield RowError("undecodable line", where=f"{source}:{line}")
                    continue
                try:
                    yield json.loads(text)
                except json.JSONDecodeError:
                    yield RowError("invalid json", where=f"{source}:{line}")
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


def _read_hf(name: str, split: str, source: str, data_dir: str = "", revision: str = "") -> Iterator[Any]:
    import datasets  # heavy: only when an hf: source is asked for

    folder = Path(name).expanduser()
    saved = folder.is_dir() and any((folder / f).exists() for f in ("dataset_dict.json", "dataset_info.json"))
    try:
        # A folder of data files (e.g. a local copy of Anthropic/hh-rlhf with data_dir) goes to load_dataset too.
        ds = datasets.load_from_disk(str(folder)) if saved or folder.is_dir() and not data_dir else \
            datasets.load_dataset(name, split=split, data_dir=data_dir or None, revision=revision or None)
    except Exception as exc:  # datasets raises many types; all mean the same config error here
        raise ValueError(f"data source {source!r} cannot be loaded: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"data source {source!r} has no split {split!r}; splits: {', '.join(ds)}")
        ds = ds[split]
    return iter(ds)


def read_rows(source: str, split: str = "train", prompt_field: str = "prompt", data_dir: str = "",
              revision: str = "") -> Iterator[Any]:
    """Raw rows of a source; rows that cannot be decoded come as RowError instances to be counted. ``data_dir``
    and ``revision`` (a folder of, and a pinned commit of, an `hf:` dataset) apply to `hf:` sources only."""
    if source.startswith("builtin:"):
        if source not in BUILTIN_SOURCES:
            raise ValueError(f"data source {source!r} is not a built-in; built-ins: {', '.join(BUILTIN_SOURCES)}")
        return _read_jsonl(ASSETS / BUILTIN_SOURCES[source], source)
    if source.startswith("hf:"):
        if not source[3:]:
            raise ValueError(f"data source {source!r}: give a dataset name or folder after 'hf:'")
        return _read_hf(source[3:], split, source, data_dir, revision)
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


def sample(items: list[T], k: int, seed: int) -> list[T]:
    """k seeded picks, kept in source order so runs stay readable."""
    if k <= 0 or k >= len(items):
        return items
    picked = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in picked]
