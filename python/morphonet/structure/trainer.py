"""MultiScaleNetwork: training with growth.

Each step: forward, backward, optimizer step, then bookkeeping: the gradient norm goes to the
GrowthScheduler. When the scheduler says a growth event is due (credits, cooldown, phase
budget), the ExtremaDetector gathers its window over the following steps (one sampled batch
every ``stride_steps``); on the step that completes the window the forward also keeps ∂L/∂z of
every layer, and right after that step the event happens: a snapshot of the network as trained
so far, extrema verdicts, routing / cloning scored with the dense gradients of that step's batch,
insertion with the live optimizer. Extrema are therefore measured right before each event and
cost nothing between events.

The optimizer created once before training keeps working: edge values live in each
SparseLinear's ``values`` Parameter, whose *object* never changes (growth swaps its ``.data``
and remaps the optimizer's per-edge moments, new edges start with zero moments); neurons are
pre-allocated slots switched on by an active mask, so no other parameter changes shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from .extrema import ExtremaConfig, ExtremaDetector
from .network import MinimalNetwork
from .router import ConnectionRouter, RouterConfig
from .scheduler import GrowthScheduler, SchedulerConfig
from .snapshots import SnapshotManager


def grad_norm(params) -> float:
    """L2 norm of all gradients (one number per step, what the scheduler watches). One fused
    per-tensor norm, then a host read per tensor: inside the training loop that is ~25 µs a
    step on the digits net (CPU), ~10 µs less than stacking the norms and reducing them on
    the tensor side (each extra op costs ~5 µs there, with cold caches after the step)."""
    grads = [p.grad.detach() for p in params if p.grad is not None and p.grad.numel()]
    if not grads:
        return 0.0
    return math.sqrt(sum(float(n) ** 2 for n in torch._foreach_norm(grads)))


class MultiScaleNetwork(nn.Module):
    """A MinimalNetwork with its growth machinery; ``network`` is the MinimalNetwork.

    Args:
        network: the MinimalNetwork to grow.
        scheduler, detector, router: growth pieces (defaults from their configs).
        snapshots: optional SnapshotManager (saves before each growth event and on a
            validation improvement of more than ``snapshots.min_improvement``).
        val_data: optional (x, y) validation tensors: evaluated after every epoch (snapshot
            decisions and the timeline use validation, never training batches).
    """

    def __init__(self, network: MinimalNetwork, scheduler: Optional[GrowthScheduler] = None,
                 detector: Optional[ExtremaDetector] = None,
                 router: Optional[ConnectionRouter] = None,
                 snapshots: Optional[SnapshotManager] = None,
                 val_data: Optional[tuple[Tensor, Tensor]] = None):
        super().__init__()
        if not isinstance(network, MinimalNetwork):
            raise TypeError(f"network must be a MinimalNetwork, got {type(network).__name__}")
        self.network = network
        self.scheduler = scheduler or GrowthScheduler()
        self.detector = detector or ExtremaDetector(network.activation)
        self.router = router or ConnectionRouter()
        self.snapshots = snapshots
        self.val_data = val_data
        self._pending = False  # a growth event is due: gathering its extrema window
        self.history: list[dict] = []
        self.growth_log: list[dict] = []
        self.timing = {"train_s": 0.0, "bookkeeping_s": 0.0, "per_step_s": 0.0, "growth_s": 0.0,
                       "snapshot_s": 0.0}

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """Accuracy on (x, y) without touching the extrema window or the scoring batch's
        recorded activations and gradients (the snapshot taken right before a growth event
        evaluates the network between the scoring step and the routing)."""
        net = self.network
        keep = net.track, net.record_grads, net.activations, net.pre_grads
        net.track = net.record_grads = False
        try:
            return float((net(x).argmax(1) == y).float().mean())
        finally:
            net.track, net.record_grads, net.activations, net.pre_grads = keep

    def _active_masks(self) -> list[Tensor]:
        return [self.network.active(j) for j in range(self.network.n_layers + 1)]

    def _score_batch(self, x: Tensor, y: Tensor, criterion) -> None:
        """Forward / backward on (x, y) keeping ∂L/∂z per layer (net.pre_grads); the graph dies
        with this frame, before any structural edit."""
        net = self.network
        net.record_grads = True
        try:
            loss = criterion(net(x), y)
            params = [p for p in net.parameters() if p.requires_grad]
            torch.autograd.grad(loss, params, allow_unused=True)  # fills pre_grads by hooks
        finally:
            net.record_grads = False

    def grow_now(self, x: Tensor, y: Tensor, criterion, optimizer, epoch: int) -> dict:
        """One growth event now, scored on batch (x, y), with the extrema window gathered so
        far (at least one batch: (x, y) is added when the window is empty)."""
        self._score_batch(x, y, criterion)
        if not len(self.detector):
            self.detector.update(self.network.activations)
        return self._grow_recorded(epoch, optimizer)

    def _grow_recorded(self, epoch: int, optimizer) -> dict:
        """Route, insert and spend credits from the window and the recorded gradients."""
        net = self.network
        self._pending = False
        rep = self.detector.report(self._active_masks())
        res = self.router.grow(net, rep, self.scheduler.budget(epoch), optimizer)
        self.scheduler.record_growth(epoch, res["structures"])
        net.pre_grads = {}
        self.detector.reset()
        return res

    def train_epoch(self, loader, optimizer: torch.optim.Optimizer, criterion,
                    epoch: int) -> dict:
        """One pass over ``loader`` ((x, y) batches) with growth.

        Returns a dict: ``loss`` (mean), ``train_acc``, ``growth_events``,
        ``connections_added``, ``neurons_added``, ``structures_added``, ``connectivity``,
        ``val_acc`` (None without val_data), ``snapshot`` (id or None), ``seconds``,
        ``bookkeeping_s``.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        net, t_epoch, book = self.network, time.perf_counter(), 0.0
        params = list(net.parameters())  # fixed objects: growth swaps .data, never the Parameter
        self.train()
        tot_loss = correct = seen = events = added = neurons = structures = 0
        for x, y in loader:
            t0 = time.perf_counter()
            # Extrema are only gathered while a growth event is due (the window right before
            # it); the event's own batch keeps ∂L/∂z for scoring, so no extra pass is needed.
            sample = self._pending and self.detector.step()
            final = sample and len(self.detector) + 1 >= self.detector.config.window_batches
            net.track, net.record_grads = sample, final
            book += time.perf_counter() - t0
            out = net(x)
            loss = criterion(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tot_loss += float(loss.detach()) * len(y)
            correct += int((out.detach().argmax(1) == y).sum())
            seen += len(y)
            # Free this step's graph before any growth: a live graph keeps the values'
            # AccumulateGrad node, whose recorded shape would go stale when growth resizes them.
            del out, loss
            t0 = time.perf_counter()
            self.scheduler.observe(grad_norm(params))
            if sample:
                self.detector.update(net.activations)
            if not self._pending and self.scheduler.should_grow(epoch):
                self._pending = True
                self.detector.reset()
            dt = time.perf_counter() - t0
            book += dt
            self.timing["per_step_s"] += dt
            if final:
                net.record_grads = net.track = False
                self._snapshot(epoch, reason="growth")
                t0 = time.perf_counter()
                res = self._grow_recorded(epoch, optimizer)
                dt = time.perf_counter() - t0
                book += dt
                self.timing["growth_s"] += dt
                events += 1
                added += res["connections_added"]
                neurons += res["neurons_added"]
                structures += res["structures"]
                self.growth_log.append({"epoch": epoch, "step": self.scheduler.step,
                                        **{k: v for k, v in res.items() if k != "planned"}})
        seconds = time.perf_counter() - t_epoch
        self.timing["train_s"] += seconds
        self.timing["bookkeeping_s"] += book
        val_acc = self.evaluate(*self.val_data) if self.val_data is not None else None
        snap = self._snapshot(epoch, reason="val", val_acc=val_acc)
        stats = net.get_connectivity_stats()
        rec = {"epoch": epoch, "loss": tot_loss / max(1, seen), "train_acc": correct / max(1,
               seen), "growth_events": events, "connections_added": added,
               "neurons_added": neurons, "structures_added": structures,
               "connectivity": stats["connectivity_ratio"],
               "connections": stats["total_active_connections"], "val_acc": val_acc,
               "snapshot": snap, "seconds": seconds, "bookkeeping_s": book,
               "phase": self.scheduler.phase(epoch), "credits": self.scheduler.credits}
        self.history.append(rec)
        return rec

    def _snapshot(self, epoch: int, reason: str, val_acc: Optional[float] = None):
        if self.snapshots is None:
            return None
        t0 = time.perf_counter()
        try:
            phase = self.scheduler.phase(epoch)
            if reason == "growth":
                acc = self.evaluate(*self.val_data) if self.val_data is not None else None
                return self.snapshots.save(self.network, phase, epoch, "growth", acc)
            if val_acc is not None and self.snapshots.improved(val_acc):
                return self.snapshots.save(self.network, phase, epoch, "val", val_acc)
            return None
        finally:
            self.timing["snapshot_s"] += time.perf_counter() - t0


def create_multi_scale_network(input_size: int, hidden_sizes: Sequence[int], output_size: int,
                               sparsity: float = 1e-4, activation: str = "tanh", *,
                               max_skip: int = 3, neuron_capacity: float = 0.5,
                               scheduler: Optional[SchedulerConfig] = None,
                               extrema: Optional[ExtremaConfig] = None,
                               router: Optional[RouterConfig] = None,
                               snapshot_dir: Optional[str] = None,
                               val_data: Optional[tuple[Tensor, Tensor]] = None,
                               seed: Optional[int] = None) -> MultiScaleNetwork:
    """The seed's entry point: a MultiScaleNetwork over
    ``MinimalNetwork([input_size, *hidden_sizes, output_size], sparsity, activation)``.

    ``sparsity`` is the connected fraction at start (1e-4 = 0.01%). Keyword-only extras:
    configs of the growth pieces, a snapshot directory, validation data and a seed.
    """
    for name, v in (("input_size", input_size), ("output_size", output_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not isinstance(hidden_sizes, (list, tuple)):
        raise TypeError(f"hidden_sizes must be a list of ints, got {type(hidden_sizes).__name__}")
    net = MinimalNetwork([input_size, *hidden_sizes, output_size], sparsity=sparsity,
                         activation=activation, max_skip=max_skip,
                         neuron_capacity=neuron_capacity, seed=seed)
    snaps = SnapshotManager(snapshot_dir) if snapshot_dir is not None else None
    return MultiScaleNetwork(net, GrowthScheduler(scheduler or SchedulerConfig()),
                             ExtremaDetector(activation, extrema),
                             ConnectionRouter(router, seed=seed), snaps, val_data)
