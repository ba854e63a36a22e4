"""The labelling judge's columns: a table written without them (a method with no judge, a run from before they
existed) reads with their defaults; any other missing column is still an error naming it."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from dlma_ray.core.schema import GENERATION_SCHEMA, LABEL_DEFAULTS, conform


def generation_row(**extra) -> dict:
    row = {f.name: None for f in GENERATION_SCHEMA if f.name not in LABEL_DEFAULTS}
    row.update(prompt_id="p", messages_json="[]", prompt="q", kind="", split="train", round=0, policy="m",
               pos_context="+", neg_context="-", plain_context="", end_of_turn="<e>", chosen="a", rejected="b",
               chosen_tokens=1, rejected_tokens=1, chosen_finished=True, rejected_finished=False,
               chosen_token_ids=[1], rejected_token_ids=[2], **extra)
    return row


def test_label_columns_default_when_absent():
    out = conform(pa.Table.from_pylist([generation_row()]), GENERATION_SCHEMA).to_pylist()[0]
    assert math.isnan(out["label_preference"]) and math.isnan(out["chosen_judge_score"])
    assert out["label_drop"] == "" and out["judge_json"] == ""
    assert conform(pa.Table.from_pylist([generation_row(label_drop="tie", label_preference=0.25)]),
                   GENERATION_SCHEMA).to_pylist()[0]["label_drop"] == "tie"


def test_other_missing_columns_are_named():
    row = generation_row()
    del row["chosen_token_ids"]
    with pytest.raises(ValueError, match="chosen_token_ids"):
        conform(pa.Table.from_pylist([row]), GENERATION_SCHEMA)
