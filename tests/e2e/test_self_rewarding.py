"""Self-Rewarding end to end from its paper preset (tests/labelled_runs.py) with its two optional extensions on
(length control, the meta-judge): the pairs chosen from the policy's own 5-point scores, its judgement pairs, and a
killed round resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from labelled_runs import PROMPTS, finished, job, preset, resumed_copy, same_rows, stages, table

from dlma_ray.core.schema import GENERATION_SCHEMA, PAIR_SCHEMA
from dlma_ray.evaluation.judges.five_point import parse_score

RHO = 0.25  # self_rewarding.length_control


@pytest.fixture(scope="module")
def sr_args(tiny_model_dir, tmp_path_factory) -> list[str]:
    return job(tiny_model_dir, tmp_path_factory.mktemp("sr") / "run", "rounds.count=1",
               "self_rewarding.meta_judge=true", f"self_rewarding.length_control={RHO}",
               configs=preset("self-rewarding-paper-7b.yaml"))


@pytest.fixture(scope="module")
def sr_run(sr_args) -> Path:
    return finished(sr_args)


def test_self_rewarding_pairs_are_the_length_controlled_best_against_worst_of_the_policys_scores(sr_run):
    state = json.loads((sr_run / "state.json").read_text())
    sr = state["config"]["self_rewarding"]
    assert (sr["temperature"], sr["top_p"], sr["constrained_score"]) == (0.7, 0.9, True)
    generations = [g for g in table(sr_run, 0, "generations", GENERATION_SCHEMA) if g["pair_of"] == "answers"]
    assert len(generations) == PROMPTS
    for g in generations:
        detail = json.loads(g["judge_json"])
        scores, lengths = detail["scores"], detail["lengths"]
        assert len(scores) == sr["num_samples"] and all(len(s) == sr["num_judgements"] for s in scores)
        # constrained decoding: every judgement parsed, into the rubric's 0..5 points
        assert detail["unparsed"] == 0 and all(x in (0, 1, 2, 3, 4, 5) for s in scores for x in s)
        means = [sum(s) / len(s) for s in scores]
        assert detail["means"] == pytest.approx(means)
        if g["label_drop"] == "tie":
            assert max(means) == min(means) and math.isnan(g["chosen_judge_score"])
            continue
        # length control: the shortest answer near the best mean against the longest near the worst
        band = RHO * (max(means) - min(means))
        best = min((i for i, x in enumerate(means) if x >= max(means) - band), key=lambda i: (lengths[i], i))
        worst = max((i for i, x in enumerate(means) if x <= min(means) + band), key=lambda i: (lengths[i], -i))
        assert g["label_drop"] == "" and (detail["best"], detail["worst"]) == (best, worst)
        assert g["chosen_judge_score"] == means[best] > g["rejected_judge_score"] == means[worst]
        assert (g["chosen_tokens"], g["rejected_tokens"]) == (lengths[best], lengths[worst])
    rows = [r for r in table(sr_run, 0, "pairs", PAIR_SCHEMA) if r["pair_of"] == "answers"]
    kept = [g for g in generations if not g["label_drop"]]
    assert len(rows) == len(kept) and all(r["chosen_judge_score"] > r["rejected_judge_score"] for r in rows)
    score = stages(sr_run)[(0, "score")]["metrics"]
    assert score["dropped"] == ({"tie": PROMPTS - len(kept)} if len(kept) < PROMPTS else {})  # counted, not scored
    assert stages(sr_run)[(0, "generate")]["metrics"]["no_pair"] == score["dropped"]


def test_self_rewarding_meta_judge_pairs_the_policys_best_judgement_against_its_worst(sr_run):
    generations = table(sr_run, 0, "generations", GENERATION_SCHEMA)
    answers = {g["prompt_id"]: g for g in generations if g["pair_of"] == "answers"}
    judged = [g for g in generations if g["pair_of"] == "judgements"]
    outcomes = {pid: json.loads(g["judge_json"])["meta_judge"] for pid, g in answers.items()}
    metrics = stages(sr_run)[(0, "generate")]["metrics"]
    assert metrics["judgement_pairs"] == len(judged) > 0
    assert len(judged) + sum(metrics["no_judgement_pair"].values()) == PROMPTS
    assert metrics["no_judgement_pair"].get("heldout", 0) == sum(g["split"] == "heldout" for g in answers.values())
    for j in judged:
        parent = answers[j["prompt_id"].removesuffix(":judge")]
        assert outcomes[parent["prompt_id"]] == "pair" and parent["split"] == j["split"] == "train"
        record = json.loads(j["judge_json"])["meta_judge"]
        points = json.loads(parent["judge_json"])["scores"][record["answer"]]
        assert record["points"] == points
        b, w = record["best"], record["worst"]
        # the meta-judge preferred the chosen judgement; the two score the answer differently
        assert record["wins"][b] > record["wins"][w] and points[b] != points[w]
        assert (parse_score(j["chosen"]), parse_score(j["rejected"])) == (points[b], points[w])
        for a, c, p_first, p_second in record["contests"]:  # both orders read, each a probability
            assert 0 <= p_first <= 1 and 0 <= p_second <= 1 and a != c
        # the judge's question is the pair's prompt, and the context it was judged in all three contexts
        assert "additive 5-point scoring system" in j["prompt"] and j["prompt"] in j["plain_context"]
        assert j["pos_context"] == j["neg_context"] == j["plain_context"]
        assert j["chosen_finished"] and j["chosen_tokens"] == len(j["chosen_token_ids"]) > 0
    trained = [r for r in table(sr_run, 0, "pairs", PAIR_SCHEMA) if r["pair_of"] == "judgements"]
    assert sorted(r["prompt_id"] for r in trained) == sorted(j["prompt_id"] for j in judged)
    assert all(math.isfinite(r["ref_logp_chosen"]) and math.isfinite(r["ref_logp_rejected"]) for r in trained)


def test_self_rewarding_killed_round_resumed_gives_the_same_pairs(sr_run, sr_args, tmp_path):
    copy = resumed_copy(sr_run, tmp_path, "round_0/generate", sr_args)
    columns = ["chosen", "rejected", "chosen_judge_score", "rejected_judge_score", "judge_json", "ref_logp_rejected"]
    assert same_rows(table(copy, 0, "pairs", PAIR_SCHEMA), table(sr_run, 0, "pairs", PAIR_SCHEMA), columns)
