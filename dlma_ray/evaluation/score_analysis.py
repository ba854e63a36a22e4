"""The paper's score analysis on generated pairs (its Figure 3): R and the RLAIF text judge against an external judge.

    judge_labels        the external judge's verdict per pair: +1 (y+ better), -1 (y- better), 0 (no preference)
    agreement_by_range  per |R| bin [low, high): pairs, how many a judge (R itself, or the RLAIF text judge)
                        got right against the external judge, with 95% Wilson intervals
    score_analysis      eval.json's measures and details for one round's judged generated pairs

A pair the external judge cannot tell apart (equal reward-model scores, a split verdict of an endpoint asked in
both orders) carries no label: it is left out of every accuracy here and counted under ``judge_ties``. R = 0
and an RLAIF preference of exactly 0.5 count wrong, as on human pairs (a score that cannot tell two answers
apart has not found the better one). Plain lists in, JSON-ready dicts out: no model, no Ray.
"""

from __future__ import annotations

import math

from dlma_ray.core.stats import rate_summary
from dlma_ray.evaluation.measures import R_BIN_EDGES


def judge_labels(margins) -> list[int]:
    """+1 / -1 / 0 from an external judge's margin of y+ over y- (a score difference or a vote count)."""
    return [0 if m is None or math.isnan(m) or m == 0 else (1 if m > 0 else -1) for m in margins]


def agreement_by_range(rewards, correct, edges=R_BIN_EDGES) -> dict:
    """Share of right verdicts ``correct`` (bools), overall and per |R| bin [low, high) with 95% Wilson intervals.

    The bins are the human-pair table's (measures.R_BIN_EDGES, last one open: ``high`` None); for R's own
    verdicts this is measures.accuracy_by_range of +|R| (right) / -|R| (wrong). The verdict is handed in rather
    than read from a sign so that the RLAIF judge's verdicts fall into the bins of the same pairs' |R|.
    """
    pairs = [(abs(float(r)), bool(ok)) for r, ok in zip(rewards, correct)]
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = [ok for a, ok in pairs if lo <= a and (a < hi or math.isinf(hi))]
        bins.append({"low": lo, "high": None if math.isinf(hi) else hi, **rate_summary(sum(inside), len(inside))})
    return {**rate_summary(sum(ok for _, ok in pairs), len(pairs)), "bins": bins}


def score_analysis(rewards, judge_margins, rlaif_preferences=None) -> tuple[dict, dict]:
    """(measures, details) of R (and the RLAIF text judge) against an external judge on the same generated pairs.

    ``rewards``: R of each pair as the score stage stored it; ``judge_margins``: the external judge's margin of
    y+ over y- (> 0: y+ better); ``rlaif_preferences``: the text judge's preference for y+ (both orders
    averaged; > 0.5: y+ better), or None when it did not run.

    measures: ``self_reward_vs_judge`` (sign(R) agrees with the judge) and ``rlaif_vs_judge`` (the text judge
    agrees with it), each with n, count, rate and ci95; details: the per-|R|-bin tables of both
    (``self_reward_vs_judge_bins``, ``rlaif_vs_judge_bins``) and ``generated_pairs_judged``: the pairs asked, the
    judge's ties, and how often the judge preferred y+ (the construction's own label).
    """
    labels = judge_labels(judge_margins)
    finite = [r is not None and math.isfinite(r) for r in rewards]  # an RLCD run stores no R
    keep = [i for i, lab in enumerate(labels) if lab != 0 and finite[i]]
    r = [float(rewards[i]) for i in keep]
    r_ok = [(x > 0) == (labels[i] > 0) and x != 0 for x, i in zip(r, keep)]
    by_r = agreement_by_range(r, r_ok)
    measures = {"self_reward_vs_judge": {k: v for k, v in by_r.items() if k != "bins"}}
    details = {"self_reward_vs_judge_bins": by_r["bins"],
               "generated_pairs_judged": {
                   "pairs": len(labels), "judge_ties": sum(lab == 0 for lab in labels),
                   "no_reward": sum(not f for f in finite), "judged": len(keep),
                   # how often the judge sides with the construction (y+ sampled under the positive prompt)
                   "judge_prefers_chosen": rate_summary(sum(labels[i] > 0 for i in keep), len(keep))}}
    if rlaif_preferences is not None:
        p = [rlaif_preferences[i] for i in keep]
        p_ok = [(x > 0.5) == (labels[i] > 0) and x != 0.5 for x, i in zip(p, keep)]
        by_p = agreement_by_range(r, p_ok)
        measures["rlaif_vs_judge"] = {k: v for k, v in by_p.items() if k != "bins"}
        details["rlaif_vs_judge_bins"] = by_p["bins"]
    return measures, details
