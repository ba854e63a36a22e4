"""The table schema reference, docs/reference/schema.md, from dlma_ray/core/schema.py (its column lists: name,
Arrow type and doc of every column, and its module docstring):

    python -m dlma_ray.views.schema_reference > docs/reference/schema.md      (or: make references)

tests/unit/views/test_references.py fails when the file is not this module's output."""

from __future__ import annotations

import sys

import pyarrow as pa

from dlma_ray.core import schema

# (table name, its schema, the schema's name in dlma_ray.core.schema, from -> to, where it lives, what it is);
# each table holds every column of the one before it, then its own.
TABLES = [
    ("prompts", schema.PROMPT_SCHEMA, "PROMPT_SCHEMA", "input of generate", "in memory (not stored)",
     "one row per prompt of round k"),
    ("generations", schema.GENERATION_SCHEMA, "GENERATION_SCHEMA", "generate -> score",
     "`<run>/round_k/generations/` (Parquet)", "the rendered contexts and the two sampled responses"),
    ("pairs", schema.PAIR_SCHEMA, "PAIR_SCHEMA", "score -> train, `dlma-ray export`", "`<run>/round_k/pairs/` (Parquet)",
     "the contrastive log-probs, R and the reference log-probs: one table for every method"),
]


def docstring_prose() -> list[str]:
    """The schema module's docstring without its first line and its indented overview (the table below replaces
    them): the paragraphs on what each method fills and how a stored log-prob is recomputed."""
    paragraphs = (schema.__doc__ or "").strip("\n").split("\n\n")[1:]
    return [line.rstrip() for p in paragraphs if not p.startswith(" ") for line in p.splitlines() + [""]]


def column_rows(fields: list[pa.Field]) -> list[str]:
    rows = ["| column | Arrow type | meaning |", "| --- | --- | --- |"]
    for f in fields:
        doc = f.metadata[b"doc"].decode().replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{f.type}` | {doc} |")
    return rows


def schema_reference() -> str:
    lines = ["# Table schema reference", "",
             ("Generated from `dlma_ray/core/schema.py` by `make references` "
              "(`python -m dlma_ray.views.schema_reference`); edit the column lists there, not this page."), "",
             (schema.__doc__ or "").strip().splitlines()[0], "",
             "| table | from -> to | stored in | columns | what it holds |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| [`{name}`](#{name}) | {flow} | {where} | {len(table)} | {what} |"
              for name, table, _, flow, where, what in TABLES] + [""]
    lines += docstring_prose()
    before: list[str] = []
    prev = ""
    for name, table, const, flow, where, what in TABLES:
        own = [f for f in table if f.name not in before]
        lines += [f"## `{name}`", "", f"`dlma_ray.core.schema.{const}` ({flow}), {where}: {what}. {len(table)} columns"
                  + (f": the {len(before)} of `{prev}`, then these {len(own)}." if before else "."), ""]
        lines += column_rows(own) + [""]
        before, prev = list(table.names), name
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(schema_reference())
