"""Self-Rewarding's 5-point judge (dlma_ray.evaluation.judges.five_point): the parser on real and malformed
judgements, the means with too few valid judgements, best against worst with ties."""

from __future__ import annotations

import math

import pytest

from dlma_ray.evaluation.judges import five_point as fp

REAL = ("The response is relevant and addresses the question directly, but it lacks detail about the steps. "
        "It is organized and clearly from an assistant.\n\nScore: 4")


def test_parses_real_judgements():
    assert fp.parse_score(REAL) == 4.0
    assert fp.parse_score("Justification... Score: 0") == 0.0
    assert fp.parse_score("Score: **3**") == 3.0
    assert fp.parse_score("Score:5") == 5.0
    assert fp.parse_score("Score: 4/5") == 4.0
    # the format is quoted first, then used: the last score counts
    assert fp.parse_score('Conclude with "Score: <total points>". I give 2 points. Score: 2') == 2.0
    assert fp.parse_score("Score: 1\nOn reflection, Score: 3") == 3.0


def test_malformed_judgements_do_not_parse():
    for text in ("", "I would give it four points.", "Score: 7", "Score: 10", "Score: 4.5", "score: 3",
                 "Score: <total points>", "Score: -1", None):
        assert fp.parse_score(text) is None, text


def test_mean_scores_needs_enough_valid_judgements():
    means = fp.mean_scores([[4.0, 5.0, None], [3.0, None, None], [None, None, None], [1.0, 2.0, 3.0]], min_valid=2)
    assert means[0] == 4.5 and math.isnan(means[1]) and math.isnan(means[2]) and means[3] == 2.0
    assert fp.mean_scores([[3.0, None, None]], min_valid=1) == [3.0]


def test_best_vs_worst_with_ties():
    assert fp.best_vs_worst([2.0, 4.5, 1.0, 3.0]) == (1, 2)
    assert fp.best_vs_worst([3.0, 3.0, 3.0]) is None  # every answer scored alike: no pair
    assert fp.best_vs_worst([4.0, 1.0, 4.0, 1.0]) == (0, 1)  # ties at an end: the first sample
    assert fp.best_vs_worst([math.nan, 2.0, math.nan, 5.0]) == (3, 1)  # unscored samples are left out
    assert fp.best_vs_worst([math.nan, 2.0, math.nan]) is None  # one scored sample: no pair


def test_judge_question_holds_the_rubric_the_question_and_the_answer():
    q = fp.judge_question(" What is 2+2? ", " 4 ")
    assert "additive 5-point scoring system" in q and "Bestow a fifth point" in q
    assert "User: What is 2+2?\n<response>4</response>" in q and q.count('"Score: <total points>"') == 1


def test_length_control_picks_the_shortest_of_the_best_band_and_the_longest_of_the_worst():
    means, lengths = [5.0, 4.5, 2.0, 1.0, 1.4], [90, 30, 10, 20, 60]
    # rho 0: best against worst, whatever the lengths (the paper)
    assert fp.best_vs_worst(means, lengths, 0.0) == (0, 3)
    # rho 0.2: band 0.8 wide; high band >= 4.2 holds answers 0 and 1 (1 is shorter), low band <= 1.8 holds 3 and 4
    # (4 is longer); answer 2 (mean 2.0) is in neither
    assert fp.best_vs_worst(means, lengths, 0.2) == (1, 4)
    # rho 0.1: band 0.4; only answer 0 reaches 4.6, and 3 and 4 (<= 1.4) stay in the low band
    assert fp.best_vs_worst(means, lengths, 0.1) == (0, 4)
    # equal lengths: the earlier sample wins either end
    assert fp.best_vs_worst([3.0, 3.0, 1.0, 1.0], [5, 5, 5, 5], 0.3) == (0, 2)
    assert fp.best_vs_worst([2.0, 2.0], [1, 9], 0.3) is None  # a tie stays a tie
    with pytest.raises(ValueError, match="length_control"):
        fp.best_vs_worst(means, None, 0.2)
    with pytest.raises(ValueError, match="length_control"):
        fp.best_vs_worst(means, lengths, 0.5)
