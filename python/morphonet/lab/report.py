"""The lab's markdown report and effect plots (matplotlib, headless).

Nothing in the report depends on when or how fast the experiments ran (no dates, no
durations), so a run killed and resumed writes the same report as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ..files import atomic_write

__all__ = ["plot_effects", "render_report"]

_COLOURS = {"better": "tab:green", "worse": "tab:red", "negligible": "tab:blue",
            "inconclusive": "tab:gray", "unreachable": "black"}


def plot_effects(result: dict, path: str) -> None:
    """One row per treatment arm: the mean difference from the control with its BCa interval
    (coloured by verdict), 0 as a solid line, ±min_effect dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = result["comparisons"]
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.45 * max(1, len(comps))))
    for i, c in enumerate(comps):
        colour = _COLOURS[c["verdict"]]
        ax.errorbar([c["effect"]], [i], xerr=[[c["effect"] - c["lo"]], [c["hi"] - c["effect"]]],
                    fmt="o", color=colour, capsize=4, label=c["verdict"])
    ax.axvline(0, color="black", lw=0.8)
    if result["min_effect"] > 0:
        for x in (-result["min_effect"], result["min_effect"]):
            ax.axvline(x, color="gray", lw=0.8, ls="--")
    ax.set_yticks(range(len(comps)), [c["arm"] for c in comps])
    ax.set_ylim(-0.7, len(comps) - 0.3)
    level = comps[0]["level"] if comps else 0.95
    ax.set_xlabel(f"{result['metric']}: arm − {result['control']} "
                  f"(mean over seeds, {level:.0%} BCa interval)")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="best", fontsize=8)
    ax.set_title(result["hypothesis"], fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def _f(x: float, digits: int = 4) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def _section(h: Any, r: dict, command: str, figure: str, experiment: str) -> list[str]:
    lines = [f"## {h.id}", ""]
    if h.question:
        lines.append(f"**Question.** {h.question}  ")
    if h.prediction:
        lines.append(f"**Prediction.** {h.prediction}  ")
    if h.follow_up_of:
        lines.append(f"**Follow-up of** `{h.follow_up_of}` by the rule: {h.rule}.  ")
    lines += [
        f"**Design.** experiment `{experiment}` ({h.category.value}); control `{r['control']}`; "
        f"metric `{r['metric']}` ({r['direction']}); seeds {h.first_seed}–"
        f"{h.first_seed + h.seeds - 1} ({h.seeds}, paired); alpha {h.alpha}; smallest effect "
        f"of interest {h.min_effect}.",
        "",
        f"Reproduce: `{command}`",
        "",
        "| arm | n | arm mean | control mean | arm − control [interval] | wins/losses | "
        "Wilcoxon p | adjusted p | Hedges' g | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["comparisons"]:
        lines.append(
            f"| {c['arm']} | {c['n']} | {_f(c['arm_mean'])} | {_f(c['control_mean'])} | "
            f"{c['effect']:+.4g} [{c['lo']:+.4g}, {c['hi']:+.4g}] | {c['wins']}/{c['losses']} "
            f"| {_f(c['p'], 3)} ({c['test']}) | {_f(c['p_adj'], 3)} ({c['correction']}) | "
            f"{_f(c['g'], 3)} | **{c['verdict']}** |")
    lines += ["", f"![effects of {h.id}]({figure})", ""]
    seeds = h.seed_list()
    lines += ["Per seed (" + r["metric"] + "):", "",
              "| arm | " + " | ".join(str(s) for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for arm, vals in r["values"].items():
        lines.append(f"| {arm} | " + " | ".join(_f(vals[s]) if s in vals else "–"
                                               for s in seeds) + " |")
    lines.append("")
    return lines


def render_report(path: str, entries: list[dict], insights: list[dict],
                  follow_ups: list[Any], correction: str) -> str:
    """Write the report to ``path`` (markdown; figures beside it) and return its text.
    ``entries``: one dict per hypothesis with ``hypothesis``, ``result``, ``command``,
    ``experiment``."""
    out_dir = os.path.dirname(os.path.abspath(path))
    n = sum(len(e["result"]["comparisons"]) for e in entries)
    lines = ["# Neural Architecture Lab report", "",
             f"{len(entries)} hypotheses, {n} comparisons with their named controls, paired by "
             f"seed. Effects are arm − control in the metric's units with paired BCa bootstrap "
             f"intervals at 1 − alpha; p values are Wilcoxon signed-rank (exact for small n), "
             f"adjusted across all {n} comparisons by {correction}. Verdicts: `unreachable` "
             f"(too few seeds to reach alpha), `negligible` (the interval lies within ±the "
             f"smallest effect of interest), `inconclusive` (the interval spans 0 or the "
             f"adjusted p exceeds alpha), else `better` / `worse`.", ""]
    lines += ["## Insights (significant effects, largest |g| first)", ""]
    if insights:
        lines += [f"{i + 1}. `{x['hypothesis']}`: {x['statement']}"
                  for i, x in enumerate(insights)]
    else:
        lines.append("No comparison is significant.")
    lines.append("")
    if follow_ups:
        lines += ["## Follow-ups proposed", ""]
        lines += [f"- `{f.id}` (of `{f.follow_up_of}`): seeds {f.first_seed}–"
                  f"{f.first_seed + f.seeds - 1}"
                  + (f", grid {f.parameter_space}" if f.parameter_space else "")
                  for f in follow_ups]
        lines.append("")
    for e in entries:
        h, r = e["hypothesis"], e["result"]
        fig = os.path.join(h.id, "effects.png")
        plot_effects(r, os.path.join(out_dir, fig))
        lines += _section(h, r, e["command"], fig, e["experiment"])
    text = "\n".join(lines)
    atomic_write(path, text.encode())
    return text
