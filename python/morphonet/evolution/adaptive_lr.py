"""Adaptive learning rates over parameter groups (the seed's rules, NOTES.md; formulas below).

Every rule is a scheduler over an optimizer's parameter groups with the torch interface
(``step(epoch)``, ``get_last_lr()``, ``state_dict()`` / ``load_state_dict()``) and a
`morphonet.loop.Hook` (``on_epoch_start`` binds the loop's first optimizer and model and calls
``step(epoch)``): add it to ``NetworkContext.hooks`` and every trainer applies it. Groups may
come and go as the network grows: each epoch the rule reads the groups as they are. A group's
learning rate is

    lr_g = base_g · factor(info_g),     base_g = ``base_lr``, else the group's ``initial_lr``
                                        (its lr when first seen)

where ``info_g`` holds ``epoch``, ``depth`` (stage index / (stages − 1), in [0, 1]), ``age``
(epochs since the layer was made), ``size`` (live connections + biases) and ``extrema_rate``
(the last analysis' share of dead + saturated neurons, passed in by ``observe(analysis)``,
which the evolution system calls every iteration). For groups of a module without
`EvolvableNetwork.units`, depth is the group's position and age the epoch.

* `ExtremaPhaseScheduler`: 1 if extrema_rate > high (0.3), 0.1 if > low (0.1), else 0.01.
* `GrowthPhaseScheduler` (seed name): rates 0.1 / 0.01 / 0.001 switching at epochs 20 / 50.
* `ExponentialBackoffScheduler` (seed name): gamma^epoch, gamma = 0.95.
* `LayerwiseAdaptiveRates` (seed name): depth thirds at 0.02 / 0.01 / 0.005.
* `LayerAgeAwareScheduler`: (0.1 + 0.9·depth) · exp(−age / 50).
* `ScaleDependentScheduler`: (median size / size)^power, power 0.5.
* `SoftClampingScheduler`: no factor; lr ← max_lr · tanh(lr / max_lr).
* `UnifiedAdaptiveLearning` (seed name): Π of its rules' factors, then their clamps.

The seed named the extrema-phase thresholds, the scale-dependent rule and the soft clamp
without formulas: the thresholds (0.3 / 0.1), the median-relative size rule and the tanh clamp
are ours. Absolute rates (growth-phase, layer-wise) are factors of their first rate, with that
rate as the default base, so alone they give exactly the seed's rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import nn

from ..checks import check_fraction, check_instance, check_int, check_real
from ..loop import Hook, TrainLoop

__all__ = ["AdaptiveScheduler", "ExponentialBackoffScheduler", "ExtremaPhaseScheduler",
           "GrowthPhaseScheduler", "LayerAgeAwareScheduler", "LayerwiseAdaptiveRates",
           "ScaleDependentScheduler", "SoftClampingScheduler", "UnifiedAdaptiveLearning"]


class AdaptiveScheduler(Hook):
    """Base of the rules (module docstring): subclasses define ``factor(info)`` and may
    define ``clamp(lr)``.

    Args:
        optimizer: the optimizer whose groups it sets (or bound later by the training loop).
        network: the model (for depth, age and size; bound by the loop when absent).
        base_lr: one base for every group (default: each group's ``initial_lr``).
    """

    default_base: Optional[float] = None

    def __init__(self, optimizer: Optional[torch.optim.Optimizer] = None,
                 network: Optional[nn.Module] = None, base_lr: Optional[float] = None):
        self.optimizer = check_instance("optimizer", optimizer, torch.optim.Optimizer,
                                        optional=True)
        self.network = check_instance("network", network, nn.Module, optional=True)
        base = self.default_base if base_lr is None else base_lr
        self.base_lr = check_real("base_lr", base, 0, lo_open=True, optional=True)
        self.extrema_rate = 0.0
        self.last_epoch = -1
        self._last_lr: list[float] = []

    # -- the rule
    def factor(self, info: dict[str, Any]) -> float:
        """The group's multiplier (1 in the base)."""
        return 1.0

    def clamp(self, lr: float) -> float:
        """The final learning rate from ``base · factor`` (identity in the base)."""
        return lr

    # -- inputs
    def observe(self, analysis: dict) -> None:
        """Take the extrema rate of an analysis (``extrema_ratio``), when it has one."""
        if "extrema_ratio" in analysis:
            self.extrema_rate = float(analysis["extrema_ratio"])

    def infos(self, epoch: int) -> list[dict[str, Any]]:
        """``info`` of every parameter group (module docstring)."""
        groups = self.optimizer.param_groups
        units = self.network.units() if hasattr(self.network, "units") else {}
        out = []
        for i, g in enumerate(groups):
            u = units.get(g.get("name"))
            if u is None:
                u = {"depth": i / max(1, len(groups) - 1), "birth": 0,
                     "size": sum(p.numel() for p in g["params"])}
            out.append({"name": g.get("name"), "epoch": epoch, "depth": u["depth"],
                        "age": max(0, epoch - u["birth"]), "size": u["size"],
                        "extrema_rate": self.extrema_rate, "sizes": None})
        sizes = [x["size"] for x in out]
        for x in out:
            x["sizes"] = sizes
        return out

    # -- torch scheduler interface
    def step(self, epoch: Optional[int] = None) -> None:
        """Set every group's lr for ``epoch`` (default: the next one)."""
        if self.optimizer is None:
            raise RuntimeError("no optimizer: pass optimizer= or add the scheduler to a "
                               "training loop's hooks")
        epoch = self.last_epoch + 1 if epoch is None else check_int("epoch", epoch, 0)
        self.last_epoch = epoch
        self._last_lr = []
        for g, info in zip(self.optimizer.param_groups, self.infos(epoch)):
            g.setdefault("initial_lr", g["lr"])
            base = self.base_lr if self.base_lr is not None else g["initial_lr"]
            g["lr"] = self.clamp(base * self.factor(info))
            self._last_lr.append(g["lr"])

    def get_last_lr(self) -> list[float]:
        """The learning rates the last ``step`` set, per group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """The epoch and extrema rate (what an exact resume needs)."""
        return {"last_epoch": self.last_epoch, "extrema_rate": self.extrema_rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`."""
        self.last_epoch, self.extrema_rate = state["last_epoch"], state["extrema_rate"]

    # -- training-loop hook
    def on_epoch_start(self, loop: TrainLoop, epoch: int) -> None:
        """Bind the loop's first optimizer (and model, when unset), then ``step(epoch)``."""
        self.optimizer = loop.optimizers[0]
        if self.network is None:
            self.network = loop.model
        self.step(epoch)


class ExtremaPhaseScheduler(AdaptiveScheduler):
    """×1 while the extrema rate is above ``high``, ×0.1 above ``low``, ×0.01 below."""

    def __init__(self, high: float = 0.3, low: float = 0.1, **kw: Any):
        super().__init__(**kw)
        self.high, self.low = check_fraction("high", high), check_fraction("low", low)
        if self.low > self.high:
            raise ValueError(f"low ({low}) must be <= high ({high})")

    def factor(self, info: dict[str, Any]) -> float:
        """1 / 0.1 / 0.01 by the extrema rate."""
        r = info["extrema_rate"]
        return 1.0 if r > self.high else 0.1 if r > self.low else 0.01


class GrowthPhaseScheduler(AdaptiveScheduler):
    """``rates[k]`` from epoch ``boundaries[k-1]`` on (0.1 / 0.01 / 0.001 at 20 / 50), as
    factors of ``rates[0]`` (the default base)."""

    def __init__(self, rates: Sequence[float] = (0.1, 0.01, 0.001),
                 boundaries: Sequence[int] = (20, 50), **kw: Any):
        self.rates = tuple(check_real(f"rates[{i}]", r, 0, lo_open=True)
                           for i, r in enumerate(rates))
        self.boundaries = tuple(check_int(f"boundaries[{i}]", b, 0)
                                for i, b in enumerate(boundaries))
        if len(self.rates) != len(self.boundaries) + 1 or list(self.boundaries) != sorted(
                self.boundaries):
            raise ValueError("rates needs one entry more than boundaries, and boundaries "
                             "must increase")
        kw.setdefault("base_lr", self.rates[0])
        super().__init__(**kw)

    def factor(self, info: dict[str, Any]) -> float:
        """rates[phase] / rates[0]."""
        k = sum(info["epoch"] >= b for b in self.boundaries)
        return self.rates[k] / self.rates[0]


class ExponentialBackoffScheduler(AdaptiveScheduler):
    """``gamma ** epoch`` (0.95)."""

    def __init__(self, gamma: float = 0.95, **kw: Any):
        super().__init__(**kw)
        self.gamma = check_real("gamma", gamma, 0, 1, lo_open=True)

    def factor(self, info: dict[str, Any]) -> float:
        """gamma^epoch."""
        return self.gamma ** info["epoch"]


class LayerwiseAdaptiveRates(AdaptiveScheduler):
    """Depth thirds at ``rates`` (0.02 / 0.01 / 0.005), as factors of ``rates[0]`` (the
    default base): depth < 1/3 → first, < 2/3 → second, else third."""

    def __init__(self, rates: Sequence[float] = (0.02, 0.01, 0.005), **kw: Any):
        if len(rates) != 3:
            raise ValueError(f"rates must be 3 rates (early, middle, late), got {rates!r}")
        self.rates = tuple(check_real(f"rates[{i}]", r, 0, lo_open=True)
                           for i, r in enumerate(rates))
        kw.setdefault("base_lr", self.rates[0])
        super().__init__(**kw)

    def factor(self, info: dict[str, Any]) -> float:
        """rates[third] / rates[0]."""
        d = info["depth"]
        k = 0 if d < 1 / 3 else 1 if d < 2 / 3 else 2
        return self.rates[k] / self.rates[0]


class LayerAgeAwareScheduler(AdaptiveScheduler):
    """``(floor + (1 − floor)·depth) · exp(−age / tau)`` (floor 0.1, tau 50 epochs)."""

    def __init__(self, floor: float = 0.1, tau: float = 50.0, **kw: Any):
        super().__init__(**kw)
        self.floor = check_fraction("floor", floor)
        self.tau = check_real("tau", tau, 0, lo_open=True)

    def factor(self, info: dict[str, Any]) -> float:
        """(0.1 + 0.9·depth)·e^(−age/50)."""
        return (self.floor + (1 - self.floor) * info["depth"]) * math.exp(-info["age"] / self.tau)


class ScaleDependentScheduler(AdaptiveScheduler):
    """``(median size / size) ** power``: larger groups (more live connections) learn slower
    (power 0.5: as 1/√fan-in)."""

    def __init__(self, power: float = 0.5, **kw: Any):
        super().__init__(**kw)
        self.power = check_real("power", power, 0)

    def factor(self, info: dict[str, Any]) -> float:
        """(median / size)^power."""
        sizes = sorted(info["sizes"])
        n = len(sizes)
        median = (sizes[n // 2] + sizes[(n - 1) // 2]) / 2
        return (median / max(1, info["size"])) ** self.power


class SoftClampingScheduler(AdaptiveScheduler):
    """No factor; the learning rate is clamped softly below ``max_lr``:
    lr ← max_lr · tanh(lr / max_lr) (≈ lr when small)."""

    def __init__(self, max_lr: float = 0.1, **kw: Any):
        super().__init__(**kw)
        self.max_lr = check_real("max_lr", max_lr, 0, lo_open=True)

    def clamp(self, lr: float) -> float:
        """max_lr · tanh(lr / max_lr)."""
        return self.max_lr * math.tanh(lr / self.max_lr)


class UnifiedAdaptiveLearning(AdaptiveScheduler):
    """The product of its ``rules``' factors, then each rule's clamp in order; its own
    ``base_lr`` (default: the group's ``initial_lr``; the rules' own bases are not used)."""

    def __init__(self, rules: Sequence[AdaptiveScheduler], **kw: Any):
        if not isinstance(rules, (list, tuple)) or not rules:
            raise ValueError("rules must be a non-empty list of AdaptiveScheduler")
        for i, r in enumerate(rules):
            check_instance(f"rules[{i}]", r, AdaptiveScheduler)
        super().__init__(**kw)
        self.rules = list(rules)

    def observe(self, analysis: dict) -> None:
        """Pass the analysis to every rule."""
        super().observe(analysis)
        for r in self.rules:
            r.observe(analysis)

    def factor(self, info: dict[str, Any]) -> float:
        """Π rule.factor(info)."""
        out = 1.0
        for r in self.rules:
            out *= r.factor(info)
        return out

    def clamp(self, lr: float) -> float:
        """Every rule's clamp, in order."""
        for r in self.rules:
            lr = r.clamp(lr)
        return lr
