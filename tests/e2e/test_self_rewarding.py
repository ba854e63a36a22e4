"""Self-Rewarding end to end from its paper preset (tests/labelled_runs.py): best against worst of the policy's
own 5-point scores, and a killed round resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from labelled_runs import PROMPTS, finished, job, preset, resumed_copy, same_rows, stages, table

from dlma_ray.core.schema import GENERATION_SCHEMA, PAIR_SCHEMA


@pytest.fixture(scope="module")
def sr_args(tiny_model_dir, tmp_path_factory) -> list[str]:
    return job(tiny_model_dir, tmp_path_factory.mktemp("sr") / "run", "rounds.count=1",
               configs=preset("self-rewarding-paper-7b.yaml"))


@pytest.fixture(scope="module")
def sr_run(sr_args) -> Path:
    return finished(sr_args)


def test_self_rewarding_pairs_are_best_against_worst_of_the_policys_scores(sr_run):
    state = json.loads((sr_run / "state.json").read_text())
    sr = state["config"]["self_rewarding"]
    assert (sr["temperature"], sr["top_p"], sr["constrained_score"]) == (0.7, 0.9, True)
    generations = table(sr_run, 0, "generations", GENERATION_SCHEMA)
    assert len(generations) == PROMPTS
    for g in generations:
        detail = json.loads(g["judge_json"])
        scores = detail["scores"]
        assert len(scores) == sr["num_samples"] and all(len(s) == sr["num_judgements"] for s in scores)
        # constrained decoding: every judgement parsed, into the rubric's 0..5 points
        assert detail["unparsed"] == 0 and all(x in (0, 1, 2, 3, 4, 5) for s in scores for x in s)
        means = [sum(s) / len(s) for s in scores]
        assert detail["means"] == pytest.approx(means)
        if g["label_drop"] == "tie":
            assert max(means) == min(means) and math.isnan(g["chosen_judge_score"])
        else:
            assert g["label_drop"] == ""
            assert g["chosen_judge_score"] == max(means) > g["rejected_judge_score"] == min(means)
            assert means[detail["best"]] == max(means) and means[detail["worst"]] == min(means)
    rows = table(sr_run, 0, "pairs", PAIR_SCHEMA)
    kept = [g for g in generations if not g["label_drop"]]
    assert len(rows) == len(kept) and all(r["chosen_judge_score"] > r["rejected_judge_score"] for r in rows)
    score = stages(sr_run)[(0, "score")]["metrics"]
    assert score["dropped"] == ({"tie": PROMPTS - len(kept)} if len(kept) < PROMPTS else {})  # counted, not scored
    assert stages(sr_run)[(0, "generate")]["metrics"]["no_pair"] == score["dropped"]


def test_self_rewarding_killed_round_resumed_gives_the_same_pairs(sr_run, sr_args, tmp_path):
    copy = resumed_copy(sr_run, tmp_path, "round_0/generate", sr_args)
    columns = ["chosen", "rejected", "chosen_judge_score", "rejected_judge_score", "judge_json", "ref_logp_rejected"]
    assert same_rows(table(copy, 0, "pairs", PAIR_SCHEMA), table(sr_run, 0, "pairs", PAIR_SCHEMA), columns)
