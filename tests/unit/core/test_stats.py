"""dlma_ray.core.stats: Wilson intervals against textbook values, the bootstrap against the normal
approximation, seeding, non-finite values, paired gains (pure numpy, runs in well under a second)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlma_ray.core.stats import excludes_zero, mean_summary, paired_gain, rate_summary, wilson_interval


# ---------------------------------------------------------------- Wilson

@pytest.mark.parametrize("k, n, lo, hi", [
    (8, 10, 0.4902, 0.9433),    # Wilson (1927) / Agresti & Coull (1998): 8 of 10 -> [0.490, 0.943]
    (5, 10, 0.2366, 0.7634),    # symmetric around 0.5
    (1, 20, 0.0089, 0.2361),
    (0, 10, 0.0, 0.2775),       # lower bound exactly 0, upper z^2/(n+z^2) = 3.8416/13.8416
    (10, 10, 0.7225, 1.0),
])
def test_wilson_textbook_values(k, n, lo, hi):
    got_lo, got_hi = wilson_interval(k, n)
    assert got_lo == pytest.approx(lo, abs=1e-4)
    assert got_hi == pytest.approx(hi, abs=1e-4)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (None, None)
    assert wilson_interval(0, 10)[0] == 0.0          # exactly, not -1e-17
    assert wilson_interval(10, 10)[1] == 1.0
    lo90, hi90 = wilson_interval(8, 10, z=1.645)     # a narrower level is nested inside the 95% one
    lo95, hi95 = wilson_interval(8, 10)
    assert lo95 < lo90 < 0.8 < hi90 < hi95
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_rate_summary():
    s = rate_summary(8, 10)
    assert s["n"] == 10 and s["count"] == 8 and s["rate"] == 0.8
    assert s["ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert rate_summary(0, 0) == {"n": 0, "count": 0, "rate": None, "ci95": [None, None]}


# ---------------------------------------------------------------- bootstrap of the mean

def test_bootstrap_ci_matches_normal_approximation():
    x = np.random.default_rng(123).normal(3.0, 2.0, size=2000)
    s = mean_summary(x, seed=7)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert s["n"] == 2000 and s["nan"] == 0
    assert s["mean"] == pytest.approx(float(x.mean()))
    assert s["sd"] == pytest.approx(float(x.std(ddof=1)))
    lo, hi = s["ci95"]
    assert lo < s["mean"] < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert (lo + hi) / 2 == pytest.approx(s["mean"], abs=0.15 * half)


def test_bootstrap_is_seeded():
    x = np.random.default_rng(0).exponential(size=50)
    assert mean_summary(x, seed=3) == mean_summary(list(x), seed=3)
    assert mean_summary(x, seed=3)["ci95"] != mean_summary(x, seed=4)["ci95"]


def test_bootstrap_blocks_do_not_change_the_draws(monkeypatch):
    import dlma_ray.core.stats as es
    x = np.random.default_rng(1).normal(size=40)
    whole = mean_summary(x, seed=5, resamples=300)
    monkeypatch.setattr(es, "_MAX_BLOCK", 40 * 7)    # 7 resamples per block, last block partial
    assert mean_summary(x, seed=5, resamples=300) == whole


def test_non_finite_values_are_left_out_and_counted():
    s = mean_summary([1.0, float("nan"), 3.0, float("inf"), 2.0])
    assert s["n"] == 3 and s["nan"] == 2 and s["mean"] == pytest.approx(2.0)
    assert 1.0 <= s["ci95"][0] <= s["ci95"][1] <= 3.0


def test_small_samples():
    assert mean_summary([]) == {"n": 0, "mean": None, "ci95": [None, None], "sd": None, "nan": 0}
    assert mean_summary([float("nan")])["nan"] == 1 and mean_summary([float("nan")])["mean"] is None
    one = mean_summary([4.5])
    assert one["n"] == 1 and one["mean"] == 4.5 and one["ci95"] == [4.5, 4.5] and one["sd"] is None


# ---------------------------------------------------------------- paired gains

def test_paired_gain_clearly_positive():
    rng = np.random.default_rng(11)
    base = rng.normal(0.0, 1.0, size=200)
    new = base + 0.5 + rng.normal(0.0, 0.3, size=200)   # each item improves by ~0.5
    g = paired_gain(new, base, seed=0)
    assert g["n"] == 200 and g["nan"] == 0
    assert g["mean"] == pytest.approx(g["new_mean"] - g["base_mean"])
    assert g["ci95"][0] > 0.3 and excludes_zero(g) == "above"
    assert g["frac_positive"] > 0.9


def test_paired_gain_zero_centred():
    rng = np.random.default_rng(12)
    base = rng.normal(0.0, 1.0, size=200)
    new = base + rng.normal(0.0, 0.5, size=200)          # noise only
    g = paired_gain(new, base, seed=0)
    assert g["ci95"][0] < 0 < g["ci95"][1] and excludes_zero(g) == "includes"
    assert 0.35 < g["frac_positive"] < 0.65
    assert excludes_zero(paired_gain(base, base + 1.0)) == "below"


def test_paired_gain_pairs_items_and_leaves_out_non_finite():
    g = paired_gain([2.0, float("nan"), 5.0, 1.0], [1.0, 0.0, float("inf"), 1.0])
    assert g["n"] == 2 and g["nan"] == 2                 # items 1 and 2 dropped from both sides
    assert g["mean"] == pytest.approx(0.5) and g["frac_positive"] == 0.5   # a tie is not a gain
    assert g["new_mean"] == pytest.approx(1.5) and g["base_mean"] == pytest.approx(1.0)


def test_paired_gain_length_mismatch_raises():
    with pytest.raises(ValueError):
        paired_gain([1.0, 2.0], [1.0])


def test_excludes_zero_wording():
    assert excludes_zero({"ci95": [0.1, 0.4]}) == "above"
    assert excludes_zero({"ci95": [-0.4, -0.1]}) == "below"
    assert excludes_zero({"ci95": [-0.1, 0.4]}) == "includes"
    assert excludes_zero({"ci95": [0.0, 0.4]}) == "includes"
    assert excludes_zero({"ci95": [None, None]}) == "includes"
