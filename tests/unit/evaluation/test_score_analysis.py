"""The paper's score analysis on generated pairs (its Figure 3): R and the RLAIF text judge against an external
judge by |R| range, on a hand-computed table with judge ties, R = 0, a text tie of 0.5 and empty bins; the
verdicts kept for a resumed evaluation; the stage's wording when no external judge is configured.

Fast: plain lists, no model. The report's section is tested in tests/unit/views/test_report.py, the stage end to end
in tests/e2e/test_evaluate_stage.py.
"""

from __future__ import annotations

import pytest

from dlma_ray.config.tree import load_config
from dlma_ray.core.stats import wilson_interval
from dlma_ray.evaluation.measures import accuracy_by_range
from dlma_ray.evaluation.score_analysis import agreement_by_range, judge_labels, score_analysis

# pair:          0     1     2    3    4     5    6     7     8    9    10
REWARDS = [0.5, -0.3, 0.0, 1.5, 3.0, -4.0, 7.0, 12.0, 50.0, 2.5, 0.8]
MARGINS = [1.0, -2.0, 1.0, 0.0, 0.7, 0.5, -1.0, 2.0, 3.0, 0.0, -0.2]  # 3 and 9: the judge ties
RLAIF = [0.7, 0.6, 0.5, 0.9, 0.4, 0.8, 0.2, 0.5, 0.9, 0.6, 0.3]      # 2 and 7: the text judge ties


def test_r_and_rlaif_against_the_judge_by_hand():
    m, d = score_analysis(REWARDS, MARGINS, RLAIF)
    info = d["generated_pairs_judged"]
    assert (info["pairs"], info["judge_ties"], info["judged"], info["no_reward"]) == (11, 2, 9, 0)
    assert (info["judge_prefers_chosen"]["count"], info["judge_prefers_chosen"]["n"]) == (6, 9)
    # R right: 0 (+,+), 1 (-,-), 4, 7, 8; wrong: 2 (R = 0), 5, 6, 10.
    # bins [0,1): 0 1 2 10 -> 2/4; [1,2): none (3 was a judge tie); [2,5): 4 5 -> 1/2; [5,10): 6 -> 0/1;
    # [10,20): 7 -> 1/1; [20,40): none; >=40: 8 -> 1/1.
    r_bins = d["self_reward_vs_judge_bins"]
    assert [(b["count"], b["n"]) for b in r_bins] == [(2, 4), (0, 0), (1, 2), (0, 1), (1, 1), (0, 0), (1, 1)]
    assert (m["self_reward_vs_judge"]["count"], m["self_reward_vs_judge"]["n"]) == (5, 9)
    # RLAIF right: 0, 5, 6, 8, 10; wrong: 1, 2 (0.5), 4, 7 (0.5). Binned by the same pairs' |R|.
    p_bins = d["rlaif_vs_judge_bins"]
    assert [(b["count"], b["n"]) for b in p_bins] == [(2, 4), (0, 0), (1, 2), (1, 1), (0, 1), (0, 0), (1, 1)]
    assert (m["rlaif_vs_judge"]["count"], m["rlaif_vs_judge"]["n"]) == (5, 9)
    # Intervals: Wilson per bin; an empty bin has no rate and no interval (not 0).
    assert r_bins[0]["rate"] == 0.5 and r_bins[0]["ci95"] == list(wilson_interval(2, 4))
    assert r_bins[1]["rate"] is None and r_bins[1]["ci95"] == [None, None]
    assert m["self_reward_vs_judge"]["ci95"] == list(wilson_interval(5, 9))
    assert [(b["low"], b["high"]) for b in r_bins][-1] == (40.0, None)


def test_r_bins_are_the_human_pair_tables():
    """For R's own verdicts the table is accuracy_by_range of +|R| (right) / -|R| (wrong): the same bins and
    counts as the human-pair table, so the two can be set side by side."""
    _, d = score_analysis(REWARDS, MARGINS)
    keep = [i for i, j in enumerate(MARGINS) if j != 0]
    signed = [abs(REWARDS[i]) if REWARDS[i] != 0 and (REWARDS[i] > 0) == (MARGINS[i] > 0) else -abs(REWARDS[i])
              for i in keep]
    ref = accuracy_by_range(signed)["bins"]
    assert [(b["count"], b["n"]) for b in d["self_reward_vs_judge_bins"]] == [(b["correct"], b["n"]) for b in ref]
    assert "rlaif_vs_judge_bins" not in d  # no text judge ran: no RLAIF numbers, not zeros


