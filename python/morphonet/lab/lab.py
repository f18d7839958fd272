"""`NeuralArchitectureLab`: register hypotheses, run them on Optuna, analyse, report.

    lab = NeuralArchitectureLab(LabConfig(max_parallel_experiments=2, results_dir="out"))
    lab.register_hypothesis(Hypothesis(name="h", category=HypothesisCategory.SPARSITY))
    result = lab.run_hypothesis_test("h")     # experiments as Optuna trials, then statistics
    insights = lab.extract_insights()          # significant effects ranked; follow-ups added
    print(lab.generate_report())               # <results_dir>/report.md and figures
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Optional

from ..files import write_json
from ..stats import min_wilcoxon_p, pairs_needed
from .analysis import analyse, apply_correction, follow_up, rank_insights
from .config import Hypothesis, LabConfig
from .engine import Plan, execute, load, storage_url
from .experiments import CATEGORY_DEFAULTS, EXPERIMENTS, get_experiment
from .report import render_report

__all__ = ["NeuralArchitectureLab", "dump_lab_file"]


def dump_lab_file(path: str, config: LabConfig, hypotheses: list[Hypothesis]) -> None:
    """Write a hypothesis file (YAML) that `morpho lab run` reads back."""
    import yaml

    from ..files import atomic_write

    doc = {"lab": config.to_dict(), "hypothesis": [_plain(h) for h in hypotheses]}
    atomic_write(path, yaml.safe_dump(doc, sort_keys=False).encode())


def _plain(h: Hypothesis) -> dict:
    d = h.to_dict()
    d["category"] = h.category.value
    return {k: v for k, v in d.items() if v not in (None, "", {})}


class NeuralArchitectureLab:
    """The seed's lab: hypotheses with a named control, run as Optuna trials (embedded
    journal file or a shared RDB), analysed with paired statistics that cannot cheat."""

    def __init__(self, config: Optional[LabConfig] = None):
        if config is None:
            config = LabConfig()
        if not isinstance(config, LabConfig):
            raise TypeError(f"config must be a LabConfig, got {type(config).__name__}")
        self.config = config.validate()
        self.hypotheses: dict[str, Hypothesis] = {}
        self.results: dict[str, dict] = {}
        self.follow_ups: list[str] = []
        self._plans: dict[str, Plan] = {}
        self._sources: dict[str, str] = {}

    # -- where things go
    @property
    def storage(self) -> str:
        """The Optuna storage: the config's URL / path, or ``<results_dir>/lab.journal``."""
        return storage_url(self.config.storage or os.path.join(self.config.results_dir,
                                                               "lab.journal"))

    def _dir(self, hid: str) -> str:
        return os.path.join(self.config.results_dir, hid)

    # -- hypotheses
    def register_hypothesis(self, hypothesis: Hypothesis, source: Optional[str] = None) -> str:
        """Add ``hypothesis`` (its experiment, arms, control and metric resolved now, so a bad
        design fails here, not mid-run); returns its id. ``source``: the hypothesis file it
        came from (the report's reproducing command names it)."""
        if not isinstance(hypothesis, Hypothesis):
            raise TypeError(f"hypothesis must be a Hypothesis, got {type(hypothesis).__name__}")
        hypothesis.validate()
        old = self.hypotheses.get(hypothesis.id)
        if old is not None and old != hypothesis:
            raise ValueError(f"a different hypothesis named {hypothesis.id!r} is registered")
        self._plans[hypothesis.id] = self._plan(hypothesis)
        self.hypotheses[hypothesis.id] = hypothesis
        if source:
            self._sources[hypothesis.id] = source
        return hypothesis.id

    def _plan(self, h: Hypothesis) -> Plan:
        name = h.experiment or CATEGORY_DEFAULTS.get(h.category)
        if name is None:
            raise ValueError(f"hypothesis {h.id!r}: category {h.category.value!r} has no "
                             f"default experiment; name one (experiment=...; registered: "
                             f"{sorted(EXPERIMENTS)})")
        exp = get_experiment(name)
        named = h.arms if h.arms is not None else ({} if h.parameter_space else exp.arms)
        arms = {**named, **h.grid_arms()}
        control = h.control or exp.control
        metric = h.metric or exp.metric
        where = f"hypothesis {h.id!r} (experiment {exp.name!r})"
        if len(arms) < 2:
            raise ValueError(f"{where}: needs a control and at least one other arm, got "
                             f"{sorted(arms)}")
        if control not in arms:
            raise ValueError(f"{where}: control {control!r} is not one of the arms "
                             f"{sorted(arms)}")
        if metric is None:
            raise ValueError(f"{where}: name the metric (metric=...)")
        merged = {a: {**exp.params, **h.params, **p} for a, p in arms.items()}
        # the seeds are not part of the study's identity: a trial is one (arm, seed), so
        # more seeds later add trials to the same study
        design = {"experiment": exp.source(), "arms": merged, "control": control}
        key = hashlib.sha256(json.dumps(design, sort_keys=True, default=str).encode())
        return Plan(h.id, f"{h.id}-{key.hexdigest()[:10]}", exp, merged, control,
                    tuple(h.seed_list()), metric, h.direction or exp.direction)

    # -- running
    def run_hypothesis_test(self, hypothesis_id: str) -> dict:
        """Run (or resume) the experiments of one hypothesis and analyse them; returns its
        result (comparisons with effect, interval, p, adjusted p, g, verdict)."""
        return self.run([hypothesis_id])[hypothesis_id]

    def run(self, ids: Optional[list[str]] = None) -> dict[str, dict]:
        """Run the hypotheses ``ids`` (default: every registered one without a result)
        together, the workers sharing their experiments; returns {id: result}. The p values
        of every result of the lab are adjusted together afterwards."""
        if ids is None:
            ids = [i for i in self.hypotheses if i not in self.results]
        for i in ids:
            if i not in self.hypotheses:
                raise ValueError(f"no hypothesis {i!r} is registered (registered: "
                                 f"{sorted(self.hypotheses)})")
        cfg = self.config
        plans = [self._plans[i] for i in ids]
        self._check_family(ids)
        for i in ids:
            os.makedirs(self._dir(i), exist_ok=True)
            dump_lab_file(os.path.join(self._dir(i), "hypothesis.yaml"),
                          cfg.replace(max_parallel_experiments=1, storage=None),
                          [self._portable(self.hypotheses[i])])
        for exp in {id(p.experiment): p.experiment for p in plans}.values():
            kind = cfg.device.split(":")[0]
            if kind != "auto" and kind not in exp.devices:
                warnings.warn(f"experiment {exp.name!r} runs on {' / '.join(exp.devices)} only "
                              f"in this version: device={cfg.device!r} is not used by it",
                              stacklevel=2)
        log = print if cfg.verbose else None
        execute(self.storage, plans, cfg.max_parallel_experiments, cfg.device,
                os.path.join(cfg.results_dir, "work"), cfg.threads_per_worker,
                cfg.poll_seconds, log)
        for i, plan in zip(ids, plans):
            h = self.hypotheses[i]
            self.results[i] = analyse(h, plan.control, list(plan.arms), plan.metric,
                                      plan.direction, load(self.storage, plan),
                                      cfg.n_resamples, cfg.bootstrap_seed)
        apply_correction(list(self.results.values()), cfg.correction)
        for i, r in self.results.items():
            write_json(os.path.join(self._dir(i), "result.json"), r)
        return {i: self.results[i] for i in ids}

    def _check_family(self, ids: list[str]) -> None:
        """The α guard across the run: under Holm nothing is rejected unless the smallest p is
        at most alpha / m (m: every comparison of the lab's results and of this run), so a
        run whose hypotheses — those of this run and those already in the lab's family, whose
        verdicts the correction recomputes — cannot give such a p is refused before anything
        runs."""
        hids = list(dict.fromkeys([*self.results, *ids]))
        m = sum(len(self._plans[i].arms) - 1 for i in hids)
        if self.config.correction != "holm":
            return
        for i in hids:
            h = self.hypotheses[i]
            if min_wilcoxon_p(h.seeds) * m > h.alpha:
                raise ValueError(
                    f"hypothesis {i!r}: with {m} comparisons corrected by Holm, p must reach "
                    f"alpha / {m} = {h.alpha / m:.3g}, but with {h.seeds} seeds the exact "
                    f"two-sided Wilcoxon p is never below {min_wilcoxon_p(h.seeds):.3g}; use "
                    f"at least {pairs_needed(h.alpha / m)} seeds (or fewer comparisons)")

    def _portable(self, h: Hypothesis) -> Hypothesis:
        """``h`` with its experiment named so that `morpho lab run` finds it again."""
        exp = self._plans[h.id].experiment
        name = exp.name if EXPERIMENTS.get(exp.name) is exp else exp.source()
        return h.replace(experiment=name)

    # -- insights and the report
    def extract_insights(self, register_follow_ups: bool = True) -> list[dict]:
        """The significant effects of the results so far, largest |Hedges' g| first, each
        with the id of the follow-up hypothesis proposed for its hypothesis (by
        `morphonet.lab.analysis.FOLLOW_UP_RULE`; registered, runnable with
        `run_hypothesis_test`) or None."""
        insights = rank_insights(list(self.results.values()))
        proposed: dict[str, Optional[str]] = {}
        for hid, r in self.results.items():
            f = follow_up(self.hypotheses[hid], r, self._plans[hid].arms)
            if f is None:
                continue
            proposed[hid] = f.id
            if register_follow_ups and f.id not in self.hypotheses:
                self.register_hypothesis(f)
                self.follow_ups.append(f.id)
        for x in insights:
            x["follow_up"] = proposed.get(x["hypothesis"])
        return insights

    def command(self, hid: str) -> str:
        """The command that reproduces hypothesis ``hid``."""
        src = self._sources.get(hid)
        out = self.config.results_dir
        if src:
            return f"morpho lab run {src} --hypothesis {hid} --results-dir {out}"
        return f"morpho lab run {os.path.join(self._dir(hid), 'hypothesis.yaml')}"

    def generate_report(self, path: Optional[str] = None) -> str:
        """Write the markdown report (``<results_dir>/report.md`` unless ``path``) with the
        tables, effect plots with intervals and each hypothesis' reproducing command; returns
        its text."""
        path = path or os.path.join(self.config.results_dir, "report.md")
        entries = [{"hypothesis": self.hypotheses[i], "result": r, "command": self.command(i),
                    "experiment": self._portable(self.hypotheses[i]).experiment}
                   for i, r in self.results.items()]
        follow = [self.hypotheses[f] for f in self.follow_ups]
        return render_report(path, entries, rank_insights(list(self.results.values())),
                             follow, self.config.correction)

    def summary(self) -> str:
        """One line per comparison (the statements of the results)."""
        return "\n".join(f"{hid}: {c['statement']}" for hid, r in self.results.items()
                         for c in r["comparisons"])

