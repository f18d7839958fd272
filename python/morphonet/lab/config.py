"""The lab's settings and its hypotheses: `LabConfig`, `Hypothesis`, `HypothesisCategory`.

Both are `morphonet.config.Config` dataclasses (validated on construction, ``to_dict`` /
``from_dict``), so a hypothesis file (TOML or YAML) is read by ``from_dict`` with unknown keys
named, and a hypothesis is written back by the lab as the exact design it ran.
"""

from __future__ import annotations

import enum
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..checks import check_device, check_instance, check_real
from ..config import Config, flag, ints, one_of, reals, setting
from ..stats import CORRECTIONS, min_wilcoxon_p, pairs_needed

__all__ = ["DIRECTIONS", "Hypothesis", "HypothesisCategory", "LabConfig"]

DIRECTIONS = ("maximize", "minimize")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class HypothesisCategory(str, enum.Enum):
    """What a hypothesis is about (the seed's categories; a ``str`` enum, so it is written to
    JSON / TOML as its value). `GROWTH_DYNAMICS` and `SPARSITY` have a default experiment
    (`morphonet.lab.experiments.CATEGORY_DEFAULTS`); the others need ``experiment=``."""

    ARCHITECTURE = "architecture"
    GROWTH_DYNAMICS = "growth_dynamics"
    SPARSITY = "sparsity"
    TRAINING_DYNAMICS = "training_dynamics"
    OPTIMIZATION = "optimization"
    REGULARIZATION = "regularization"
    EFFICIENCY = "efficiency"
    SYNTHETIC = "synthetic"


def _category(name: str, v: Any) -> HypothesisCategory:
    if isinstance(v, HypothesisCategory):
        return v
    values = [c.value for c in HypothesisCategory]
    if isinstance(v, str):
        key = v.lower()
        for c in HypothesisCategory:
            if key in (c.value, c.name.lower()):
                return c
    raise ValueError(f"{name} must be a HypothesisCategory or one of {values}, got {v!r}")


def _name(name: str, v: Any) -> str:
    check_instance(name, v, str)
    if not _NAME.match(v):
        raise ValueError(f"{name} must be letters, digits, '_', '.' or '-' (it names files and "
                         f"the Optuna study), got {v!r}")
    return v


def _text(name: str, v: Any) -> str:
    return check_instance(name, v, str)


def _optional_name(name: str, v: Any) -> Optional[str]:
    return None if v is None else check_instance(name, v, str)


def _arms(name: str, v: Any) -> Optional[dict]:
    """None, or {arm name: {param: value}}."""
    if v is None:
        return None
    if not isinstance(v, dict) or not v:
        raise TypeError(f"{name} must be a non-empty dict {{arm: {{param: value}}}}, got {v!r}")
    for arm, params in v.items():
        _name(f"{name} key", arm)
        if not isinstance(params, dict):
            raise TypeError(f"{name}[{arm!r}] must be a dict of parameters, got {params!r}")
    return {k: dict(p) for k, p in v.items()}


def _space(name: str, v: Any) -> Optional[dict]:
    """None, or {param: [values...]} (every grid point becomes an arm; none is dropped)."""
    if v is None:
        return None
    if not isinstance(v, dict) or not v:
        raise TypeError(f"{name} must be a non-empty dict {{param: [values]}}, got {v!r}")
    out = {}
    for k, vals in v.items():
        if isinstance(vals, (str, bytes)) or not isinstance(vals, (list, tuple)) or not vals:
            raise ValueError(f"{name}[{k!r}] must be a non-empty list of values, got {vals!r}")
        if len({json.dumps(x, sort_keys=True) for x in vals}) != len(vals):
            raise ValueError(f"{name}[{k!r}] repeats a value: {list(vals)!r}")
        out[k] = list(vals)
    return out


