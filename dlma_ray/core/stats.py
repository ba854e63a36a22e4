"""Uncertainty for evaluation numbers: intervals that say how far a measured rate or mean could move.

Pure Python + numpy (no torch, no Ray, no project imports), so reports and tests can use it anywhere.

    wilson_interval   95% Wilson score interval of a proportion (well behaved at 0, 1 and small n)
    rate_summary      {n, count, rate, ci95} of a count out of n
    mean_summary      {n, mean, ci95, sd, nan}: percentile bootstrap of the mean, seeded, non-finite left out
    paired_gain       mean_summary of per-item differences new - base, with frac_positive and both means
    excludes_zero     "above" / "below" / "includes": where a summary's ci95 lies with respect to 0

Every summary carries its sample count ``n``; a quantity that cannot be computed (n == 0) is None
(JSON null), never 0, so that "no data" does not read as "all wrong".
"""

from __future__ import annotations

import math

import numpy as np

# Bound on the size of one block of resampled indices (resamples x n), so that a large sample does
# not allocate resamples * n integers at once; the result does not depend on it (same draws, in order).
_MAX_BLOCK = 4_000_000


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """Wilson score interval for ``successes`` out of ``n`` (z = 1.96: 95%); (None, None) when n == 0.

    center = (p + z^2 / 2n) / (1 + z^2 / n), half = z * sqrt(p(1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n),
    clipped to [0, 1] (it is inside already, up to rounding).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return None, None
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = center - half, center + half
    # At p = 0 (p = 1) the bound is 0 (1) exactly in real arithmetic; rounding must not move it.
    lo = 0.0 if successes == 0 else max(0.0, lo)
    hi = 1.0 if successes == n else min(1.0, hi)
    return lo, hi


def rate_summary(successes: int, n: int) -> dict:
    """``{"n", "count", "rate", "ci95"}`` of ``successes`` out of ``n``; rate None and ci95 [None, None] at n == 0."""
    lo, hi = wilson_interval(successes, n)
    return {"n": n, "count": successes, "rate": successes / n if n else None, "ci95": [lo, hi]}


def _bootstrap_means(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` resamples (with replacement) of ``x``, drawn from one seeded Generator."""
    rng = np.random.default_rng(seed)
    n = len(x)
    rows = max(1, _MAX_BLOCK // n)
    out = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def mean_summary(values, *, seed: int = 0, resamples: int = 2000) -> dict:
    """Mean with a 95% percentile-bootstrap interval: ``{"n", "mean", "ci95", "sd", "nan"}``.

    Non-finite values (NaN, +-inf) are left out and counted under ``nan``. ``sd`` is the sample standard
    deviation (ddof = 1; None below 2 values). n == 0: mean None, ci95 [None, None]; n == 1: ci95
    [mean, mean] (a single value has no spread to resample). The same seed gives the same interval.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    finite = np.isfinite(arr)
    x = arr[finite]
    n, left_out = int(x.size), int(arr.size - x.size)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": [None, None], "sd": None, "nan": left_out}
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n >= 2 else None
    if n == 1:
        return {"n": 1, "mean": mean, "ci95": [mean, mean], "sd": sd, "nan": left_out}
    means = _bootstrap_means(x, resamples, seed)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"n": n, "mean": mean, "ci95": [float(lo), float(hi)], "sd": sd, "nan": left_out}


def paired_gain(new, base, *, seed: int = 0, resamples: int = 2000) -> dict:
    """Per-item gain ``new[i] - base[i]`` summarised by :func:`mean_summary`, plus three fields.

    Items where either value is non-finite are left out of everything and counted under ``nan``.
    ``frac_positive``: fraction of kept items with a strictly positive difference (a tie is not a gain);
    ``new_mean`` / ``base_mean``: the means of the kept items, so new_mean - base_mean == mean.
    Raises ValueError when the two sequences differ in length (they must be the same items, in order).
    """
    a = np.asarray(list(new) if not isinstance(new, np.ndarray) else new, dtype=np.float64).ravel()
    b = np.asarray(list(base) if not isinstance(base, np.ndarray) else base, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"paired_gain needs the same items in both: {a.size} new values, {b.size} base values")
    keep = np.isfinite(a) & np.isfinite(b)
    diffs = a[keep] - b[keep]
    out = mean_summary(diffs, seed=seed, resamples=resamples)
    out["nan"] = int(a.size - int(keep.sum()))
    n = out["n"]
    out["frac_positive"] = float((diffs > 0).sum() / n) if n else None
    out["new_mean"] = float(a[keep].mean()) if n else None
    out["base_mean"] = float(b[keep].mean()) if n else None
    return out


def excludes_zero(summary: dict) -> str:
    """Where the summary's ``ci95`` lies: "above" (lower bound > 0), "below" (upper bound < 0) or "includes".

    A missing interval (n == 0: [None, None]) reads "includes": no evidence either way. A bound exactly
    at 0 also reads "includes".
    """
    lo, hi = summary.get("ci95", [None, None])
    if lo is not None and lo > 0:
        return "above"
    if hi is not None and hi < 0:
        return "below"
    return "includes"


def ratio(num: float, den: int) -> float | None:
    """num / den, or None (JSON null) when den is 0: "no data" is not "all wrong"."""
    return num / den if den else None
