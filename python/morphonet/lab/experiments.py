"""What a hypothesis runs: experiments, each one run = one arm at one seed.

An `Experiment` is a function ``run(params, seed, context) -> {metric: value}`` with its
default arms, control, metric, direction and budget. The built-in ones call the package's
systems through their public functions, at a small budget:

- ``growth``: Structure Net's extrema-driven growth (`morphonet.growth.experiment.run_structure`)
  against RigL / SET / static sparse training (`run_peer`) given the structure net's final
  number of connections at the same seed ("at equal connections");
- ``masks``: MorphoNet Pro's learned masks (`morphonet.masks.compare.run_morphonet`) at one
  target sparsity, e.g. block-32 masks against element masks at equal density;
- ``synthetic``: a metric drawn from a known distribution (no training), for the lab's
  self-validation: base + seed effect + the arm's ``effect`` + noise.

A user experiment: `register_experiment` (``Experiment(name, run, ...)``), or in a hypothesis
file ``experiment = "package.module:function"`` (then the hypothesis names its arms, control
and metric).
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from ..files import read_json, write_json
from .config import HypothesisCategory

__all__ = ["CATEGORY_DEFAULTS", "EXPERIMENTS", "Experiment", "RunContext", "get_experiment",
           "register_experiment"]


@dataclass(frozen=True)
class RunContext:
    """What an experiment's run knows besides its parameters and seed: the arm's name, the
    lab's device setting and a work directory shared by the runs of one results_dir."""

    arm: str
    device: str
    workdir: str


@dataclass(frozen=True)
class Experiment:
    """A named experiment: ``run(params, seed, context)`` returns the metrics of one arm at
    one seed (a dict of numbers). ``arms`` / ``control`` / ``metric`` / ``direction`` /
    ``params`` are what a hypothesis gets when it names none."""

    name: str
    run: Callable[[dict, int, RunContext], dict]
    arms: dict = field(default_factory=dict)
    control: Optional[str] = None
    metric: Optional[str] = None
    direction: str = "maximize"
    params: dict = field(default_factory=dict)
    description: str = ""
    devices: tuple = ("cpu", "cuda")   # device types run() can use (the lab warns otherwise)

    def source(self) -> str:
        """``module:function`` of ``run`` when importable by that name (the reproducing
        command can then name it), else the registered name."""
        mod = getattr(self.run, "__module__", None)
        qual = getattr(self.run, "__qualname__", "")
        if mod and mod != "__main__" and "<" not in qual:
            return f"{mod}:{qual}"
        return self.name


EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(exp: Experiment, replace: bool = False) -> Experiment:
    """Make ``exp`` available by its name to hypotheses (``experiment=name``)."""
    if not isinstance(exp, Experiment):
        raise TypeError(f"exp must be an Experiment, got {type(exp).__name__}")
    if exp.name in EXPERIMENTS and not replace and EXPERIMENTS[exp.name] is not exp:
        raise ValueError(f"an experiment named {exp.name!r} is registered already "
                         f"(replace=True to replace it)")
    EXPERIMENTS[exp.name] = exp
    return exp


def get_experiment(name: str) -> Experiment:
    """A registered experiment, or ``package.module:function`` imported (an experiment
    without defaults)."""
    if name in EXPERIMENTS:
        return EXPERIMENTS[name]
    if ":" in name:
        mod, _, fn = name.partition(":")
        try:
            obj: Any = importlib.import_module(mod)
            for part in fn.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"experiment {name!r} cannot be imported: {e}") from e
        if isinstance(obj, Experiment):
            return obj
        if not callable(obj):
            raise TypeError(f"experiment {name!r} is not callable")
        return Experiment(name, obj)
    raise ValueError(f"unknown experiment {name!r}; registered: {sorted(EXPERIMENTS)} (or "
                     f"'package.module:function')")


# ---------------------------------------------------------------------------- synthetic


def _synthetic(params: dict, seed: int, ctx: RunContext) -> dict:
    """base + seed_sd·z(seed) + effect + noise·z(seed, arm): the seed term is shared by every
    arm (pairing removes it), the noise is the arm's own (its stream is keyed by the arm's
    name, so two identical arms still differ by noise)."""
    import numpy as np

    known = {"base", "effect", "noise", "seed_sd", "sleep", "fail_seed"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"synthetic experiment: unknown params {unknown} (known: "
                         f"{sorted(known)})")
    if params.get("fail_seed") == seed:
        raise RuntimeError(f"synthetic experiment: planted failure at seed {seed}")
    shared = np.random.default_rng([seed, 0]).standard_normal()
    own = np.random.default_rng([seed, 1, zlib.crc32(ctx.arm.encode())]).standard_normal()
    if params.get("sleep"):
        time.sleep(float(params["sleep"]))
    value = (float(params.get("base", 0.5)) + float(params.get("seed_sd", 0.02)) * shared
             + float(params.get("effect", 0.0)) + float(params.get("noise", 0.01)) * own)
    return {"value": value}


SYNTHETIC = register_experiment(Experiment(
    "synthetic", _synthetic,
    arms={"a": {}, "b": {}}, control="a", metric="value", direction="maximize",
    params={"base": 0.5, "effect": 0.0, "noise": 0.01, "seed_sd": 0.02},
    description="a known distribution, no training (the lab's self-validation)"))


# ---------------------------------------------------------------------------- growth

