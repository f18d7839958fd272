"""MultiScaleNetwork: training with growth, on the one training loop.

Growth is a `morphonet.loop.Hook` (`GrowthHook`) of `morphonet.loop.TrainLoop`. Each step:
forward, backward, optimizer step, then bookkeeping: the gradient norm goes to the
GrowthScheduler. When the scheduler says a growth event is due (credits, cooldown, phase
budget), the ExtremaDetector gathers its window over the following steps (one sampled batch
every ``stride_steps``); on the step that completes the window the forward also keeps ∂L/∂z of
every layer, and right after that step the event happens: a snapshot of the network as trained
so far, extrema verdicts, routing / cloning scored with the dense gradients of that step's batch,
insertion with the live optimizer. Extrema are therefore measured right before each event and
cost nothing between events.

The optimizer created once before training keeps working: edge values live in each
SparseLinear's ``values`` Parameter; growth within a layer's capacity keeps that Parameter and
remaps the optimizer's per-edge moments (new edges start with zero moments), growth beyond it
swaps a longer Parameter into the optimizer with its moments moved (`SparseLinear.grow`);
neurons are pre-allocated slots switched on by an active mask, so no other parameter changes
shape.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from morpho_kernels.distributed import resolve_group

from ..checks import check_instance, check_int, check_int_list
from ..loop import DataParallel, Hook, TrainLoop, accuracy
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


class GrowthHook(Hook):
    """Structure Net's growth as a training-loop hook (module docstring): counts gradient
    norms, gathers the extrema window when an event is due, grows right after the step that
    completes it, snapshots, times its own bookkeeping, and adds the epoch's growth figures
    to the loop's record."""

    def __init__(self, model: MultiScaleNetwork):
        self.model = model

    def on_epoch_start(self, loop: TrainLoop, epoch: int) -> None:
        self.book = 0.0
        self.events = self.added = self.neurons = self.structures = 0
        # re-read after every growth event (growth past a capacity swaps a Parameter)
        self.params = list(self.model.network.parameters())
        self.sample = self.final = False

    def on_batch_start(self, loop: TrainLoop, x: Tensor, y: Tensor) -> None:
        m, t0 = self.model, time.perf_counter()
        # Extrema are only gathered while a growth event is due (the window right before
        # it); the event's own batch keeps ∂L/∂z for scoring, so no extra pass is needed.
        self.sample = m._pending and m.detector.step()
        self.final = self.sample and len(m.detector) + 1 >= m.detector.config.window_batches
        m.network.track, m.network.record_grads = self.sample, self.final
        self.book += time.perf_counter() - t0

    def on_step_end(self, loop: TrainLoop) -> None:
        m, net, epoch = self.model, self.model.network, loop.epoch
        t0 = time.perf_counter()
        m.scheduler.observe(grad_norm(self.params))
        if self.sample:
            m.detector.update(net.activations)
        if not m._pending and m.scheduler.should_grow(epoch):
            m._pending = True
            m.detector.reset()
        dt = time.perf_counter() - t0
        self.book += dt
        m.timing["per_step_s"] += dt
        if self.final:
            net.record_grads = net.track = False
            m._snapshot(epoch, reason="growth")
            t0 = time.perf_counter()
            res = m._grow_recorded(epoch, loop.optimizers[0])
            # growth beyond a layer's capacity swaps in a longer values Parameter
            self.params = list(net.parameters())
            dt = time.perf_counter() - t0
            self.book += dt
            m.timing["growth_s"] += dt
            self.events += 1
            self.added += res["connections_added"]
            self.neurons += res["neurons_added"]
            self.structures += res["structures"]
            m.growth_log.append({"epoch": epoch, "step": m.scheduler.step,
                                 **{k: v for k, v in res.items() if k != "planned"}})

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        m = self.model
        m.timing["train_s"] += record["seconds"]
        m.timing["bookkeeping_s"] += self.book
        record.update(growth_events=self.events, connections_added=self.added,
                      neurons_added=self.neurons, structures_added=self.structures)

    def on_epoch_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        m, epoch = self.model, record["epoch"]
        snap = m._snapshot(epoch, reason="val", val_acc=record.get("val_acc"))
        stats = m.network.get_connectivity_stats()
        record.update(connectivity=stats["connectivity_ratio"],
                      connections=stats["total_active_connections"],
                      val_acc=record.get("val_acc"), snapshot=snap, bookkeeping_s=self.book,
                      phase=m.scheduler.phase(epoch), credits=m.scheduler.credits,
                      terminated=m.scheduler.terminated)
        m.history.append(record)

    def describe(self, record: dict[str, Any]) -> str:
        return (f"conn={record['connectivity']:.4f} ({record['connections']} edges) "
                f"growth={record['growth_events']}")


