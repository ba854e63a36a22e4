"""Self-Rewarding's LLM-as-a-Judge (Yuan et al. 2024, arXiv 2401.10020, its Figure 2): the policy scores an answer
with an additive 5-point rubric, writes a short justification and ends with `Score: <points>`.

    judge_question   the rubric with the user's question and the answer, as one user turn (question_of: a chat's)
    parse_score      the points of a judgement (the last `Score: d`, d in 0..5), None when it has none
    mean_scores      each sample's mean over its valid judgements; a sample with too few is left out (NaN)
    best_vs_worst    the pair of a prompt: its highest mean against its lowest (with length control: the shortest
                     of the high band against the longest of the low band); None when they tie

A 135M model rarely ends a free-form judgement with a parseable score, so the engine may decode the score
constrained (`self_rewarding.constrained_score`, on by default): the justification is generated up to
"Score:", then the points are sampled from the six digit tokens alone (dlma_ray.workers.labelling). Such a
judgement always parses; off, a judgement that does not parse is dropped and counted, as public
implementations do.
"""

from __future__ import annotations

import math
import re

from dlma_ray.core.prompts import dialogue_text
from dlma_ray.evaluation.judges.judge import Judge, register

FIVE_POINT_TEMPLATE = (
    "Review the user's question and the corresponding response using the additive 5-point scoring system "
    "described below. Points are accumulated based on the satisfaction of each criterion:\n"
    "- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even "
    "if it is incomplete or contains some irrelevant content.\n"
    "- Add another point if the response addresses a substantial portion of the user's question, but does not "
    "completely resolve the query or provide a direct answer.\n"
    "- Award a third point if the response answers the basic elements of the user's question in a useful way, "
    "regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found "
    "in blogs or search results.\n"
    "- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the "
    "user's question directly and comprehensively, and is well-organized and helpful, even if there is slight "
    "room for improvement in clarity, conciseness or focus.\n"
    "- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, "
    "without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and "
    "insightful answer.\n\n"
    "User: {question}\n<response>{response}</response>\n\n"
    "After examining the user's instruction and the response:\n"
    "- Briefly justify your total score, up to 100 words.\n"
    "- Conclude with the score using the format: \"Score: <total points>\"\n\n"
    "Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To "
    "evaluate the response in alignment with this additive scoring model, we'll systematically attribute points "
    "based on the outlined criteria.")
SCORE_CUE = "Score:"
SCORE_PATTERN = re.compile(r"Score:\s*\**\s*([0-5])(?![0-9.])")
POINTS = tuple(str(d) for d in range(6))


def judge_question(question: str, response: str) -> str:
    return FIVE_POINT_TEMPLATE.format(question=question.strip(), response=response.strip())


def question_of(messages) -> str:
    """What the rubric calls the user's question: the one user message, or the whole dialogue when it has turns."""
    return dialogue_text(messages) if len(messages) > 1 else messages[-1]["content"]


def parse_score(text: str) -> float | None:
    """The points of one judgement: the LAST `Score: d` (a judgement may quote the format before using it); None
    when no such line holds a whole number from 0 to 5."""
    found = SCORE_PATTERN.findall(text or "")
    return float(found[-1]) if found else None


def mean_scores(judgements: list[list[float | None]], min_valid: int) -> list[float]:
    """Per sample, the mean of its parsed judgements, or NaN when fewer than ``min_valid`` parsed."""
    out = []
    for scores in judgements:
        valid = [s for s in scores if s is not None]
        out.append(sum(valid) / len(valid) if len(valid) >= max(1, min_valid) else math.nan)
    return out


def best_vs_worst(means: list[float], lengths: list[int] | None = None,
                  length_control: float = 0.0) -> tuple[int, int] | None:
    """(index of the chosen sample, index of the rejected) among the samples with a mean; None when fewer than two
    samples have a mean or the highest equals the lowest.

    ``length_control`` rho = 0: the highest mean against the lowest, the first sample winning a tie for either end
    (the paper). rho > 0 (NeMo-Aligner's `length_control`, against the judge's taste for long answers): the chosen
    is the SHORTEST of the samples whose mean lies within rho x (max - min) of the max, the rejected the LONGEST of
    those within rho x (max - min) of the min (``lengths``: each sample's tokens; the earlier sample wins a tie).
    rho < 0.5 keeps the two bands apart, so the chosen always scores above the rejected."""
    valid = [i for i, m in enumerate(means) if not math.isnan(m)]
    if len(valid) < 2:
        return None
    high, low = max(means[i] for i in valid), min(means[i] for i in valid)
    if high == low:
        return None
    if length_control <= 0:
        return (max(valid, key=lambda i: (means[i], -i)), min(valid, key=lambda i: (means[i], i)))
    if lengths is None or not 0 < length_control < 0.5:
        raise ValueError(f"length_control={length_control} needs each sample's length and 0 <= rho < 0.5")
    band = length_control * (high - low)
    chosen = min((i for i in valid if means[i] >= high - band), key=lambda i: (lengths[i], i))
    rejected = max((i for i in valid if means[i] <= low + band), key=lambda i: (lengths[i], -i))
    return chosen, rejected


@register
class FivePoint(Judge):
    name = "five_point"
    summary = "Self-Rewarding's additive 5-point LLM-as-a-Judge: the policy scores each answer in text"
    verdict = "score"
    runs_on = "policy"
    order = 30
    head_to_head = True  # `--judge-model` (default the run's pi_0) reads both answers on a vLLM engine
