"""`ComposableEvolutionSystem`: analyzers → strategies → trainers, every iteration.

One iteration of `ComposableEvolutionSystem.evolve_network`:

1. the context forgets last iteration's analysis batches (`NetworkContext.new_iteration`);
2. every analyzer's ``analyze(context)``; their dicts are merged (in order) into ``analysis``
   (kept as ``context.analysis`` and passed to every context hook with an ``observe``
   method, e.g. the extrema-phase learning rate);
3. every strategy, in order: when ``should_grow(context, analysis)``, ``grow`` changes the
   network; then the optimizer is made true to it (`sync_optimizer`) and the change of the
   network's output on the first analysis batch is measured (relative max change; with
   ``strict`` a change above ``tolerance`` raises `FunctionChangedError` naming the strategy);
4. every trainer's ``train(context)``;
5. a record goes to ``context.evolution_log``: the analysis (numbers only), the growth events
   (strategy, connections before / after, output change, optimizer sync counts), the
   network's stats, and the seconds spent analysing, growing and training (the bookkeeping
   share, as `morphonet.evolution.experiment` reports it, is (analysis + growth) seconds /
   training seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..checks import check_instance, check_int
from ..config import Config, flag, ints, reals, setting
from .interfaces import Analyzer, EvolutionComponent, GrowthStrategy, NetworkContext, NetworkTrainer
from .optim import sync_optimizer
from .trainer import network_groups

__all__ = ["ComposableEvolutionSystem", "EvolutionConfig", "FunctionChangedError",
           "output_change"]


class FunctionChangedError(RuntimeError):
    """A strategy changed the network's output by more than the tolerance."""


@dataclass
class EvolutionConfig(Config):
    """Settings of the evolution system: the function check after every change."""

    check_function: bool = setting(True, flag())
    tolerance: float = setting(1e-5, reals(0))
    strict: bool = setting(False, flag())
    probe_batches: int = setting(1, ints(1))


@torch.no_grad()
def _outputs(net: torch.nn.Module, batches: list) -> list[torch.Tensor]:
    was = net.training
    net.eval()
    try:
        return [net(x).detach().clone() for x, _ in batches]
    finally:
        net.train(was)


def output_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """max |after − before| / max |before| over the batches (0 when both are 0)."""
    num = max(float((a - b).abs().max()) for a, b in zip(after, before))
    den = max(float(b.abs().max()) for b in before)
    return num / den if den > 0 else num


def _numbers(d: dict) -> dict:
    """The JSON-safe scalar entries of an analysis (lists of numbers kept)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            out[k] = list(v)
    return out


class ComposableEvolutionSystem:
    """The seed's composable evolution system: ``add_component`` (an `Analyzer`, a
    `GrowthStrategy` or a `NetworkTrainer`) and ``evolve_network(context, num_iterations)``
    (module docstring). ``config``: an `EvolutionConfig` (keywords are its fields)."""

    def __init__(self, config: Optional[EvolutionConfig] = None, **settings: Any):
        check_instance("config", config, EvolutionConfig, optional=True)
        self.config = config.replace(**settings) if config else EvolutionConfig(**settings)
        self.analyzers: list[Analyzer] = []
        self.strategies: list[GrowthStrategy] = []
        self.trainers: list[NetworkTrainer] = []

    def add_component(self, component: EvolutionComponent) -> ComposableEvolutionSystem:
        """Add an analyzer, strategy or trainer (kept in the order added); returns self."""
        for kind, where in ((Analyzer, self.analyzers), (GrowthStrategy, self.strategies),
                            (NetworkTrainer, self.trainers)):
            if isinstance(component, kind):
                where.append(component)
                return self
        raise TypeError(f"component must be an Analyzer, GrowthStrategy or NetworkTrainer, "
                        f"got {type(component).__name__}")

    @property
    def components(self) -> list[EvolutionComponent]:
        """Every component, analyzers first, then strategies, then trainers."""
        return [*self.analyzers, *self.strategies, *self.trainers]

    def analyze(self, context: NetworkContext) -> dict:
        """Every analyzer's metrics, merged in order."""
        analysis: dict = {}
        for a in self.analyzers:
            analysis.update(a.analyze(context))
        return analysis

    def grow(self, context: NetworkContext, analysis: dict) -> tuple[NetworkContext, list]:
        """Run every strategy that wants to grow; returns the context and the events."""
        c, events = self.config, []
        for s in self.strategies:
            if not s.should_grow(context, analysis):
                continue
            net = context.network
            probe = context.analysis_batches(c.probe_batches) if c.check_function else []
            before = _outputs(net, probe) if probe else []
            n0 = _connections(net)
            context = s.grow(context, analysis)
            net = context.network
            sync = (sync_optimizer(context.optimizer, network_groups(net))
                    if context.optimizer is not None else None)
            change = output_change(before, _outputs(net, probe)) if probe else None
            events.append({"strategy": s.name, "connections_before": n0,
                           "connections_after": _connections(net), "output_change": change,
                           "optimizer_sync": sync})
            if c.strict and change is not None and change > c.tolerance:
                raise FunctionChangedError(f"{s.name} changed the network's output by "
                                           f"{change:.3g} (relative), above the tolerance "
                                           f"{c.tolerance:g}")
        return context, events

    def evolve_network(self, context: NetworkContext, num_iterations: int = 1, *,
                       in_place: bool = False) -> NetworkContext:
        """``num_iterations`` iterations of analyse → grow → train (module docstring).
        Returns the evolved context: a copy (`NetworkContext.copy`), so that ``context``
        still holds the network as it was (the seed's quick start compares the two), or
        ``context`` itself, changed, with ``in_place=True``."""
        check_instance("context", context, NetworkContext)
        check_int("num_iterations", num_iterations, 1)
        if not in_place:
            context = context.copy()
        for _ in range(num_iterations):
            context.new_iteration()
            if hasattr(context.network, "iteration"):
                context.network.iteration = context.iteration
                context.network.epoch = context.epoch
            t0 = time.perf_counter()
            analysis = self.analyze(context)
            context.analysis = analysis
            for h in context.hooks:  # e.g. the extrema-phase learning rate reads the analysis
                if hasattr(h, "observe"):
                    h.observe(analysis)
            t1 = time.perf_counter()
            context, events = self.grow(context, analysis)
            t2 = time.perf_counter()
            trained = [tr.train(context) for tr in self.trainers]
            t3 = time.perf_counter()
            rec = {"iteration": context.iteration, "analysis": _numbers(analysis),
                   "events": events, "connections": _connections(context.network),
                   "analysis_s": t1 - t0, "growth_s": t2 - t1, "train_s": t3 - t2,
                   "val_acc": (trained[-1]["last"].get("val_acc") if trained else None)}
            if hasattr(context.network, "get_network_stats"):
                rec["architecture"] = context.network.get_network_stats()["architecture"]
            context.evolution_log.append(rec)
            context.iteration += 1
        return context


def _connections(net: torch.nn.Module) -> Optional[int]:
    if hasattr(net, "get_network_stats"):
        return net.get_network_stats()["total_connections"]
    return None
