"""The one training loop of morphonet, with hooks for structure decisions.

Every trainer here runs its epochs through `TrainLoop`: MorphoNet Pro's `MorphoTrainer`, the
dense and magnitude-pruning peers of ``morpho compare``, the drop-in demo, Structure Net's
growth trainer and its RigL / SET / static peers (and the systems still to come). The loop
owns what they share: batching (shuffled by its own generator, a last batch of one row merged
into the previous one when the model has batch norm), moving batches to the device, the
optimizer steps with gradient clipping per optimizer, evaluation, keeping the best epoch on
validation (never on test), a tqdm progress bar and progress lines, and an atomic, checksummed
checkpoint from which a killed run resumes exactly.

What differs between the systems (temperature annealing, sparsity penalties and enforcement,
pruning, growth, regrowth, snapshots) plugs in as `Hook` objects; a hook's methods are called
at fixed points of each step and epoch (see `Hook`), so no system keeps a copy of the loop.

One step::

    transform_batch(x, y) → on_batch_start(x, y)
    → [autocast] out = model(x) → loss = loss_fn(out, y) + Σ hook.penalty()
    → zero_grad (every optimizer) → backward → after_backward() → clip (per optimizer)
    → step (every optimizer)
    → on_step_end()          # the step's graph is freed first: hooks may resize parameters

One epoch::

    on_epoch_start(epoch) → steps → record = {epoch, loss[, train_acc], seconds of the steps}
    → on_train_end(record)   # structure decisions (enforce sparsity, ...)
    → validation (val_loss, val_acc) → on_epoch_end(record)   # snapshots, callbacks
    → best-epoch selection (every hook's `selectable` must agree) → checkpoint
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morpho_kernels.distributed import resolve_group
from morpho_kernels.nn import mask_parameters

from .checks import check_instance, check_int, check_real
from .files import load_torch, save_torch

__all__ = ["Callback", "DataParallel", "Hook", "IGNORE_INDEX", "TrainLoop", "accuracy",
           "batch_ranges", "rank_shard", "torch_threads",
           "classification_loss", "count_correct", "evaluate", "probe", "shuffled_batches"]

IGNORE_INDEX = -100  # targets with this value count for nothing (padding of a language model)

Batches = Union[tuple[Tensor, Tensor], Iterable[tuple[Tensor, Tensor]]]


# ---------------------------------------------------------------------------- losses, metrics


def classification_loss(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy over the last dimension (classes or vocabulary), in float32, targets
    equal to `IGNORE_INDEX` left out: (B, C) with (B,), or (B, L, V) with (B, L)."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def count_correct(out: Tensor, y: Tensor) -> tuple[int, int]:
    """(correct argmax predictions, targets counted), `IGNORE_INDEX` left out."""
    target = y.reshape(-1)
    keep = target != IGNORE_INDEX
    pred = out.reshape(-1, out.shape[-1]).argmax(-1)
    return int((pred[keep] == target[keep]).sum()), int(keep.sum())


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024,
             loss_fn: Callable[[Tensor, Tensor], Tensor] = classification_loss
             ) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on (x, y) in eval mode, in batches of
    ``batch_size`` (the training mode is restored)."""
    was = model.training
    model.eval()
    dev = _device_of(model)
    tot_loss, correct, count = 0.0, 0, 0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            out = model(xb)
            c, n = count_correct(out, yb)
            tot_loss += float(loss_fn(out, yb)) * n
            correct, count = correct + c, count + n
    finally:
        model.train(was)
    return tot_loss / max(count, 1), correct / max(count, 1)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Accuracy of ``model`` on (x, y) (`evaluate`)."""
    return evaluate(model, x, y, batch_size)[1]


@torch.no_grad()
def probe(model: nn.Module, splits: Sequence[tuple[str, Tensor, Tensor]],
          loss_fn: Callable[[Tensor, Tensor], Tensor] = classification_loss,
          rows: int = 2) -> None:
    """Run the first ``rows`` rows of every (name, x, y) split through ``model`` and
    ``loss_fn`` in eval mode (nothing changes: no parameter, buffer or RNG state; the training
    mode is restored), so that a split the model cannot take is rejected before the first
    training step with a ``ValueError`` naming it (``X_<name>`` for the forward, ``y_<name>``
    for the loss) and what the model expects (its ``expected_input()`` when it has one)."""
    want = model.expected_input() if hasattr(model, "expected_input") else "the model's input"
    dev = _device_of(model)
    was = model.training
    model.eval()
    try:
        for name, x, y in splits:
            xb, yb = x[:rows].to(dev), y[:rows].to(dev)
            try:
                out = model(xb)
            except (ValueError, RuntimeError, IndexError, TypeError) as e:
                raise ValueError(f"X_{name} of shape {tuple(x.shape)} does not fit the model "
                                 f"(expected {want}): {e}") from e
            try:
                loss_fn(out, yb)
            except (ValueError, RuntimeError, IndexError, TypeError) as e:
                raise ValueError(f"y_{name} of shape {tuple(y.shape)} does not match the "
                                 f"model's output of shape (batch, "
                                 f"{', '.join(map(str, out.shape[1:]))}): {e}") from e
    finally:
        model.train(was)


# ---------------------------------------------------------------------------- batching


def batch_ranges(n: int, batch_size: int, merge_single: bool = False) -> list[tuple[int, int]]:
    """[start, end) of each batch of ``n`` rows; with ``merge_single`` a last batch of one row
    joins the one before (batch norm cannot normalise one row)."""
    starts = list(range(0, n, batch_size))
    if merge_single and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], n]))


def shuffled_batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator,
                     merge_single: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) batches in the order of one ``torch.randperm(len(x), generator=generator)``
    (drawn when the iteration starts)."""
    perm = torch.randperm(x.shape[0], generator=generator)
    for i, j in batch_ranges(x.shape[0], batch_size, merge_single):
        idx = perm[i:j]
        yield x[idx], y[idx]


