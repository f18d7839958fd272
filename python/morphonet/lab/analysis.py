"""The lab's statistics on top of `morphonet.stats`, its verdicts, insights and follow-ups.

Every treatment arm is compared with the hypothesis' named control over the seeds both ran
(same split, same initialisation seed): the mean difference (arm − control, in the metric's
units) with its paired BCa bootstrap interval at level 1 − alpha, the Wilcoxon signed-rank p
(exact for small n), Hedges' g of the differences, and the p adjusted across every comparison
of the lab's hypotheses (Holm by default, or Benjamini-Hochberg). The verdict rule, in order:

1. ``unreachable``: too few non-zero differences for the exact test to reach alpha at all
   (after the correction: under Holm the smallest p must reach alpha / m);
2. ``negligible``: the interval lies inside ±min_effect (only when min_effect > 0);
3. ``inconclusive``: the interval spans 0, or the adjusted p is above alpha;
4. ``better`` / ``worse`` (by the metric's direction): otherwise.

Follow-ups are proposed by one stated rule (`FOLLOW_UP_RULE`).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..stats import adjust_pvalues, bootstrap_paired, hedges_g_paired, wilcoxon_paired
from .config import Hypothesis

__all__ = ["FOLLOW_UP_RULE", "VERDICTS", "analyse", "apply_correction", "compare_arm",
           "follow_up", "rank_insights", "verdict"]

VERDICTS = ("better", "worse", "negligible", "inconclusive", "unreachable")
FOLLOW_UP_RULE = (
    "a hypothesis with a significant (better or worse) comparison gets one follow-up on fresh "
    "seeds (first_seed + seeds onwards, so the data that found the effect do not confirm it): "
    "with a parameter space whose best significant arm has numeric values, a finer grid of 5 "
    "points per numeric parameter between that value's neighbours in the grid (mirrored at "
    "an edge, never across 0), other parameters fixed at the best arm's, the same control "
    "(<name>.finer); otherwise a replication of the same design (<name>.replication)")


def compare_arm(arm: dict, control: dict, alpha: float, n_resamples: int = 9999,
                seed: int = 0) -> dict[str, Any]:
    """One paired comparison, ``arm`` and ``control`` as {seed: value}: effect (mean of
    arm − control) and BCa interval at 1 − alpha, Wilcoxon p, Hedges' g, wins / losses."""
    keys = sorted(set(arm) & set(control))
    a = {k: float(arm[k]) for k in keys}
    c = {k: float(control[k]) for k in keys}
    w = wilcoxon_paired(a, c)
    b = bootstrap_paired(a, c, level=1 - alpha, n_resamples=n_resamples, seed=seed)
    d = np.array([a[k] - c[k] for k in keys])
    return {"n": len(keys), "arm_mean": float(np.mean(list(a.values()))),
            "control_mean": float(np.mean(list(c.values()))),
            "effect": b["mean"], "lo": b["lo"], "hi": b["hi"], "level": 1 - alpha,
            "p": w["p"], "test": w["method"], "nonzero": w["n"], "min_p": w["min_p"],
            "g": hedges_g_paired(a, c), "wins": int((d > 0).sum()),
            "losses": int((d < 0).sum())}


def verdict(c: dict, alpha: float, min_effect: float, direction: str) -> str:
    """The verdict of a comparison with its adjusted p (``c["p_adj"]``) and the smallest
    adjusted p its design allows (``c["min_p_adj"]``, else ``c["min_p"]``), by the rule of
    the module docstring."""
    if c.get("min_p_adj", c["min_p"]) > alpha:
        return "unreachable"
    if min_effect > 0 and -min_effect < c["lo"] and c["hi"] < min_effect:
        return "negligible"
    if c["lo"] <= 0 <= c["hi"] or c["p_adj"] > alpha:
        return "inconclusive"
    return "better" if (c["effect"] > 0) == (direction == "maximize") else "worse"


def analyse(h: Hypothesis, control: str, arms: list[str], metric: str, direction: str,
            data: dict[tuple[str, int], dict], n_resamples: int, seed: int) -> dict:
    """The result of one hypothesis from its experiments' metrics ({(arm, seed): metrics}):
    per-arm values by seed and a comparison per treatment arm (adjusted p and verdicts are
    set by `apply_correction`)."""
    values = {a: {s: data[(a, s)][metric] for s in h.seed_list() if (a, s) in data}
              for a in arms}
    comparisons = []
    for a in arms:
        if a == control:
            continue
        c = compare_arm(values[a], values[control], h.alpha, n_resamples, seed)
        comparisons.append({"arm": a, **c})
    return {"hypothesis": h.id, "control": control, "metric": metric, "direction": direction,
            "alpha": h.alpha, "min_effect": h.min_effect, "values": values,
            "metrics": {f"{a}|{s}": m for (a, s), m in sorted(data.items())},
            "comparisons": comparisons}