_GROW_KEYS = {"dataset", "epochs", "hidden", "activation", "sparsity", "batch_size", "lr",
              "method", "connections"}


def _grow_config(params: dict):
    from ..growth.experiment import GrowExperimentConfig

    ds = params.get("dataset", "digits")
    kw = {k: params[k] for k in ("hidden", "activation", "sparsity", "batch_size", "lr")
          if k in params}
    if "hidden" in kw:
        kw["hidden"] = tuple(kw["hidden"])
    return GrowExperimentConfig(datasets=(ds,), seeds=1, device="cpu",
                                epochs={ds: int(params.get("epochs", 15))}, **kw)


def _structure_connections(params: dict, seed: int, ctx: RunContext, ds, cfg) -> int:
    """The final number of connections of the structure net at this seed and budget (the
    peers' budget), cached in the work directory: the structure arm writes it, a peer arm
    that runs first trains the (deterministic) structure net itself."""
    from ..growth.experiment import run_structure

    path = _connections_file(params, seed, ctx)
    if os.path.exists(path):
        return int(read_json(path)["connections"])
    with tempfile.TemporaryDirectory() as snaps:
        r = run_structure(ds, seed, cfg, snaps)
    write_json(path, {"connections": r["connections"], "seed": seed})
    return int(r["connections"])


def _connections_file(params: dict, seed: int, ctx: RunContext) -> str:
    """Where the structure net's final connection count at (budget, seed) is cached."""
    key = sorted((k, repr(v)) for k, v in params.items() if k not in ("method", "connections"))
    os.makedirs(ctx.workdir, exist_ok=True)
    return os.path.join(ctx.workdir,
                        f"growth-connections-{zlib.crc32(repr(key).encode()):08x}-s{seed}.json")


def _growth(params: dict, seed: int, ctx: RunContext) -> dict:
    """One Structure Net (``method="structure"``) or one peer (``rigl`` / ``set`` /
    ``static``) with ``connections`` connections (``"matched"``: the structure net's final
    count at this seed), on the same split, seed and budget."""
    import torch

    from ..data import load_dataset
    from ..growth.experiment import run_peer, run_structure

    unknown = sorted(set(params) - _GROW_KEYS)
    if unknown:
        raise ValueError(f"growth experiment: unknown params {unknown} (known: "
                         f"{sorted(_GROW_KEYS)})")
    cfg = _grow_config(params)
    ds = load_dataset(cfg.datasets[0], seed)
    method = params.get("method", "structure")
    torch.manual_seed(seed)
    if method == "structure":
        with tempfile.TemporaryDirectory() as snaps:
            r = run_structure(ds, seed, cfg, snaps)
        write_json(_connections_file(params, seed, ctx), {"connections": r["connections"],
                                                          "seed": seed})
    else:
        total = params.get("connections", "matched")
        if total == "matched":
            total = _structure_connections(params, seed, ctx, ds, cfg)
        r = run_peer(ds, seed, method, int(total), cfg)
    return {"test_acc": float(r["test_acc"]), "val_acc": float(r["val_acc"]),
            "connections": int(r["connections"]), "connectivity": float(r["connectivity"]),
            "train_s": float(r["train_s"])}


GROWTH = register_experiment(Experiment(
    "growth", _growth,
    arms={"structure": {"method": "structure"}, "rigl": {"method": "rigl"}},
    control="rigl", metric="test_acc", direction="maximize",
    params={"dataset": "digits", "epochs": 15, "connections": "matched"},
    description="Structure Net growth vs RigL / SET / static at the structure net's final "
                "number of connections (morphonet.growth.experiment)", devices=("cpu",)))


# ---------------------------------------------------------------------------- masks

_CASE_KEYS = {"dataset", "arch", "hidden_dims", "target_sparsity", "epochs"}


def _masks(params: dict, seed: int, ctx: RunContext) -> dict:
    """One MorphoNet Pro model trained to ``target_sparsity``; every parameter that is not a
    `morphonet.masks.compare.Case` field is a `MorphoConfig` field (``mask_granularity``,
    ``block_size``, ...)."""
    from ..data import load_dataset
    from ..masks.compare import Case, run_morphonet

    case = Case(**{k: params[k] for k in _CASE_KEYS if k in params},
                config={k: v for k, v in params.items() if k not in _CASE_KEYS})
    data = load_dataset(case.dataset, seed)
    r = run_morphonet(case, data, seed)
    return {"test_acc": float(r.test_acc), "val_acc": float(r.val_acc),
            "weights": int(r.weights), "density": r.weights / r.dense_weights,
            "seconds": float(r.seconds)}


MASKS = register_experiment(Experiment(
    "masks", _masks,
    arms={"element": {"mask_granularity": "element"},
          "block32": {"mask_granularity": "block", "block_size": 32}},
    control="element", metric="test_acc", direction="maximize",
    params={"dataset": "digits", "arch": "mlp", "hidden_dims": [128, 64],
            "target_sparsity": 0.75, "epochs": 15},
    description="MorphoNet Pro learned masks at one target sparsity "
                "(morphonet.masks.compare.run_morphonet)", devices=("cpu",)))


# The experiment a hypothesis of a category runs when it names none.
CATEGORY_DEFAULTS: dict[HypothesisCategory, str] = {
    HypothesisCategory.GROWTH_DYNAMICS: "growth",
    HypothesisCategory.SPARSITY: "masks",
    HypothesisCategory.SYNTHETIC: "synthetic",
}