# ---------------------------------------------------------------------------- hooks


class Hook:
    """A structure decision plugged into `TrainLoop`. Every method is optional (the base does
    nothing); ``loop`` gives access to the model, the optimizers, the epoch and the step.

    - `on_fit_start` / `on_fit_end`: once per `TrainLoop.fit`.
    - `on_epoch_start`: before the first step of an epoch (e.g. set the temperature).
    - `transform_batch`: returns the (x, y) the step trains on (e.g. MixUp: mixed inputs and
      targets the loss function understands); called before `on_batch_start`.
    - `on_batch_start`: before a step's forward (e.g. ask the model to keep activations).
    - `penalty`: a term added to the step's loss (e.g. a sparsity penalty), or None.
    - `after_backward`: the gradients exist, before clipping and the optimizer steps (e.g.
      freeze a parameter for this step by clearing its gradient).
    - `on_step_end`: after the optimizer steps; the step's graph is already freed, so the
      hook may change structure (grow, prune, regrow) and optimizer state.
    - `on_train_end`: after the epoch's last step, before validation; may add keys to
      ``record`` (e.g. enforce the sparsity schedule and record the sparsity).
    - `on_epoch_end`: after validation (``record`` has ``val_acc`` when there is validation
      data); e.g. snapshots, callbacks.
    - `selectable`: whether this epoch may be kept as the best one (e.g. only at the target
      sparsity); every hook must agree.
    - `describe`: a short text for the progress line (e.g. ``"T=1.20"``).
    - `state_dict` / `load_state_dict`: what a checkpoint must keep for an exact resume.
    """

    def on_fit_start(self, loop: TrainLoop) -> None:
        """Once, before the first epoch of `TrainLoop.fit` (and before a resume)."""
        pass

    def on_epoch_start(self, loop: TrainLoop, epoch: int) -> None:
        """Before the first step of ``epoch``."""
        pass

    def transform_batch(self, loop: TrainLoop, x: Tensor, y: Any) -> tuple[Tensor, Any]:
        """The (x, y) this step trains on (default: unchanged)."""
        return x, y

    def on_batch_start(self, loop: TrainLoop, x: Tensor, y: Tensor) -> None:
        """Before the step's forward."""
        pass

    def penalty(self, loop: TrainLoop) -> Optional[Tensor]:
        """A term added to the step's loss, or None."""
        return None

    def after_backward(self, loop: TrainLoop) -> None:
        """After the backward pass, before clipping and the optimizer steps."""
        pass

    def on_step_end(self, loop: TrainLoop) -> None:
        """After the optimizer steps (the step's graph already freed)."""
        pass

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        """After the epoch's last step, before validation; may add to ``record``."""
        pass

    def on_epoch_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        """After validation; ``record`` is complete."""
        pass

    def selectable(self, loop: TrainLoop, record: dict[str, Any]) -> bool:
        """Whether this epoch may be kept as the best one."""
        return True

    def describe(self, record: dict[str, Any]) -> str:
        """A short text for the progress line ("" for none)."""
        return ""

    def on_fit_end(self, loop: TrainLoop, result: dict[str, Any]) -> None:
        """Once, after `TrainLoop.fit`'s last epoch."""
        pass

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this hook."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        pass


