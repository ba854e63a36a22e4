"""Head to head: win / tie / lose of policy A's answers against policy B's, as the DLMA paper reports it.

Plain functions over verdicts (no model, no Ray). A verdict is one prompt judged in both answer orders:

    {"prompt_id", "a_first": pick, "b_first": pick}

where a pick is the position the judge preferred: "A" (the answer shown first), "B" (shown second), or
"tie" (equal scores, or a reply naming neither). In `a_first` A's answer is shown first, in `b_first` B's.
A **wins** a prompt when the judge prefers A's answer in both orders, **loses** when it prefers B's in both,
and everything else is a **tie**: a split verdict (A in one order, B in the other: position bias), or a
tie in either order. Score judges (reward, cost, distillation) see each answer alone, so both orders
give the same pick by construction.

    order_winner        +1 / -1 / 0: who a pick favours, given the order
    outcome             "win" / "tie" / "lose" of one verdict
    score_verdicts      verdicts from per-answer scores (lower_is_better for a cost model)
    probability_pick    the pick of a judge that gives P(the first answer is better), e.g. the policy's A/B reading
    pick_verdicts       verdicts from an A/B judge's picks in the two orders
    tally               {n, win, tie, lose (each a rate with its 95% interval), split, ...}
    human_agreement     the judge's accuracy on human-labelled pairs (A = chosen, B = rejected)
    table_rows          Markdown rows: pair, judge, answers, n, win, tie, lose
"""

from __future__ import annotations

from dlma_ray.core.stats import rate_summary

PICKS = ("A", "B", "tie")
TABLE_HEADER = ["A vs B", "judge", "answers", "n", "A wins", "tie", "B wins", "judge vs human labels"]
# The distillation score is the contrast the self-rewarding methods train on: a win under it is not independent.
TRAINED_SIGNAL_NOTE = ("The `distillation` judge is the contrastive signal DLMA, RLCD and context distillation are "
                       "trained on, so a trained policy is expected to win under it: it measures whether training "
                       "took, not quality. For a quality claim judge with `openai` or a reward/cost model.")


POLICY_JUDGE_NOTE = ("The `ab` and `five_point` judges, asked of pi_0 (their default), are the labels RLAIF and "
                     "Self-Rewarding trained their first round on: those methods are expected to do well under them.")


def caveats(results: list[dict]) -> list[str]:
    """Lines a reader must see beside the table: which rows are judged by the signal the policies trained on."""
    judges = {r.get("judge") for r in results}
    return ([TRAINED_SIGNAL_NOTE] if "distillation" in judges else []) + (
        [POLICY_JUDGE_NOTE] if judges & {"ab", "five_point"} else [])


def order_winner(pick: str, a_shown_first: bool) -> int:
    """+1 when ``pick`` favours A's answer, -1 when it favours B's, 0 for a tie."""
    if pick not in PICKS:
        raise ValueError(f"a pick is one of {PICKS}, got {pick!r}")
    if pick == "tie":
        return 0
    return 1 if (pick == "A") == a_shown_first else -1


def outcome(verdict: dict) -> str:
    first, second = order_winner(verdict["a_first"], True), order_winner(verdict["b_first"], False)
    if first == second == 1:
        return "win"
    if first == second == -1:
        return "lose"
    return "tie"


def is_split(verdict: dict) -> bool:
    """A in one order, B in the other: the judge followed the position, not the answer."""
    return order_winner(verdict["a_first"], True) * order_winner(verdict["b_first"], False) == -1


def score_pick(first: float, second: float, lower_is_better: bool = False) -> str:
    """The pick of a score judge between the answer shown first and the one shown second; a tie when they are
    equal or either has no score (NaN: e.g. a 5-point judge with too few parsed judgements)."""
    if first == second or first != first or second != second:
        return "tie"
    return "A" if (first < second) == lower_is_better else "B"


def probability_pick(p_first: float) -> str:
    """The pick of a judge that gives P(the answer shown first is better): A above 0.5, B below, a tie at 0.5."""
    return "A" if p_first > 0.5 else "B" if p_first < 0.5 else "tie"


def score_verdicts(prompt_ids, scores_a, scores_b, lower_is_better: bool = False) -> list[dict]:
    """Verdicts from each answer's score (higher better; ``lower_is_better`` for a cost model)."""
    if not len(prompt_ids) == len(scores_a) == len(scores_b):
        raise ValueError(f"{len(prompt_ids)} prompts, {len(scores_a)} scores of A, {len(scores_b)} of B")
    return [{"prompt_id": p, "a_first": score_pick(a, b, lower_is_better), "b_first": score_pick(b, a, lower_is_better),
             "score_a": a, "score_b": b} for p, a, b in zip(prompt_ids, scores_a, scores_b)]


def pick_verdicts(prompt_ids, picks_a_first, picks_b_first) -> list[dict]:
    """Verdicts from an A/B judge asked twice: A's answer first, then B's answer first."""
    if not len(prompt_ids) == len(picks_a_first) == len(picks_b_first):
        raise ValueError(f"{len(prompt_ids)} prompts, {len(picks_a_first)} and {len(picks_b_first)} picks")
    return [{"prompt_id": p, "a_first": x, "b_first": y} for p, x, y in zip(prompt_ids, picks_a_first, picks_b_first)]


def tally(verdicts: list[dict]) -> dict:
    """win / tie / lose of A, each ``rate_summary`` (Wilson 95% interval) over n prompts; split verdicts counted."""
    n = len(verdicts)
    counts = {"win": 0, "tie": 0, "lose": 0}
    for v in verdicts:
        counts[outcome(v)] += 1
    return {"n": n, **{k: rate_summary(c, n) for k, c in counts.items()},
            "split": sum(is_split(v) for v in verdicts),
            "order_ties": sum((v["a_first"] == "tie") + (v["b_first"] == "tie") for v in verdicts),
            "requests": 2 * n}


def human_agreement(verdicts: list[dict]) -> dict:
    """Verdicts of (A = human-chosen answer, B = human-rejected): accuracy = the judge prefers the chosen
    answer in both orders; ties (split or equal) count as not agreeing and are reported apart."""
    t = tally(verdicts)
    return {"n": t["n"], "accuracy": t["win"], "ties": t["tie"]["count"], "reversed": t["lose"]["count"]}


def _cell(summary: dict | None) -> str:
    if not summary or summary.get("rate") is None:
        return "–"
    lo, hi = summary["ci95"]
    return f"{100 * summary['rate']:.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%]"


def table_rows(results: list[dict]) -> list[list[str]]:
    """One row per head-to-head result (``headtohead.json`` documents: a, b, judge, answers, result, human)."""
    rows = []
    for r in results:
        t, human = r["result"], r.get("human") or {}
        agree = (f"{_cell(human.get('accuracy'))} (n={human['n']})" if human.get("n") else "–")
        rows.append([f"`{r['a']}` vs `{r['b']}`", r["judge"], r.get("answers", "–"), str(t["n"]), _cell(t["win"]),
                     _cell(t["tie"]), _cell(t["lose"]), agree])
    return rows
