"""Meta-Rewarding's meta-judge (dlma_ray.evaluation.judges.meta_judge): which answer's judgements are compared,
the round robin, wins from both orders (a swapped reading gives the complement), and the judgement pair with its
drops; the ranking by wins against a Bradley-Terry fit computed the slow way."""

from __future__ import annotations

import itertools
import math

import pytest

from dlma_ray.evaluation.judges import five_point
from dlma_ray.evaluation.judges import meta_judge as mj


def test_the_disputed_answer_is_the_one_whose_judgements_vary_most():
    assert mj.disputed_answer([[3.0, 3.0, 3.0], [1.0, 5.0, None], [2.0, 4.0, 3.0]]) == 1
    assert mj.disputed_answer([[2.0, 4.0], [1.0, 5.0]]) == 1  # variance 4 against 1
    assert mj.disputed_answer([[2.0, 4.0], [4.0, 2.0]]) == 0  # a tie: the first answer
    assert mj.disputed_answer([[3.0, 3.0], [None, 1.0], [None, None]]) is None  # nothing to dispute


def test_contests_are_every_two_parsed_distinct_judgements():
    texts = ["good. Score: 4", "bad. Score: 1", "good. Score: 4", "??", "fine. Score: 3"]
    points = [4.0, 1.0, 4.0, None, 3.0]
    # judgement 2 repeats judgement 0 word for word, judgement 3 never parsed: both left out
    assert mj.contests(points, texts) == [(0, 1), (0, 4), (1, 4)]
    assert mj.contests([4.0, None], ["a", "b"]) == []


def test_wins_average_both_orders_and_a_swapped_reading_gives_the_complement():
    pairs = [(0, 1), (0, 2), (1, 2)]
    # P(A) with the first of the pair shown as A, then with the second shown as A
    wins = mj.judgement_wins(3, pairs, [0.9, 0.6, 0.5], [0.3, 0.6, 0.5])
    # 0 beats 1 with (0.9 + 0.7) / 2 = 0.8; 0 beats 2 with (0.6 + 0.4) / 2 = 0.5; 1 beats 2 with 0.5
    assert wins == pytest.approx([0.8 + 0.5, 0.2 + 0.5, 0.5 + 0.5])
    swapped = mj.judgement_wins(3, [(b, a) for a, b in pairs], [0.3, 0.6, 0.5], [0.9, 0.6, 0.5])
    assert swapped == pytest.approx(wins)
    # a judge that always says A (pure position bias) rates every judgement alike
    assert mj.judgement_wins(3, pairs, [1.0] * 3, [1.0] * 3) == [1.0, 1.0, 1.0]
    assert math.isnan(mj.judgement_wins(3, [(0, 1)], [0.7], [0.2])[2])  # judgement 2 was never compared


def test_the_judgement_pair_and_why_there_is_none():
    assert mj.judgement_pair([4.0, 1.0, 3.0], [1.3, 0.7, 1.0]) == (0, 1)
    assert mj.judgement_pair([4.0, 1.0, 3.0], [1.0, 1.0, 1.0]) == "wins_tie"
    assert mj.judgement_pair([4.0, 3.0, 4.0], [1.3, 0.7, 1.0]) == (0, 1)  # judgement 2 agrees with 0: no matter
    assert mj.judgement_pair([4.0, 4.0, 1.0], [1.3, 0.7, 1.0]) == "same_points"  # best and worst both say 4
    assert mj.judgement_pair([4.0, 1.0, None], [0.9, 0.1, math.nan]) == (0, 1)
    assert mj.judgement_pair([4.0, 1.0], [math.nan, math.nan]) == "wins_tie"


def bradley_terry(n, p_beats):
    """Bradley-Terry strengths by maximum likelihood on soft outcomes, the slow way (MM iterations, Hunter 2004)."""
    s = [1.0] * n
    for _ in range(2000):
        s = [sum(p_beats[i][j] for j in range(n) if j != i)
             / sum(1.0 / (s[i] + s[j]) for j in range(n) if j != i) for i in range(n)]
        s = [x / sum(s) for x in s]
    return s


def test_ranking_by_wins_is_the_bradley_terry_ranking_of_a_round_robin():
    for readings in ([0.9, 0.2, 0.7, 0.4, 0.6, 0.35], [0.55, 0.3, 0.8, 0.65, 0.1, 0.45]):
        pairs = list(itertools.combinations(range(4), 2))
        first, second = readings, [1 - r + 0.05 for r in readings]
        wins = mj.judgement_wins(4, pairs, first, second)
        p = [[0.5] * 4 for _ in range(4)]
        for (i, j), a, b in zip(pairs, first, second):
            p[i][j] = 0.5 + (a - b) / 2
            p[j][i] = 1 - p[i][j]
        strengths = bradley_terry(4, p)
        assert sorted(range(4), key=lambda i: wins[i]) == sorted(range(4), key=lambda i: strengths[i])


def test_meta_question_holds_the_rubric_the_answer_and_both_judgements():
    q = mj.meta_question(" Why? ", " Because. ", " Fine. Score: 3 ", "Poor. Score: 1")
    assert mj.RUBRIC in five_point.FIVE_POINT_TEMPLATE and mj.RUBRIC in q and "Bestow a fifth point" in q
    assert "User: Why?\n<response>Because.</response>" in q
    assert "<judgment A>Fine. Score: 3</judgment A>\n<judgment B>Poor. Score: 1</judgment B>" in q
    assert q.endswith('"Winner: Judgement B".') and mj.WINNER_CUE == "Winner: Judgement"
