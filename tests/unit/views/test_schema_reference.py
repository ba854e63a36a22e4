"""docs/reference/schema.md is dlma_ray.views.schema_reference's output: a changed column, type or doc in
dlma_ray/core/schema.py fails here until the page is regenerated (`make references`)."""

from __future__ import annotations

from pathlib import Path

from dlma_ray.core.schema import PAIR_SCHEMA, PROMPT_SCHEMA
from dlma_ray.views.schema_reference import schema_reference

DOC = Path(__file__).resolve().parents[3] / "docs" / "reference" / "schema.md"


def test_schema_reference_doc_is_current():
    assert DOC.read_text() == schema_reference(), "stale: regenerate with `make references`"


def test_schema_reference_documents_every_column_once():
    text = schema_reference()
    for f in PAIR_SCHEMA:  # every column of every table: pairs holds them all
        row = f"| `{f.name}` | `{f.type}` | "
        assert text.count(row) == 1, f.name
        assert f.metadata[b"doc"].decode().replace("|", "\\|") in text, f.name
    assert "## `prompts`" in text and f"{len(PROMPT_SCHEMA)} columns." in text
    assert f"{len(PAIR_SCHEMA)} columns: the 25 of `generations`" in text
