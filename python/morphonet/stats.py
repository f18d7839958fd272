"""The statistics of morphonet's experiments, in one place (scipy, statsmodels).

Experiments compare methods *paired by seed* (same split, same initialisation seed, same
budget), so a comparison is the mean of the per-seed differences with a Student-t confidence
interval over the seeds: `paired`. `interval` is the same for one list of values.

The hypothesis tests of the Neural Architecture Lab (`morphonet.lab`) are here too, for every
system to use: `wilcoxon_paired` (signed-rank, exact for small n), `bootstrap_paired` (paired
BCa interval of the mean difference), `hedges_g_paired`, `adjust_pvalues` (Holm or
Benjamini-Hochberg), and the guard `min_wilcoxon_p` / `pairs_needed` (with 5 pairs the exact
two-sided p is never below 0.0625).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from scipy import stats as _st

from .checks import check_choice, check_int, check_real

__all__ = ["CORRECTIONS", "adjust_pvalues", "bootstrap_paired", "hedges_g_paired", "interval",
           "min_wilcoxon_p", "paired", "pairs_needed", "wilcoxon_paired"]


def interval(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """``{"mean", "lo", "hi", "std", "n"}``: the mean of ``values`` and its Student-t
    confidence interval at ``level`` (lo = hi = mean for a single value)."""
    level = check_real("level", level, 0, 1, lo_open=True, hi_open=True)
    v = [float(x) for x in values]
    if not v:
        raise ValueError("interval of no values")
    m = statistics.fmean(v)
    if len(v) < 2:
        return {"mean": m, "lo": m, "hi": m, "std": 0.0, "n": len(v)}
    sd = statistics.stdev(v)
    half = float(_st.t.ppf(0.5 + level / 2, len(v) - 1)) * sd / math.sqrt(len(v))
    return {"mean": m, "lo": m - half, "hi": m + half, "std": sd, "n": len(v)}


def paired(a: dict, b: dict, level: float = 0.95) -> Optional[dict[str, float]]:
    """The difference ``a − b`` over the keys (seeds) both have: `interval` of the per-key
    differences plus ``wins`` (keys where a > b), ``ties`` and ``pairs``; None without a
    common key."""
    keys = sorted(set(a) & set(b))
    if not keys:
        return None
    d = [float(a[k]) - float(b[k]) for k in keys]
    out = interval(d, level)
    out.update(wins=sum(x > 0 for x in d), ties=sum(x == 0 for x in d), pairs=len(d))
    return out


# ---------------------------------------------------------------------------- hypothesis tests
# The Neural Architecture Lab's statistics (`morphonet.lab`), here so every system shares them:
# a paired comparison of a treatment with its named control over the seeds both have, by the
# Wilcoxon signed-rank test (exact for small n), a paired BCa bootstrap interval of the mean
# difference, Hedges' g of the differences, and Holm / Benjamini-Hochberg across comparisons.

_EXACT_MAX_N = 50   # scipy's own bound for the exact signed-rank distribution


def _pairs(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) as arrays over the keys both have, for two {key: value} dicts (e.g. seeds), or
    two equally long sequences (paired by position)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) & set(b))
        return (np.array([float(a[k]) for k in keys]), np.array([float(b[k]) for k in keys]))
    if isinstance(a, dict) or isinstance(b, dict):
        raise TypeError("a and b must both be dicts {seed: value} or both sequences")
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-D and equally long, got {x.shape} and {y.shape}")
    return x, y


def _diffs(a: Any, b: Any) -> np.ndarray:
    x, y = _pairs(a, b)
    return x - y


def min_wilcoxon_p(n: int, alternative: str = "two-sided") -> float:
    """The smallest p the exact Wilcoxon signed-rank test can give with ``n`` non-zero paired
    differences: every sign alike, probability 2⁻ⁿ per tail (two-sided: 2·2⁻ⁿ, so with 5 pairs
    never below 0.0625); 1 for n = 0."""
    n = check_int("n", n, 0)
    check_choice("alternative", alternative, ("two-sided", "greater", "less"))
    if n == 0:
        return 1.0
    return min(1.0, (2.0 if alternative == "two-sided" else 1.0) * 0.5 ** n)


def pairs_needed(alpha: float, alternative: str = "two-sided") -> int:
    """The fewest non-zero pairs with which the exact signed-rank test can reach ``alpha``
    (p ≤ alpha): 6 for a two-sided 0.05."""
    alpha = check_real("alpha", alpha, 0, 1, lo_open=True, hi_open=True)
    n = 1
    while min_wilcoxon_p(n, alternative) > alpha:
        n += 1
    return n


def wilcoxon_paired(a: Any, b: Any, alternative: str = "two-sided") -> dict[str, Any]:
    """Wilcoxon signed-rank test of ``a − b`` (paired by key, or by position), via
    ``scipy.stats.wilcoxon``: zero differences are dropped (``zero_method='wilcox'``); the
    exact null distribution when the rest are at most 50 and untied, an exact enumeration of
    sign flips (``PermutationMethod``) when ties remain at n ≤ 16, the normal approximation
    beyond. Returns ``{"p", "statistic", "n" (non-zero pairs), "method", "min_p"}`` (p = 1
    and method "none" without a non-zero difference)."""
    check_choice("alternative", alternative, ("two-sided", "greater", "less"))
    d = _diffs(a, b)
    nz = d[d != 0]
    n = int(nz.size)
    if n == 0:
        return {"p": 1.0, "statistic": 0.0, "n": 0, "method": "none", "min_p": 1.0}
    tied = np.unique(np.abs(nz)).size < n
    if not tied and n <= _EXACT_MAX_N:
        method: Any = "exact"
    elif n <= 16:
        method = _st.PermutationMethod(n_resamples=2 ** n)  # ≥ 2^n: enumerated exactly
    else:
        method = "approx"
    r = _st.wilcoxon(nz, alternative=alternative, method=method)
    name = method if isinstance(method, str) else "exact-permutation"
    return {"p": float(r.pvalue), "statistic": float(r.statistic), "n": n, "method": name,
            "min_p": min_wilcoxon_p(n, alternative)}


def bootstrap_paired(a: Any, b: Any, level: float = 0.95, n_resamples: int = 9999,
                     seed: int = 0) -> dict[str, float]:
    """The mean of ``a − b`` (paired by key or position) with its BCa bootstrap interval,
    ``scipy.stats.bootstrap(paired=True, method='BCa')`` with a fixed ``seed`` (the same data
    give the same interval). ``{"mean", "lo", "hi", "n"}``; a single pair, or differences
    all equal, give lo = hi = mean (nothing to resample)."""
    level = check_real("level", level, 0, 1, lo_open=True, hi_open=True)
    n_resamples = check_int("n_resamples", n_resamples, 100)
    x, y = _pairs(a, b)
    d = x - y
    if d.size == 0:
        raise ValueError("bootstrap of no pairs")
    m = float(d.mean())
    if d.size < 2 or np.ptp(d) == 0:
        return {"mean": m, "lo": m, "hi": m, "n": int(d.size)}

    def mean_diff(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(u - v, axis=axis)

    r = _st.bootstrap((x, y), mean_diff, paired=True, vectorized=True, method="BCa",
                      confidence_level=level, n_resamples=n_resamples,
                      rng=np.random.default_rng(seed))
    lo, hi = float(r.confidence_interval.low), float(r.confidence_interval.high)
    return {"mean": m, "lo": lo, "hi": hi, "n": int(d.size)}


def hedges_g_paired(a: Any, b: Any) -> float:
    """Hedges' g of paired data (g_z): the mean difference over the standard deviation of
    the differences, times the small-sample correction J = 1 − 3 / (4(n − 1) − 1). 0 when
    the differences are all equal to 0; ±inf when they are all equal and not 0; needs n ≥ 2."""
    d = _diffs(a, b)
    if d.size < 2:
        raise ValueError(f"Hedges' g needs at least 2 pairs, got {d.size}")
    m, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return 0.0 if m == 0 else math.copysign(math.inf, m)
    n = d.size
    return m / sd * (1 - 3 / (4 * (n - 1) - 1))


CORRECTIONS = ("holm", "fdr_bh", "none")


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm") -> list[float]:
    """P values adjusted for multiple comparisons by
    ``statsmodels.stats.multitest.multipletests``: "holm" (family-wise error), "fdr_bh"
    (Benjamini-Hochberg false discovery rate) or "none"."""
    check_choice("method", method, CORRECTIONS)
    p = [float(x) for x in pvalues]
    if not p or method == "none":
        return p
    from statsmodels.stats.multitest import multipletests

    return [float(x) for x in multipletests(p, method=method)[1]]