def _params(name: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise TypeError(f"{name} must be a dict {{param: value}}, got {v!r}")
    return dict(v)


def arm_label(point: dict) -> str:
    """The name of a parameter-space arm: ``k=v`` joined by ``,`` (in the space's order)."""
    return ",".join(f"{k}={v}" for k, v in point.items())


@dataclass
class Hypothesis(Config):
    """One testable claim: arms (a named control and the treatments, or a parameter space
    whose every grid point is an arm) run by an experiment on the same seeds, compared on
    ``metric`` with the control, paired by seed.

    ``experiment``, ``arms`` / ``control``, ``metric`` and ``direction`` default to the
    category's experiment and its own defaults (resolved when the lab registers it);
    ``params`` are fixed for every arm (the budget: dataset, epochs, ...), an arm's own
    parameters override them. Seeds are ``first_seed .. first_seed + seeds - 1``: each is the
    data split and initialisation seed of one experiment per arm. ``alpha`` is the test's
    level (the interval's is 1 − alpha); ``min_effect`` the smallest difference of interest in
    the metric's units (intervals wholly inside ±min_effect say "negligible").

    A design that cannot reach ``alpha`` is refused: with n pairs the exact two-sided
    signed-rank p is never below 2·2⁻ⁿ (5 seeds: 0.0625)."""

    name: str = setting(check=_name)
    category: HypothesisCategory = setting(HypothesisCategory.ARCHITECTURE, _category)
    question: str = setting("", _text)
    prediction: str = setting("", _text)
    experiment: Optional[str] = setting(None, _optional_name)
    control: Optional[str] = setting(None, _optional_name)
    arms: Optional[dict] = setting(None, _arms)
    parameter_space: Optional[dict] = setting(None, _space)
    params: dict = setting(check=_params, factory=dict)
    metric: Optional[str] = setting(None, _optional_name)
    direction: Optional[str] = setting(None, lambda n, v: None if v is None
                                       else one_of(*DIRECTIONS)(n, v))
    seeds: int = setting(8, ints(1))
    first_seed: int = setting(0, ints(0))
    alpha: float = setting(0.05, reals(0, 1, lo_open=True, hi_open=True))
    min_effect: float = setting(0.0, reals(0))
    follow_up_of: str = setting("", _text)
    rule: str = setting("", _text)

    @property
    def id(self) -> str:
        """The hypothesis' id (its name: unique in a lab, stable across runs)."""
        return self.name

    def check(self) -> None:
        if min_wilcoxon_p(self.seeds) > self.alpha:
            raise ValueError(
                f"seeds={self.seeds} cannot reach alpha={self.alpha}: with {self.seeds} pairs "
                f"the exact two-sided Wilcoxon p is never below "
                f"{min_wilcoxon_p(self.seeds):.4g}; use at least {pairs_needed(self.alpha)} "
                f"seeds")
        names = set(self.arms or {}) | set(self.grid_arms())
        if self.arms and self.parameter_space and len(names) < len(self.arms) + len(
                self.grid_arms()):
            raise ValueError("an arm of arms has the name of a parameter_space point")
        if self.control is not None and names and self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the arms {sorted(names)}")

    def grid_arms(self) -> dict[str, dict]:
        """The arms of ``parameter_space``: every point of the full grid (nothing is cut)."""
        if not self.parameter_space:
            return {}
        keys = list(self.parameter_space)
        points = [dict(zip(keys, vals))
                  for vals in itertools.product(*self.parameter_space.values())]
        return {arm_label(p): p for p in points}

    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


def _storage(name: str, v: Any) -> Optional[str]:
    return None if v is None else check_instance(name, v, str)


@dataclass
class LabConfig(Config):
    """The lab's settings (the seed's ``LabConfig``).

    - ``max_parallel_experiments``: worker processes on this machine (1: the experiments run
      in this process); each runs one experiment (an Optuna trial) at a time.
    - ``results_dir``: the report, per-hypothesis results and figures, and the embedded
      Optuna journal (``lab.journal``) unless ``storage`` says otherwise.
    - ``device``: passed to the experiments ("auto", "cpu", "cuda", "cuda:N"); the built-in
      experiments of this version run on the CPU and say so when another device is named.
    - ``storage``: None (the journal file in ``results_dir``), a journal file path, or an RDB
      URL (``postgresql://user@host/db``) that workers on several machines share.
    - ``correction``: "holm" (family-wise, the default) or "fdr_bh" across every comparison
      of the lab's hypotheses; "none" only for a single planned comparison.
    - ``n_resamples`` / ``bootstrap_seed``: the BCa bootstrap (fixed seed: same data, same
      interval, so a resumed run reports what an uninterrupted one does).
    - ``threads_per_worker``: torch threads in each worker process.
    - ``poll_seconds``: how often to look for trials other machines are running.
    """

    max_parallel_experiments: int = setting(1, ints(1))
    results_dir: str = setting("./nal_results", _text)
    device: str = setting("auto", check_device)
    storage: Optional[str] = setting(None, _storage)
    correction: str = setting("holm", one_of(*CORRECTIONS))
    n_resamples: int = setting(9999, ints(100))
    bootstrap_seed: int = setting(0, ints(0))
    threads_per_worker: int = setting(1, ints(1))
    poll_seconds: float = setting(2.0, lambda n, v: check_real(n, v, 0, lo_open=True))
    verbose: bool = setting(True, flag())
