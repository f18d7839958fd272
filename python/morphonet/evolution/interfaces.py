"""The seed's interfaces: `NetworkContext` (what every component reads and changes),
`Analyzer`, `GrowthStrategy` and `NetworkTrainer` (import names
``structure_net.evolution.interfaces`` and ``structure_net.evolution.components``).

A component subclasses one of the three and implements its abstract methods; the
`ComposableEvolutionSystem` calls analyzers, then strategies (``should_grow`` → ``grow``),
then trainers, every iteration.
"""

from __future__ import annotations

import copy as _copy
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..checks import check_instance, check_int
from ..loop import batch_ranges

__all__ = ["Analyzer", "EvolutionComponent", "GrowthStrategy", "NetworkContext",
           "NetworkTrainer"]

Batches = Union[tuple[Tensor, Tensor], Iterable[tuple[Tensor, Tensor]]]


def _as_pair(data: Any, name: str) -> Optional[tuple[Tensor, Tensor]]:
    """Validation data as one (x, y) pair of tensors (an iterable of batches is
    concatenated)."""
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data
    try:
        xs, ys = zip(*((x, y) for x, y in data))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an (x, y) pair of tensors or an iterable of (x, y) "
                        f"batches") from e
    return torch.cat(xs), torch.cat(ys)


class NetworkContext:
    """What the evolution components share: the seed's ``NetworkContext(network,
    train_loader, device)``, plus the held-out validation data, the optimizer (kept true
    by the system and the trainers after every change), the training history and the
    evolution log.

    Args:
        network: the network being evolved (an `EvolvableNetwork` for the built-in
            strategies; analyzers and trainers take any ``nn.Module``).
        train_loader: training batches: any iterable of (x, y) batches (a DataLoader) or an
            (x, y) pair of tensors (then batched and shuffled by the training loop).
        device: where the network trains (default CPU).
        val_data: held-out validation data, an (x, y) pair or an iterable of batches; never
            the training batches. Without it the records have no ``val_acc``.
        optimizer: an optimizer over the network (default: the first trainer builds one).
        seed: seed of the shuffling generator (tensor training data).
        batch_size: rows per analysis batch when ``train_loader`` is a tensor pair.
    """

    def __init__(self, network: nn.Module, train_loader: Batches,
                 device: Union[str, torch.device, None] = None, *, val_data: Any = None,
                 optimizer: Optional[torch.optim.Optimizer] = None, seed: int = 0,
                 batch_size: int = 64):
        self.network = check_instance("network", network, nn.Module)
        if train_loader is None:
            raise TypeError("train_loader must be an iterable of (x, y) batches or an (x, y) "
                            "pair of tensors, got None")
        self.train_loader = train_loader
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.val_data = _as_pair(val_data, "val_data")
        self.optimizer = check_instance("optimizer", optimizer, torch.optim.Optimizer,
                                        optional=True)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.generator = torch.Generator().manual_seed(check_int("seed", seed, 0))
        self.history: list[dict[str, Any]] = []  # one record per training epoch
        self.evolution_log: list[dict[str, Any]] = []  # one record per evolution iteration
        self.epoch = 0
        self.iteration = 0
        self.hooks: list = []  # extra TrainLoop hooks every trainer adds (e.g. LR rules)
        self.analysis: dict = {}  # the current iteration's merged analysis
        self._cache: list[tuple[Tensor, Tensor]] = []
        self._it: Optional[Iterator] = None

    def _iter_train(self) -> Iterator[tuple[Tensor, Tensor]]:
        d = self.train_loader
        if isinstance(d, tuple) and len(d) == 2 and all(isinstance(t, Tensor) for t in d):
            return iter([(d[0][i:j], d[1][i:j]) for i, j in batch_ranges(d[0].shape[0],
                                                                          self.batch_size)])
        return iter(d)

    def analysis_batches(self, max_batches: int) -> list[tuple[Tensor, Tensor]]:
        """Up to ``max_batches`` training batches on the device, the same ones for every
        analyzer, strategy and function check of one iteration (drawn once; `new_iteration`
        forgets them)."""
        check_int("max_batches", max_batches, 1)
        if self._it is None:
            self._it = self._iter_train()
        while len(self._cache) < max_batches:
            try:
                x, y = next(self._it)
            except StopIteration:
                break
            self._cache.append((x.to(self.device), y.to(self.device)))
        if not self._cache:
            raise ValueError("train_loader gave no batch")
        return self._cache[:max_batches]

    def new_iteration(self) -> None:
        """Forget the cached analysis batches (the system calls it at each iteration)."""
        self._cache, self._it = [], None

    def copy(self) -> NetworkContext:
        """An independent copy: the network, the optimizer and the hooks deep-copied together
        (the optimizer holds the copy's parameters, with their state), the history and logs
        copied; the training and validation data shared."""
        new = _copy.copy(self)
        new.network, new.optimizer, new.hooks = _copy.deepcopy(
            (self.network, self.optimizer, self.hooks))
        new.history, new.evolution_log = _copy.deepcopy((self.history, self.evolution_log))
        new.analysis = dict(self.analysis)
        new.generator = torch.Generator().set_state(self.generator.get_state())
        new._cache, new._it = [], None
        return new

    @property
    def performance(self) -> Optional[float]:
        """The last epoch's validation accuracy (None before training or without
        validation data)."""
        return self.history[-1].get("val_acc") if self.history else None


class EvolutionComponent(ABC):  # noqa: B024 (a marker base: no abstract method of its own)
    """Base of analyzers, strategies and trainers: a ``name`` (the class name by
    default)."""

    @property
    def name(self) -> str:
        """The component's name in records."""
        return type(self).__name__


class Analyzer(EvolutionComponent):
    """Looks at the network and returns metrics (a flat dict; the system merges the dicts of
    every analyzer into the ``analysis`` the strategies read)."""

    @abstractmethod
    def analyze(self, context: NetworkContext) -> dict:
        """Metrics of ``context.network`` (may read ``context.analysis_batches``)."""


class GrowthStrategy(EvolutionComponent):
    """Changes the network where the analysis says: ``should_grow`` decides, ``grow``
    changes ``context.network`` (through the network's edits, passing
    ``context.optimizer``) and returns the context."""

    @abstractmethod
    def should_grow(self, context: NetworkContext, analysis: dict) -> bool:
        """Whether to change the network now."""

    @abstractmethod
    def grow(self, context: NetworkContext, analysis: dict) -> NetworkContext:
        """Change the network; return the (updated) context."""


class NetworkTrainer(EvolutionComponent):
    """Trains ``context.network`` (through `morphonet.loop.TrainLoop`) and returns a
    summary."""

    @abstractmethod
    def train(self, context: NetworkContext) -> dict:
        """Train; append one record per epoch to ``context.history``."""