class MultiScaleNetwork(nn.Module):
    """A MinimalNetwork with its growth machinery; ``network`` is the MinimalNetwork.

    Args:
        network: the MinimalNetwork to grow.
        scheduler, detector, router: growth pieces (defaults from their configs).
        snapshots: optional SnapshotManager (saves before each growth event and on a
            validation improvement of more than ``snapshots.min_improvement``).
        val_data: optional (x, y) validation tensors: evaluated after every epoch (snapshot
            decisions and the timeline use validation, never training batches).
        group: data-parallel training (``torch.distributed``, e.g. torchrun): a process group
            (``torch.distributed.group.WORLD``). Each rank trains on its own batches;
            `train_epoch` averages the gradients (`morphonet.loop.DataParallel`, so the
            scheduler sees the same gradient norms everywhere), and each growth event merges
            the extrema windows and averages the scoring gradients over the group before the
            router ranks anything, so every rank grows the same structure (build the network
            and the router with the same seed on every rank; snapshots on one rank only).
            None: one process; "auto" (default): None without torch.distributed, an error
            with more than one rank (`morpho_kernels.distributed.resolve_group`).
    """

    def __init__(self, network: MinimalNetwork, scheduler: Optional[GrowthScheduler] = None,
                 detector: Optional[ExtremaDetector] = None,
                 router: Optional[ConnectionRouter] = None,
                 snapshots: Optional[SnapshotManager] = None,
                 val_data: Optional[tuple[Tensor, Tensor]] = None, group: Any = "auto"):
        super().__init__()
        self.group = resolve_group(group, "grow", "connections")
        check_instance("network", network, MinimalNetwork)
        self.network = network
        # `is None`, not `or`: an ExtremaDetector with an empty window has len() 0, so `or`
        # silently replaced a caller's detector (and its config) with a default one
        self.scheduler = GrowthScheduler() if scheduler is None else scheduler
        self.detector = ExtremaDetector(network.activation) if detector is None else detector
        self.router = ConnectionRouter() if router is None else router
        self.snapshots = snapshots
        self.val_data = val_data
        self._pending = False  # a growth event is due: gathering its extrema window
        self.history: list[dict] = []
        self.growth_log: list[dict] = []
        self.timing = {"train_s": 0.0, "bookkeeping_s": 0.0, "per_step_s": 0.0, "growth_s": 0.0,
                       "snapshot_s": 0.0}
        self.growth_hook = GrowthHook(self)
        # one hook for every epoch: it broadcasts the first rank's network once, at the first
        self._parallel = DataParallel(self.group) if self.group is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """Accuracy on (x, y). Evaluation runs under no_grad, where the network records
        nothing, so the extrema window and the scoring batch's activations and gradients are
        untouched (the snapshot taken right before a growth event evaluates the network
        between the scoring step and the routing)."""
        return accuracy(self.network, x, y)

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
        rep = self.detector.report(self._active_masks(), self.group)
        res = self.router.grow(net, rep, self.scheduler.budget(epoch), optimizer,
                               phase=self.scheduler.phase(epoch), group=self.group)
        self.scheduler.record_growth(epoch, res["structures"], exhausted=res["exhausted"])
        if res["exhausted"]:
            high = [int(e.high.sum()) for e in rep]
            targets = [int((e.low | e.quiet).sum()) for e in rep]
            warnings.warn(
                f"growth terminated at epoch {epoch}: the event found nothing to grow (high "
                f"extrema per layer {high}, low or quiet targets per layer {targets}"
                + ("; no layer has a high extremum: are the inputs constant?"
                   if not any(high) else "; every target is full or already connected")
                + ")", stacklevel=2)
        net.pre_grads = {}
        self.detector.reset()
        return res

    def train_epoch(self, loader, optimizer: torch.optim.Optimizer, criterion,
                    epoch: int) -> dict:
        """One pass over ``loader`` ((x, y) batches) with growth: `TrainLoop.run_epoch` with
        this network's `GrowthHook` (no best-epoch selection: the network keeps growing).

        Returns the epoch's record: ``loss`` (mean), ``train_acc``, ``growth_events``,
        ``connections_added``, ``neurons_added``, ``structures_added``, ``connectivity``,
        ``connections``, ``val_acc`` (None without val_data), ``val_loss``, ``snapshot`` (id
        or None), ``seconds``, ``bookkeeping_s``, ``phase``, ``credits``.
        """
        hooks = ([self._parallel] if self._parallel is not None else []) + [self.growth_hook]
        loop = TrainLoop(self, optimizer, loss_fn=criterion, hooks=hooks,
                         select=None, track_train_acc=True, merge_single_batch=False)
        return loop.run_epoch(loader, epoch, val=self.val_data)

    def training_state(self) -> dict[str, Any]:
        """Everything of this network's growth a checkpoint needs for an exact resume: the
        network with its grown structure (edge lists of any capacity, active neuron slots),
        the scheduler, the detector's open window, the router's generator, a pending event,
        the history, the growth log, the timings and how many snapshots exist. The optimizer,
        the data order and torch's RNG are the caller's (`experiment.run_structure`)."""
        return {"network": self.network.state_dict(), "scheduler": self.scheduler.state_dict(),
                "detector": self.detector.state_dict(), "router": self.router.gen.get_state(),
                "pending": self._pending, "history": copy.deepcopy(self.history),
                "growth_log": copy.deepcopy(self.growth_log), "timing": dict(self.timing),
                "snapshots": len(self.snapshots.index) if self.snapshots is not None else None}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore a `training_state` into a network built with the same arguments (its
        structure is rebuilt first: edge lists take the saved capacity, neuron slots their
        saved activity). An optimizer built on this network before the call keeps its
        parameters (they are resized in place); load its state after this."""
        self.network.load_state_dict(state["network"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.detector.load_state_dict(state["detector"])
        self.router.gen.set_state(state["router"])
        self._pending = state["pending"]
        self.history = copy.deepcopy(state["history"])
        self.growth_log = copy.deepcopy(state["growth_log"])
        self.timing = dict(state["timing"])
        if self.snapshots is not None and state["snapshots"] is not None:
            self.snapshots.rewind(state["snapshots"])
        self.network.activations, self.network.pre_grads = [], {}

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
                               seed: Optional[int] = None,
                               group: Any = "auto") -> MultiScaleNetwork:
    """The seed's entry point: a MultiScaleNetwork over
    ``MinimalNetwork([input_size, *hidden_sizes, output_size], sparsity, activation)``.

    ``sparsity`` is the connected fraction at start (1e-4 = 0.01%). Keyword-only extras:
    configs of the growth pieces, a snapshot directory, validation data, a seed and the
    data-parallel ``group`` (`MultiScaleNetwork`).
    """
    check_int("input_size", input_size, 1)
    check_int("output_size", output_size, 1)
    check_int_list("hidden_sizes", hidden_sizes, 1)
    net = MinimalNetwork([input_size, *hidden_sizes, output_size], sparsity=sparsity,
                         activation=activation, max_skip=max_skip,
                         neuron_capacity=neuron_capacity, seed=seed)
    snaps = SnapshotManager(snapshot_dir) if snapshot_dir is not None else None
    return MultiScaleNetwork(net, GrowthScheduler(scheduler or SchedulerConfig()),
                             ExtremaDetector(activation, extrema),
                             ConnectionRouter(router, seed=seed), snaps, val_data, group)
