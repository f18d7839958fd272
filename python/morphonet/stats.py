"""The statistics of morphonet's experiments, in one place (scipy's t distribution).

Experiments compare methods *paired by seed* (same split, same initialisation seed, same
budget), so a comparison is the mean of the per-seed differences with a Student-t confidence
interval over the seeds: `paired`. `interval` is the same for one list of values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Optional

from scipy import stats as _st

from .checks import check_real

__all__ = ["interval", "paired"]


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