def test_judge_labels_and_missing_values():
    assert judge_labels([2, -1, 0, 0.0, None, float("nan"), 1e-9]) == [1, -1, 0, 0, 0, 0, 1]
    m, d = score_analysis([float("nan"), None, 1.0], [1.0, 1.0, -1.0])  # an RLCD run stores no R
    assert d["generated_pairs_judged"]["no_reward"] == 2 and m["self_reward_vs_judge"]["n"] == 1
    assert m["self_reward_vs_judge"]["count"] == 0
    m, d = score_analysis([1.0, 2.0], [0, 0], [0.9, 0.9])  # the judge ties on everything: nothing to score
    assert m["self_reward_vs_judge"]["rate"] is None and m["rlaif_vs_judge"]["n"] == 0
    out = agreement_by_range([0.0, 0.0], [True, False])  # a right verdict on R = 0 is kept right
    assert (out["bins"][0]["count"], out["bins"][0]["n"]) == (1, 2)
    assert agreement_by_range([float("inf")], [True])["bins"][-1]["n"] == 1  # the last bin is open


def test_no_external_judge_says_so():
    from dlma_ray.stages.judged_pairs import judged_measures

    m, d = judged_measures(load_config(None, []), [], None, "m")
    assert m == {} and d["generated_pairs_judged"]["judge"] is None
    assert "no external judge" in d["generated_pairs_judged"]["note"]
    cfg = load_config(None, ["eval.judge=reward_model", "eval.judge_model=/rm"])
    pairs = [{"prompt_id": "a", "chosen": "x", "rejected": "y", "self_reward": 2.0, "split": "heldout"}]
    m, d = judged_measures(cfg, pairs, {"judge_margins": [0.5], "rlaif_preferences": [0.2]}, "pi0")
    info = d["generated_pairs_judged"]
    assert info["judge"] == "reward model /rm" and info["text_judge"] == "pi0" and info["heldout"] == 1
    assert m["self_reward_vs_judge"]["rate"] == 1.0 and m["rlaif_vs_judge"]["rate"] == 0.0


def test_verdicts_are_kept_for_a_resumed_evaluation(tmp_path):
    """A killed evaluation's verdicts are used again only for the same judges and pairs (an endpoint asked
    twice need not answer the same); a torn file is asked again."""
    from dlma_ray.stages.judged_pairs import judged_key, read_judged, write_judged

    cfg = load_config(None, ["eval.judge=openai", "eval.judge_url=http://x/v1", "eval.judge_model=j",
                             "eval.rlaif_judge=true"])
    pairs = [{"prompt_id": "a", "chosen": "x", "rejected": "y", "self_reward": 2.0}]
    path, key = str(tmp_path / "judged_pairs.json"), judged_key(cfg, pairs, "pi0")
    assert read_judged(path, key) is None
    write_judged(path, key, pairs, [2], [0.7])
    assert read_judged(path, key)["judge_margins"] == [2] and read_judged(path, key)["rlaif_preferences"] == [0.7]
    other = [{**pairs[0], "self_reward": 2.5}]
    assert read_judged(path, judged_key(cfg, other, "pi0")) is None
    assert read_judged(path, judged_key(load_config(None, ["eval.judge=openai", "eval.judge_url=http://y/v1",
                                                           "eval.judge_model=j", "eval.rlaif_judge=true"]),
                                        pairs, "pi0")) is None
    assert read_judged(path, judged_key(cfg, pairs, "other-model")) is None
    (tmp_path / "judged_pairs.json").write_text('{"key": "')
    assert read_judged(path, key) is None


def test_judged_pairs_are_held_out_first(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlma_ray.stages.judged_pairs import read_judged_pairs

    rows = [{"prompt_id": f"p{i}", "split": "heldout" if i in (3, 5) else "train", "messages_json": json.dumps([]),
             "chosen": "a", "rejected": "b", "self_reward": float("nan") if i == 1 else float(i)} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-0.parquet")
    got = read_judged_pairs(str(tmp_path), 4)
    assert [r["prompt_id"] for r in got] == ["p3", "p5", "p0", "p2"] and got[0]["messages"] == []
    assert read_judged_pairs(str(tmp_path), 0) == [] and pytest.approx(got[1]["self_reward"]) == 5.0