def apply_correction(results: list[dict], method: str) -> None:
    """Adjust the p of every comparison of ``results`` together (one family: the lab's
    hypotheses) and set each verdict and statement."""
    flat = [c for r in results for c in r["comparisons"]]
    ps = [c["p"] for c in flat]
    for i, (c, p) in enumerate(zip(flat, adjust_pvalues(ps, method))):
        c["p_adj"] = p
        # the best this comparison's design can do after correction: its adjusted p were its
        # own p the smallest its non-zero pairs allow, the others as they are (an adjusted p
        # rises with its p, so this is the bound; Holm's is not min_p · m once the
        # comparisons have different numbers of non-zero pairs)
        best = ps[:i] + [min(c["min_p"], c["p"])] + ps[i + 1:]
        c["min_p_adj"] = float(adjust_pvalues(best, method)[i])
    for r in results:
        for c in r["comparisons"]:
            c["correction"] = method
            c["verdict"] = verdict(c, r["alpha"], r["min_effect"], r["direction"])
            c["statement"] = statement(r, c)


def _g(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def statement(r: dict, c: dict) -> str:
    """``arm − control = effect [lo, hi] metric (95% BCa, n seeds); p ...: verdict``."""
    return (f"{c['arm']} − {r['control']} = {c['effect']:+.4g} [{c['lo']:+.4g}, "
            f"{c['hi']:+.4g}] {r['metric']} ({c['level']:.0%} BCa, {c['n']} seeds); Wilcoxon "
            f"p = {c['p']:.3g} ({c['correction']}: {c['p_adj']:.3g}), g = {_g(c['g'])}: "
            f"{c['verdict']}")


def rank_insights(results: list[dict]) -> list[dict]:
    """The significant comparisons (better / worse), largest |Hedges' g| first (ties: the
    interval's bound nearer 0, larger first)."""
    out = []
    for r in results:
        for c in r["comparisons"]:
            if c["verdict"] in ("better", "worse"):
                out.append({"hypothesis": r["hypothesis"], "arm": c["arm"],
                            "control": r["control"], "metric": r["metric"],
                            "verdict": c["verdict"], "effect": c["effect"], "lo": c["lo"],
                            "hi": c["hi"], "p_adj": c["p_adj"], "g": c["g"],
                            "statement": c["statement"]})
    return sorted(out, key=lambda i: (-abs(i["g"]), -min(abs(i["lo"]), abs(i["hi"])),
                                      i["hypothesis"], i["arm"]))


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finer(values: list, v: Any) -> list:
    """5 points between ``v``'s neighbours in ``values``, mirrored at an edge of the grid
    (2v − the one neighbour) but never across 0: a positive value's mirror at or below 0
    becomes v / 2 (a negative one's at or above 0, v / 2 too). Bounds of a parameter's own
    (a sparsity below 1, say) are the experiment's: it rejects the design when registered."""
    grid = sorted(values)
    i = grid.index(v)

    def mirror(nb: float, alt: float) -> float:
        m = 2 * v - nb
        return m if v == 0 or (m > 0) == (v > 0) and m != 0 else alt

    lo = grid[i - 1] if i > 0 else (mirror(grid[i + 1], v / 2) if len(grid) > 1 else v / 2)
    hi = grid[i + 1] if i + 1 < len(grid) else (mirror(grid[i - 1], v * 2) if len(grid) > 1
                                                  else v * 2)
    pts = np.linspace(lo, hi, 5).tolist()
    if all(isinstance(x, int) for x in values):
        pts = sorted({int(round(x)) for x in pts} - ({0} if v != 0 else set()))
    return [x if isinstance(x, int) else float(f"{x:.6g}") for x in pts]


def follow_up(h: Hypothesis, result: dict, arm_params: dict[str, dict]) -> Optional[Hypothesis]:
    """The follow-up `FOLLOW_UP_RULE` proposes for ``h`` (None without a significant
    comparison)."""
    sig = [c for c in result["comparisons"] if c["verdict"] in ("better", "worse")]
    if not sig:
        return None
    sign = 1 if result["direction"] == "maximize" else -1
    best = max(sig, key=lambda c: sign * c["effect"])
    fresh = dict(first_seed=h.first_seed + h.seeds, follow_up_of=h.id, rule=FOLLOW_UP_RULE,
                 question=f"Follow-up of {h.id}: {h.question}".strip(),
                 prediction=h.prediction)
    grid = h.grid_arms()
    point = grid.get(best["arm"])
    numeric = {k: v for k, v in (point or {}).items() if _numeric(v)}
    if point is not None and numeric:
        space = {k: _finer(h.parameter_space[k], v) for k, v in numeric.items()}
        fixed = {k: v for k, v in point.items() if k not in numeric}
        control = result["control"]
        return h.replace(name=f"{h.id}.finer", arms={"control": dict(arm_params[control])},
                         control="control", parameter_space=space,
                         params={**h.params, **fixed}, **fresh)
    return h.replace(name=f"{h.id}.replication", **fresh)
