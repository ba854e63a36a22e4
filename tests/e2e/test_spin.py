"""SPIN end to end from its paper preset (tests/labelled_runs.py): round 1 on both rounds' pairs against the
previous iterate, and a killed round resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from labelled_runs import finished, job, preset, resumed_copy, same_rows, stages, table

from dlma_ray.core.schema import PAIR_SCHEMA


@pytest.fixture(scope="module")
def spin_args(tiny_model_dir, tmp_path_factory, hh_file) -> list[str]:
    return job(tiny_model_dir, tmp_path_factory.mktemp("spin") / "run", "rounds.count=2", "train.epochs=1",
               f"data.source={hh_file}", "data.prompt_field=chosen", configs=preset("spin-paper-ultrachat-7b.yaml"))


@pytest.fixture(scope="module")
def spin_run(spin_args) -> Path:
    return finished(spin_args)


def test_spin_round_1_trains_on_both_rounds_against_the_previous_iterate(spin_run, tokenizer, tiny_model_dir):
    from conftest import direct_logprob, eot_ids
    from dlma_ray.model.loading import load_causal_lm

    done = stages(spin_run)
    assert [key for key in done] == [(0, "generate"), (0, "score"), (0, "train"), (1, "generate"), (1, "score"),
                                     (1, "train")]
    first, second = table(spin_run, 0, "pairs", PAIR_SCHEMA), table(spin_run, 1, "pairs", PAIR_SCHEMA)
    assert {r["round"] for r in first} == {0} and {r["round"] for r in second} == {0, 1}
    assert len(second) == len(first) + len([r for r in second if r["round"] == 1])
    old = {r["prompt_id"]: r for r in first}
    # the SFT target against one sample of the round's policy
    for r in second:
        assert r["chosen_finished"] and r["chosen"] == old[r["prompt_id"]]["chosen"]
        assert r["policy"].endswith("round_0/policy") if r["round"] == 1 else r["policy"] == tiny_model_dir
    # round 1's opponent is pi_1 (round 0's policy): round 0's pairs are re-scored by it
    assert done[(1, "score")]["metrics"]["reference"].endswith("round_0/policy")
    assert done[(1, "score")]["metrics"]["rounds"] == [0, 1]
    opponent = load_causal_lm(str(spin_run / "round_0/policy"))
    for r in [r for r in second if r["round"] == 0][:2]:
        ids = list(r["rejected_token_ids"]) + (eot_ids(tokenizer) if r["rejected_finished"] else [])
        assert r["ref_logp_rejected"] == pytest.approx(direct_logprob(opponent, tokenizer, r["plain_context"], ids),
                                                       abs=2e-3)
        assert r["ref_logp_rejected"] != pytest.approx(old[r["prompt_id"]]["ref_logp_rejected"], abs=1e-3)
    steps = [json.loads(x) for x in (spin_run / "round_1/policy/train_metrics.jsonl").read_text().splitlines()]
    assert steps and all(math.isfinite(s["loss"]) for s in steps)


def test_spin_killed_round_resumed_gives_the_same_pairs(spin_run, spin_args, tmp_path):
    # killed in round 1's score stage: its generations stay, the pairs of both rounds are scored again
    copy = resumed_copy(spin_run, tmp_path, "round_1/score", spin_args)
    assert [k for k in stages(copy)] == [k for k in stages(spin_run)][:-1]
    columns = ["chosen", "rejected_token_ids", "ref_logp_chosen", "ref_logp_rejected"]
    assert same_rows(table(copy, 1, "pairs", PAIR_SCHEMA), table(spin_run, 1, "pairs", PAIR_SCHEMA), columns)
