"""Meta-Rewarding's meta-judge (Wu et al. 2024, arXiv 2407.19594), on Self-Rewarding's judge: the policy compares two
of its own 5-point judgements of one answer and says which applies the rubric better ("Winner: Judgement A" or
"... B"); its best judgement against its worst becomes a training pair, so the policy learns to judge as well as to
answer (`self_rewarding.meta_judge`).

    disputed_answer   the answer whose parsed judgements disagree most (the largest variance of their points)
    meta_question     the rubric, the question, the answer and two judgements, asking which is more accurate
    contests          the judgement pairs to compare: every two parsed judgements with different texts
    judgement_wins    each judgement's expected wins over the others, from both orders' readings of each pair
    judgement_pair    (best judgement, worst judgement) by wins, or why there is none

The verdict is read as RLAIF's label is: the next-token probabilities of the letters after "Winner: Judgement"
(dlma_ray.evaluation.judges.ab.ab_probability), never from generated text, in both orders averaged. With every two
judgements compared once in each order (a complete round robin), ordering the judgements by their total wins
orders them as the Elo / Bradley-Terry fit the paper uses would: wins are that fit's sufficient statistic.
"""

from __future__ import annotations

import math

from dlma_ray.evaluation.judges.five_point import FIVE_POINT_TEMPLATE

WINNER_CUE = "Winner: Judgement"
# The 5-point rubric's criteria, as the judgements were asked for them (the lines between the template's first
# sentence and its question).
RUBRIC = FIVE_POINT_TEMPLATE[FIVE_POINT_TEMPLATE.index("- Add 1 point"):FIVE_POINT_TEMPLATE.index("\n\nUser:")]
META_TEMPLATE = (
    "Review the user's question and the corresponding response, along with two judgments. Determine which judgment "
    "is more accurate according to the rubric the judgments were asked to apply:\n"
    f"{RUBRIC}\n\n"
    "User: {question}\n<response>{response}</response>\n"
    "<judgment A>{judgement_a}</judgment A>\n<judgment B>{judgement_b}</judgment B>\n\n"
    "After examining the question, the response and both judgments, say which judgment follows the rubric more "
    "faithfully and scores the response more accurately. Conclude with \"Winner: Judgement A\" or "
    "\"Winner: Judgement B\".")


def meta_question(question: str, response: str, judgement_a: str, judgement_b: str) -> str:
    return META_TEMPLATE.format(question=question.strip(), response=response.strip(),
                                judgement_a=judgement_a.strip(), judgement_b=judgement_b.strip())


def disputed_answer(points: list[list[float | None]]) -> int | None:
    """Index of the answer whose parsed judgements' points vary most (population variance; the first answer wins a
    tie); None when no answer has two parsed judgements that differ: then nothing is worth a meta-judgement."""
    best, best_var = None, 0.0
    for i, row in enumerate(points):
        valid = [p for p in row if p is not None]
        if len(valid) < 2:
            continue
        mean = sum(valid) / len(valid)
        var = sum((p - mean) ** 2 for p in valid) / len(valid)
        if var > best_var:
            best, best_var = i, var
    return best


def contests(points: list[float | None], texts: list[str]) -> list[tuple[int, int]]:
    """(i, j), i < j, for every two parsed judgements of an answer with different texts (an exact repeat keeps its
    first copy only): the round robin the meta-judge reads, each pair in both orders."""
    kept: list[int] = []
    for i, (p, t) in enumerate(zip(points, texts)):
        if p is not None and all(texts[k] != t for k in kept):
            kept.append(i)
    return [(a, b) for n, a in enumerate(kept) for b in kept[n + 1:]]


def judgement_wins(n: int, pairs: list[tuple[int, int]], p_first: list[float],
                   p_second: list[float]) -> list[float]:
    """Each of ``n`` judgements' expected wins: for a pair (i, j), ``p_first`` is P(A) with i shown as A and
    ``p_second`` P(A) with j shown as A; i beats j with probability (p_first + 1 - p_second) / 2 (both orders
    averaged against position bias) and j beats i with the rest. NaN for a judgement in no pair."""
    wins = [math.nan] * n
    for (i, j), pa, pb in zip(pairs, p_first, p_second):
        p = 0.5 + (pa - pb) / 2  # equal readings give exactly 0.5
        wins[i] = (0.0 if math.isnan(wins[i]) else wins[i]) + p
        wins[j] = (0.0 if math.isnan(wins[j]) else wins[j]) + 1 - p
    return wins


def judgement_pair(points: list[float | None], wins: list[float]) -> tuple[int, int] | str:
    """(best, worst) judgement by wins among those compared (the earlier judgement wins a tie for either end), or why
    none: `wins_tie` (the meta-judge rated them alike) or `same_points` (the two give the same score, so the pair
    would teach nothing about scoring: NeMo-Aligner drops these too)."""
    compared = [i for i, w in enumerate(wins) if not math.isnan(w)]
    if len(compared) < 2:
        return "wins_tie"
    best = max(compared, key=lambda i: (wins[i], -i))
    worst = min(compared, key=lambda i: (wins[i], i))
    if wins[best] == wins[worst]:
        return "wins_tie"
    if points[best] == points[worst]:
        return "same_points"
    return best, worst
