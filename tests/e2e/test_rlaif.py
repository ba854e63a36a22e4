"""RLAIF end to end from its paper preset (tests/labelled_runs.py): the policy's own A/B labels, and a killed
round resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from labelled_runs import PROMPTS, finished, job, preset, resumed_copy, same_rows, stages, table

from dlma_ray.core.schema import GENERATION_SCHEMA, PAIR_SCHEMA


@pytest.fixture(scope="module")
def rlaif_args(tiny_model_dir, tmp_path_factory) -> list[str]:
    return job(tiny_model_dir, tmp_path_factory.mktemp("rlaif") / "run", "rlaif.margin=0",
               configs=preset("rlaif-paper-pku-7b.yaml"))


@pytest.fixture(scope="module")
def rlaif_run(rlaif_args) -> Path:
    return finished(rlaif_args)


def test_rlaif_labels_are_the_policys_own_ab_reading(rlaif_run, tiny_model_dir, tokenizer):
    """Each stored label is the engine's reading of the letters' log-probs, which equals the transformers reading
    of the same prompt (the evaluation's judge) to float precision; the preferred answer is `chosen`."""
    from dlma_ray.evaluation.judges import ab
    from dlma_ray.model.loading import load_causal_lm
    from dlma_ray.workers.labelling import rlaif_prompts

    generations = table(rlaif_run, 0, "generations", GENERATION_SCHEMA)
    assert len(generations) == PROMPTS
    model = load_causal_lm(tiny_model_dir)
    for g in generations[:3]:
        detail = json.loads(g["judge_json"])
        p1, p2 = detail["p_a_first"], detail["p_a_second"]
        assert detail["instruction"] in ab.CAI_PRINCIPLES  # the preset's harmlessness labels
        assert g["label_preference"] == pytest.approx(0.5 + (p1 - p2) / 2, abs=1e-12)
        swapped = g["label_preference"] < 0.5
        y1, y2 = (g["rejected"], g["chosen"]) if swapped else (g["chosen"], g["rejected"])
        chat, instruction = json.loads(g["messages_json"]), [detail["instruction"]]
        prompts = [rlaif_prompts(tokenizer, [chat], [a], [b], instruction, "raw")[0] for a, b in ((y1, y2), (y2, y1))]
        assert prompts[0] == ab.labelling_prompt(chat, y1, y2, detail["instruction"])  # raw style: RLCD's text as is
        assert prompts[0].startswith(ab.RLCD_PREFIX) and prompts[0].endswith("The answer is: (")
        direct = ab.ab_preference(model, tokenizer, prompts)
        assert direct == pytest.approx([p1, p2], abs=2e-4)
    rows = table(rlaif_run, 0, "pairs", PAIR_SCHEMA)
    assert rows and all(math.isfinite(r["ref_logp_chosen"]) and math.isnan(r["self_reward"]) for r in rows)
    summary = stages(rlaif_run)[(0, "generate")]["metrics"]
    assert summary["prompts"] == PROMPTS and summary["labelled"] == PROMPTS and summary["no_pair"] == {}
    assert summary["swapped"] == sum(g["label_preference"] < 0.5 for g in generations)
    assert json.loads((rlaif_run / "round_0/policy/train_metrics.jsonl").read_text().splitlines()[0])["loss"] > 0


def test_rlaif_killed_round_resumed_gives_the_same_pairs(rlaif_run, rlaif_args, tmp_path):
    copy = resumed_copy(rlaif_run, tmp_path, "round_0/generate", rlaif_args)
    columns = ["chosen", "rejected", "chosen_token_ids", "label_preference", "judge_json", "ref_logp_chosen"]
    assert same_rows(table(copy, 0, "pairs", PAIR_SCHEMA), table(rlaif_run, 0, "pairs", PAIR_SCHEMA), columns)