class Callback(Hook):
    """Calls ``fn(record)`` at the end of every epoch (after validation)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn

    def on_epoch_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        self.fn(record)


class DataParallel(Hook):
    """Data-parallel training over a ``torch.distributed`` process group, as a hook: every
    rank trains on its own batches (e.g. its `rank_shard` of the data) and the replicas stay
    one model. Put it first in the loop's hooks.

    - `on_fit_start` (or the first `on_epoch_start` when the loop runs epochs without `fit`):
      every parameter and buffer is broadcast from the group's first rank (as DDP's
      constructor does), so replicas start equal (before a resume, which then loads the same
      state on every rank);
    - `after_backward`: every gradient is averaged over the group (one flat all-reduce per
      step), before clipping, the optimizer steps and any hook that reads gradients, so every
      rank takes the same step;
    - `on_train_end`: the epoch's training loss (and accuracy) become the group's means, and
      floating buffers (batch-norm statistics) the group's mean, so records, validation and
      structure decisions agree on every rank.

    Unlike ``DistributedDataParallel``, nothing is bucketed at construction, so a structure
    change that swaps or resizes a parameter (growth past a capacity) needs no rebuild. The
    structure decisions themselves must also agree: pass the same group to them (their
    ``group=`` argument), so their scores are reduced before ranking. ``group``: a process
    group (``torch.distributed.group.WORLD``), or None (a single process: the hook does
    nothing); "auto" follows `morpho_kernels.distributed.resolve_group`.
    """

    def __init__(self, group: Any = "auto"):
        self.group = resolve_group(group, "train", "steps")
        self._synced = False

    def _flat(self, tensors: list[Tensor], op: str) -> None:
        """All-reduce ``tensors`` in place as one flat buffer (``op``: "mean" or "src",
        the broadcast of the group's first rank)."""
        import torch.distributed as dist

        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64 if t.dtype == torch.float64
                                                     else torch.float32) for t in tensors])
        if op == "src":
            dist.broadcast(flat, dist.get_global_rank(self.group, 0), group=self.group)
        else:
            dist.all_reduce(flat, group=self.group)
            flat.div_(dist.get_world_size(self.group))
        i = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[i:i + t.numel()].view_as(t))
                i += t.numel()

    def on_fit_start(self, loop: TrainLoop) -> None:
        if self.group is None:
            return
        import torch.distributed as dist

        self._synced = True
        m = loop.model
        self._flat([p.data for p in m.parameters() if p.is_floating_point()], "src")
        for b in m.buffers():  # integer and bool buffers (structure) too, in their own dtype
            if b.numel():
                dist.broadcast(b.data, dist.get_global_rank(self.group, 0), group=self.group)

    def on_epoch_start(self, loop: TrainLoop, epoch: int) -> None:
        if not self._synced:
            self.on_fit_start(loop)

    def after_backward(self, loop: TrainLoop) -> None:
        if self.group is not None:  # the same parameters have gradients on every rank
            self._flat([p.grad for p in loop.model.parameters() if p.grad is not None], "mean")

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        if self.group is None:
            return
        keys = [k for k in ("loss", "train_acc") if record.get(k) is not None]
        # on the model's device: NCCL reduces CUDA tensors only
        device = next((p.device for p in loop.model.parameters()), torch.device("cpu"))
        vals = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64,
                            device=device)
        self._flat([vals], "mean")
        record.update(zip(keys, vals.tolist()))
        self._flat([b for b in loop.model.buffers() if b.is_floating_point()], "mean")


