"""Each judge's agreement with human labels (dlma_ray.evaluation.judge_accuracy): margins by hand, ties and no
verdict count wrong, the Wilson interval, the printed table."""

from __future__ import annotations

import math

import pytest

from dlma_ray.core.stats import wilson_interval
from dlma_ray.evaluation.judge_accuracy import accuracy_row, accuracy_table, markdown


def test_margins_to_agreement_by_hand():
    row = accuracy_row("ab", [0.2, -0.1, 0.0, 0.3, math.nan, 1e-9])
    assert (row["n"], row["count"], row["ties"], row["no_verdict"]) == (6, 3, 1, 1)
    assert row["rate"] == pytest.approx(0.5) and row["ci95"] == list(wilson_interval(3, 6))


def test_table_and_markdown():
    rows = accuracy_table({"self_reward": [1.0, 2.0], "five_point": [0.0, -1.0]})
    assert [r["judge"] for r in rows] == ["self_reward", "five_point"]
    text = markdown(rows, "pairs.jsonl", "pi_0")
    assert "| `self_reward` | 2 | 100.0% (2/2) |" in text and "| `five_point` | 2 | 0.0% (0/2) |" in text
    assert "a tie or no verdict counts wrong" in text
    assert "n/a" in markdown(accuracy_table({"ab": []}), "p", "m")
