"""How often each judge agrees with human preference labels (the DLMA paper's Figure 4 analogue, and the reason to
pick a judge): plain lists in, JSON-ready rows out.

A judge's verdict on a human pair is its margin of the human-chosen answer over the rejected one: R for
self_reward, C(y+) - C(y-) for distillation, P(y+ better) - 0.5 for ab (both orders averaged), the mean points'
difference for five_point, the score difference for a reward model (reversed for a cost model). A margin of 0
(a tie, or no verdict: an answer the 5-point judge left unscored) counts wrong, as everywhere else in the
project: a judge that cannot tell two answers apart has not found the better one.
"""

from __future__ import annotations

import math

from dlma_ray.core.stats import rate_summary

TIES_COUNT = "a tie or no verdict counts wrong"


def accuracy_row(judge: str, margins: list[float]) -> dict:
    """{judge, n, count, rate, ci95, ties, no_verdict} of one judge's margins (> 0: it sided with the humans)."""
    none = sum(m is None or math.isnan(m) for m in margins)
    right = sum(m is not None and not math.isnan(m) and m > 0 for m in margins)
    ties = sum(m is not None and not math.isnan(m) and m == 0 for m in margins)
    return {"judge": judge, **rate_summary(right, len(margins)), "ties": ties, "no_verdict": none}


def accuracy_table(margins: dict[str, list[float]]) -> list[dict]:
    return [accuracy_row(name, values) for name, values in margins.items()]


def markdown(rows: list[dict], pairs: str, policy: str) -> str:
    """The table as docs/results.md and the command print it: each judge's accuracy with n and its 95% interval."""
    lines = [f"Judges against the human labels of {pairs} (policy judges: {policy}; {TIES_COUNT})", "",
             "| judge | n | agrees with the human label | 95% interval | ties | no verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, hi = r["ci95"]
        rate = "n/a" if r["rate"] is None else f"{100 * r['rate']:.1f}% ({r['count']}/{r['n']})"
        ci = "n/a" if lo is None else f"[{100 * lo:.1f}, {100 * hi:.1f}]"
        lines.append(f"| `{r['judge']}` | {r['n']} | {rate} | {ci} | {r['ties']} | {r['no_verdict']} |")
    return "\n".join(lines)