def rank_shard(x: Tensor, y: Tensor, group: Any) -> tuple[Tensor, Tensor]:
    """This rank's share of (x, y) for data-parallel training over ``group``: rows
    ``rank, rank + world, ...``, every rank the same number (⌊n / world⌋; the last few rows
    left out), so every rank takes the same number of steps (a rank with one step more would
    wait for the others' gradients forever). ``group=None`` (or a group of one rank): (x, y)
    unchanged; "auto" as `morpho_kernels.distributed.resolve_group`."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[0] != y.shape[0]:
        raise ValueError("x and y must be tensors with the same number of rows, got "
                         + " and ".join(f"{tuple(t.shape)}" if isinstance(t, Tensor)
                                        else type(t).__name__ for t in (x, y)))
    group = resolve_group(group, "shard", "rows")  # (a rank outside the group: ValueError)
    if group is None:
        return x, y
    import torch.distributed as dist

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = x.shape[0] // world
    if n == 0:
        raise ValueError(f"x has {x.shape[0]} rows: too few for {world} ranks")
    return x[rank::world][:n], y[rank::world][:n]


# ---------------------------------------------------------------------------- the loop


def _warn_decayed_masks(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Warn when an optimizer weight-decays mask logits: decay pulls every logit toward 0, i.e.
    every mask value toward 0.5 (`morpho_kernels.nn.param_groups` builds the right groups)."""
    masks = {id(p) for p in mask_parameters(model)}
    if not masks:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    for i, o in enumerate(optimizers):
        for g in o.param_groups:
            hit = [p for p in g["params"] if id(p) in masks]
            if hit and g.get("weight_decay", 0):
                warnings.warn(
                    f"optimizers[{i}] applies weight_decay={g['weight_decay']} to {len(hit)} "
                    f"mask-logit tensor(s) ({names.get(id(hit[0]), 'mask_logits')}, ...): decay "
                    f"pulls every mask value toward 0.5; build the optimizer's groups with "
                    f"morpho_kernels.nn.param_groups(model, weight_decay)", stacklevel=3)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class TrainLoop:
    """Trains ``model`` with ``optimizers`` and ``hooks`` (module docstring for the order).

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to outputs.
        optimizers: one optimizer or several (each steps every batch; e.g. weights and mask
            logits with their own learning rates).
        loss_fn: ``loss_fn(out, y)``, the data loss (default `classification_loss`).
        hooks: `Hook` objects, called in order.
        grad_clip: max gradient norm per optimizer's parameters (0 = no clipping).
        batch_size: rows per batch when the training data are tensors.
        generator: the ``torch.Generator`` shuffling the tensors (default: one seeded from
            torch's global generator).
        select: the record key of the best-epoch choice (``"val_acc"``: the larger the better;
            a key naming a loss, e.g. ``"val_loss"``: the smaller), or None to keep the last
            epoch; the choice uses validation data only.
        restore_best: load the best epoch's state at the end of `fit`.
        track_train_acc: also count the training accuracy of each epoch.
        merge_single_batch: merge a last batch of one row (default: when the model has batch
            norm).
        eval_batch_size: batch size of evaluation.
        progress: show a tqdm bar over the epochs.
        log: where progress lines go (e.g. ``print``); log_every: a line every this many
            epochs (and at the last one); 0 = none.
        checkpoint: a file to write after every ``checkpoint_every`` epochs (atomic and
            checksummed); `fit` with ``resume=True`` continues from it.
        autocast: a dtype (``torch.bfloat16`` on CPU; ``torch.float16`` / ``bfloat16`` on
            CUDA) to run each step's forward and loss under ``torch.autocast``; None: off.
    """

    def __init__(self, model: nn.Module,
                 optimizers: Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer]], *,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = classification_loss,
                 hooks: Sequence[Hook] = (), grad_clip: float = 0.0, batch_size: int = 64,
                 generator: Optional[torch.Generator] = None, select: Optional[str] = "val_acc",
                 restore_best: bool = True, track_train_acc: bool = False,
                 merge_single_batch: Optional[bool] = None, eval_batch_size: int = 1024,
                 progress: bool = False, log: Optional[Callable[[str], None]] = None,
                 log_every: int = 0, checkpoint: Optional[Union[str, os.PathLike]] = None,
                 checkpoint_every: int = 1, autocast: Optional[torch.dtype] = None):
        check_instance("model", model, nn.Module)
        opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
        for i, o in enumerate(opts):
            check_instance(f"optimizers[{i}]", o, torch.optim.Optimizer)
        for i, h in enumerate(hooks):
            check_instance(f"hooks[{i}]", h, Hook)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.model, self.optimizers, self.hooks = model, opts, list(hooks)
        self.loss_fn = loss_fn
        self.grad_clip = check_real("grad_clip", grad_clip, 0)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
        self.log_every = check_int("log_every", log_every, 0)
        self.checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
        # drawn from torch's global generator only when the loop first shuffles tensors itself
        # (a loop over a DataLoader must not advance the global generator the loader uses)
        self._generator = check_instance("generator", generator, torch.Generator,
                                         optional=True)
        self.select, self.restore_best = select, restore_best
        self._minimise = select is not None and "loss" in select  # a loss: the lower the better
        self.track_train_acc = track_train_acc
        self.merge_single = (_has_batchnorm(model) if merge_single_batch is None
                             else merge_single_batch)
        self.progress, self.log = progress, log
        self.checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        if autocast is not None and not (isinstance(autocast, torch.dtype)
                                         and autocast in (torch.bfloat16, torch.float16)):
            raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got "
                             f"{autocast!r}")
        self.autocast = autocast
        _warn_decayed_masks(model, opts)
        self.epoch, self.global_step, self.elapsed = -1, 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.best_epoch: Optional[int] = None
        self.best_value: Optional[float] = None
        self.best_state: Optional[dict[str, Tensor]] = None
        self._bar = None

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (batches are moved there)."""
        return _device_of(self.model)

    def clip_groups(self) -> list[list[Tensor]]:
        """Each optimizer's parameters (clipped together); read at every step, so a
        structural edit that swaps a parameter into an optimizer is followed."""
        return [[p for g in o.param_groups for p in g["params"]] for o in self.optimizers]

    # ------------------------------------------------------------------ one step

    def step(self, x: Tensor, y: Tensor) -> tuple[float, int, Optional[tuple[int, int]]]:
        """One optimizer step on (x, y); returns (data loss, rows, (correct, counted) or
        None)."""
        dev = self.device
        x, y = x.to(dev), y.to(dev)
        for h in self.hooks:
            x, y = h.transform_batch(self, x, y)
        for h in self.hooks:
            h.on_batch_start(self, x, y)
        with self._autocast():
            out = self.model(x)
            loss = self.loss_fn(out, y)
            full = loss
            for h in self.hooks:
                p = h.penalty(self)
                if p is not None:
                    full = full + p
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        full.backward()
        for h in self.hooks:
            h.after_backward(self)
        if self.grad_clip > 0:
            for params in self.clip_groups():
                nn.utils.clip_grad_norm_(params, self.grad_clip)
        for opt in self.optimizers:
            opt.step()
        value = float(loss.detach())
        correct = (count_correct(out.detach(), y) if self.track_train_acc
                   and isinstance(y, Tensor) else None)  # mixed targets have no argmax
        # free the step's graph before the hooks: one that resizes a parameter would otherwise
        # leave autograd a stale shape for the next backward
        del out, loss, full
        self.global_step += 1
        for h in self.hooks:
            h.on_step_end(self)
        return value, int(x.shape[0]), correct

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    # ------------------------------------------------------------------ one epoch

    @property
    def generator(self) -> torch.Generator:
        """The generator shuffling tensors (created from torch's global generator on first
        use when none was given)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(
                int(torch.randint(0, 2**31 - 1, ())))
        return self._generator

    def _batches(self, data: Batches) -> Iterable[tuple[Tensor, Tensor]]:
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor)
                                                              for t in data):
            return shuffled_batches(data[0], data[1], self.batch_size, self.generator,
                                    self.merge_single)
        return data

    def run_epoch(self, data: Batches, epoch: int,
                  val: Optional[tuple[Tensor, Tensor]] = None) -> dict[str, Any]:
        """One epoch: the steps over ``data`` (an (x, y) pair of tensors, shuffled and batched
        by the loop, or any iterable of (x, y) batches such as a DataLoader), the epoch-end
        hooks, validation on ``val`` and the best-epoch choice. Returns the epoch's record."""
        self.epoch = epoch
        self.model.train()
        for h in self.hooks:
            h.on_epoch_start(self, epoch)
        t0 = time.perf_counter()
        tot = correct = counted = 0.0
        rows = 0
        for x, y in self._batches(data):
            value, n, c = self.step(x, y)
            tot, rows = tot + value * n, rows + n
            if c is not None:
                correct, counted = correct + c[0], counted + c[1]
        if rows == 0:
            raise ValueError("the training data gave no batch this epoch")
        record: dict[str, Any] = {"epoch": epoch, "loss": tot / rows}
        if self.track_train_acc:  # None when no target could be counted (mixed targets)
            record["train_acc"] = correct / counted if counted else None
        record["seconds"] = time.perf_counter() - t0  # the steps (hooks' step work included)
        for h in self.hooks:
            h.on_train_end(self, record)
        if val is not None:
            record["val_loss"], record["val_acc"] = evaluate(self.model, val[0], val[1],
                                                             self.eval_batch_size, self.loss_fn)
        for h in self.hooks:
            h.on_epoch_end(self, record)
        self._consider(record)
        self.history.append(record)
        return record

    def _consider(self, record: dict[str, Any]) -> None:
        """Keep this epoch's state when it is the best so far on ``select`` (validation)."""
        value = record.get(self.select) if self.select is not None else None
        if value is None or not all(h.selectable(self, record) for h in self.hooks):
            return
        if self.best_value is None:
            better = True
        elif self._minimise:
            better = value < self.best_value
        else:
            better = value > self.best_value
        if better:
            self.best_value, self.best_epoch = value, record["epoch"]
            self.best_state = copy.deepcopy(self.model.state_dict())

    # ------------------------------------------------------------------ fit

    def fit(self, train: Batches, val: Optional[tuple[Tensor, Tensor]] = None,
            epochs: int = 1, *, resume: bool = False) -> dict[str, Any]:
        """Train for ``epochs`` epochs (`run_epoch` each). With ``resume=True`` and an existing
        ``checkpoint`` file, continue after the epoch it holds (model, optimizers, generator
        and RNG state, history, best epoch and hook states restored: the result equals an
        uninterrupted run's). Returns ``{"history", "best_epoch", "best_value",
        "train_time", "epochs"}``; the model holds the best epoch's state when
        ``restore_best`` and some epoch was selectable, else the last epoch's."""
        epochs = check_int("epochs", epochs, 1)
        for h in self.hooks:  # before a resume restores the hooks' state
            h.on_fit_start(self)
        start = 0
        if resume:
            if self.checkpoint is None:
                raise ValueError("resume=True needs checkpoint= (the file to resume from)")
            if os.path.exists(self.checkpoint):
                start = self.load_checkpoint(self.checkpoint) + 1
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=epochs, initial=start, unit="epoch", dynamic_ncols=True)
        self._bar = bar
        try:
            for epoch in range(start, epochs):
                t0 = time.perf_counter()
                record = self.run_epoch(train, epoch, val)
                self.elapsed += time.perf_counter() - t0
                self._report(record, epochs, bar)
                if self.checkpoint is not None and ((epoch + 1) % self.checkpoint_every == 0
                                                    or epoch == epochs - 1):
                    self.save_checkpoint(self.checkpoint)
        finally:
            if bar is not None:
                bar.close()
            self._bar = None
        if self.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        result = {"history": self.history, "best_epoch": self.best_epoch,
                  "best_value": self.best_value, "train_time": self.elapsed, "epochs": epochs}
        for h in self.hooks:
            h.on_fit_end(self, result)
        return result

    def _line(self, record: dict[str, Any], epochs: int) -> str:
        parts = [f"epoch {record['epoch'] + 1:4d}/{epochs}", f"loss={record['loss']:.4f}"]
        parts += [d for d in (h.describe(record) for h in self.hooks) if d]
        if record.get("val_acc") is not None:
            parts.append(f"val_acc={record['val_acc']:.3f}")
        return "  ".join(parts)

    def _report(self, record: dict[str, Any], epochs: int, bar) -> None:
        if bar is not None:
            bar.update(1)
            post = {"loss": f"{record['loss']:.4f}"}
            if record.get("val_acc") is not None:
                post["val_acc"] = f"{record['val_acc']:.3f}"
            bar.set_postfix(post, refresh=False)
        e = record["epoch"]
        if self.log is not None and self.log_every and (e % self.log_every == 0
                                                        or e == epochs - 1):
            line = self._line(record, epochs)
            (bar.write if bar is not None else self.log)(line)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (plain values and tensors)."""
        return {
            "epoch": self.epoch, "global_step": self.global_step, "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "generator": (self._generator.get_state() if self._generator is not None
                          else None),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []),
            "history": self.history,
            "best": {"epoch": self.best_epoch, "value": self.best_value,
                     "state": self.best_state},
            "hooks": {k: st for k, h in self._hook_keys() if (st := h.state_dict())},
        }

    def _hook_keys(self) -> list[tuple[str, Hook]]:
        """Each hook with a key for its checkpoint state: its class name, numbered when the
        loop has several of that class."""
        seen: dict[str, int] = {}
        out = []
        for h in self.hooks:
            name = type(h).__name__
            seen[name] = seen.get(name, -1) + 1
            out.append((f"{name}#{seen[name]}" if seen[name] else name, h))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a `state_dict`; returns the epoch it was taken after. Hooks are matched by
        class name (hooks without state, such as callbacks, may differ)."""
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"the checkpoint holds {len(state['optimizers'])} optimizers, this "
                             f"loop has {len(self.optimizers)}")
        hooks = dict(self._hook_keys())
        lost = sorted(set(state["hooks"]) - set(hooks))
        if lost:
            raise ValueError(f"the checkpoint holds the state of hooks {lost} that this loop "
                             f"does not have (its hooks: {sorted(hooks)})")
        self.model.load_state_dict(state["model"])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for key, st in state["hooks"].items():
            hooks[key].load_state_dict(st)
        if state["generator"] is not None:
            self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.elapsed = state["elapsed"]
        self.history = list(state["history"])
        best = state["best"]
        self.best_epoch, self.best_value, self.best_state = (best["epoch"], best["value"],
                                                             best["state"])
        return self.epoch

    def save_checkpoint(self, path: Union[str, os.PathLike]) -> None:
        """`state_dict` to ``path``, atomically, with a checksum (`morphonet.files`)."""
        save_torch(path, self.state_dict(), "checkpoint")

    def load_checkpoint(self, path: Union[str, os.PathLike]) -> int:
        """Restore from a `save_checkpoint` file (a damaged one raises
        `morphonet.files.CorruptFileError` naming it); returns its epoch."""
        return self.load_state_dict(load_torch(path, "checkpoint"))


@contextlib.contextmanager
def torch_threads(n: int):
    """``torch.set_num_threads(n)`` inside the block, the caller's count given back after
    (the experiments run on one thread, so their timings are per-thread figures)."""
    n = check_int("n", n, 1)
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
