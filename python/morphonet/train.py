"""MorphoTrainer: MorphoNet Pro's training recipe, doing what its README says.

Per epoch: temperature annealed; the weights step with AdamW and the mask logits with their
own Adam (separate learning rates); loss = cross-entropy + λ(epoch)·mean σ(M/T) (λ per layer,
scaled by the schedule, zero during warmup); gradients clipped; then the sparsity schedule is
*enforced* by progressive hard pruning (``schedule.enforce_sparsity``), so the final sparsity
is ``target_sparsity``. Model selection uses the validation split only, among the epochs whose
sparsity has reached the target (within 2 points): after ``train()`` the model holds the
weights of that best validation epoch.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import MorphoConfig
from .models import MorphoModel, MorphoNetCNN, MorphoNetMLP
from .schedule import (
    enforce_sparsity,
    max_reachable_sparsity,
    penalty_scale_at,
    target_sparsity_at,
    temperature_at,
)
from .transformer import MorphoNetTransformer

IGNORE_INDEX = -100
_TOLERANCE = 0.02  # how far from target_sparsity the final sparsity may land (the issue's ±2)


def resolve_device(device: str) -> torch.device:
    """"auto" → CUDA when available, else CPU; anything else as given (checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    return dev


def _as_tensor(a: Any, name: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach()
    if isinstance(a, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(a))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")


def check_data(model: MorphoModel, x: Any, y: Any, name: str = "train") -> tuple[Tensor, Tensor]:
    """Validate one split before any training: non-empty, same length, finite features,
    integer labels in range and of the right shape (classification: 1-D class indices; a
    language model: one target per token, ``y.shape == x.shape``); for a transformer, integer
    token ids in ``[0, vocab_size)`` and sequences no longer than ``max_seq_len``. What is
    checked is decided by the model itself (its class and its own config), never by a
    trainer's config. Returns (x, y) as tensors (x float32, or int64 token ids for a
    transformer; y int64). The feature shape is checked against an MLP's ``input_dim`` and a
    CNN's ``input_shape`` here; anything else the model cannot take is caught by
    `probe_data` before the first training step."""
    xs, ys = f"X_{name}", f"y_{name}"
    x, y = _as_tensor(x, xs), _as_tensor(y, ys)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{xs} is empty")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{xs} has {x.shape[0]} rows but {ys} has "
                         f"{y.shape[0] if y.dim() else 'no'} labels")
    if y.is_complex():
        raise ValueError(f"{ys} must hold integer class labels, got dtype {y.dtype}")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise ValueError(f"{ys} must hold integer class labels")
    y = y.long()
    cfg = model.config  # the model's own config: what its forward uses
    lm = False
    if isinstance(model, MorphoNetTransformer):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{xs} must hold integer token ids for a transformer, got dtype "
                             f"{x.dtype}")
        if x.dim() != 2 or x.shape[1] < 1:
            raise ValueError(f"{xs} must have shape (batch, seq_len) with seq_len >= 1 for a "
                             f"transformer, got {tuple(x.shape)}")
        x = x.long()
        if x.shape[1] > cfg.max_seq_len:
            raise ValueError(f"{xs} has sequences of length {x.shape[1]} but the model's "
                             f"max_seq_len is {cfg.max_seq_len}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= model.vocab_size:
            raise ValueError(f"{xs} has token ids in [{lo}, {hi}] but the model's vocab_size is "
                             f"{model.vocab_size} (ids must be in [0, {model.vocab_size - 1}])")
        lm = cfg.task == "lm"
        n_out = model.vocab_size if lm else cfg.n_classes
    else:
        if x.is_complex():
            raise ValueError(f"{xs} must hold real features, got dtype {x.dtype}")
        if not _input_shape_fits(model, x):
            raise ValueError(f"{xs} must have {_expected_input(model)}, got shape "
                             f"{tuple(x.shape)}")
        x = x.float()
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{xs} contains {bad} NaN or infinite values")
        n_out = cfg.n_classes
    if lm:
        if tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"{ys} must have {xs}'s shape {tuple(x.shape)} for a language "
                             f"model (one target token per position, {IGNORE_INDEX} where "
                             f"ignored), got {tuple(y.shape)}")
    elif y.dim() != 1:
        hint = (f"; pass class indices, not one-hot (e.g. {ys}.argmax(1))"
                if y.dim() == 2 else "")
        raise ValueError(f"{ys} must be 1-D class indices of shape ({x.shape[0]},), got shape "
                         f"{tuple(y.shape)}{hint}")
    labels = y[y != IGNORE_INDEX]
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_out):
        raise ValueError(f"{ys} has labels in [{int(labels.min())}, {int(labels.max())}] but "
                         f"the model has {n_out} classes (labels must be in [0, {n_out - 1}])")
    return x, y


def _expected_input(model: MorphoModel) -> str:
    """What one batch of ``model``'s input looks like, in words (for error messages)."""
    if isinstance(model, MorphoNetTransformer):
        return (f"integer token ids of shape (batch, seq_len <= {model.config.max_seq_len}) "
                f"in [0, {model.vocab_size})")
    if isinstance(model, MorphoNetCNN):
        shape = model.input_shape
        return (f"shape (batch, {', '.join(map(str, shape))}) or flattened rows "
                f"(batch, {math.prod(shape)})")
    if isinstance(model, MorphoNetMLP):
        return f"shape (batch, {model.config.input_dim})"
    return "the model's input"


def _input_shape_fits(model: MorphoModel, x: Tensor) -> bool:
    """False when ``x``'s shape certainly does not fit an MLP's ``input_dim`` or a CNN's
    ``input_shape`` (per-row size); True otherwise (other models: left to `probe_data`)."""
    if isinstance(model, MorphoNetMLP):
        return x.dim() == 2 and x.shape[1] == model.config.input_dim
    if isinstance(model, MorphoNetCNN):
        return x.dim() >= 2 and x[0].numel() == math.prod(model.input_shape)
    return True


@torch.no_grad()
def probe_data(model: MorphoModel, splits: list[tuple[str, Tensor, Tensor]],
               device: torch.device, rows: int = 2) -> None:
    """Run the first ``rows`` rows of every (name, x, y) split through ``model`` and its loss,
    in eval mode under ``no_grad`` (no parameter, buffer or RNG state changes; the training
    mode is restored), so a split the model cannot take is rejected before any training step
    with a ``ValueError`` naming it (``X_<name>`` for the forward, ``y_<name>`` for the loss)."""
    was = model.training
    model.eval()
    try:
        for name, x, y in splits:
            xb, yb = x[:rows].to(device), y[:rows].to(device)
            try:
                out = model(xb)
            except (ValueError, RuntimeError, IndexError, TypeError) as e:
                raise ValueError(f"X_{name} of shape {tuple(x.shape)} does not fit the model "
                                 f"(expected {_expected_input(model)}): {e}") from e
            try:
                _loss_and_correct(out, yb)
            except (ValueError, RuntimeError, IndexError, TypeError) as e:
                raise ValueError(f"y_{name} of shape {tuple(y.shape)} does not match the "
                                 f"model's output of shape (batch, "
                                 f"{', '.join(map(str, out.shape[1:]))}): {e}") from e
    finally:
        model.train(was)


def _loss_and_correct(out: Tensor, y: Tensor) -> tuple[Tensor, int, int]:
    logits = out.reshape(-1, out.shape[-1])
    target = y.reshape(-1)
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
    keep = target != IGNORE_INDEX
    correct = int((logits.argmax(-1)[keep] == target[keep]).sum())
    return loss, correct, int(keep.sum())


@torch.no_grad()
def evaluate(model: MorphoModel, x: Tensor, y: Tensor, batch_size: int = 1024) -> tuple[float,
                                                                                          float]:
    """(mean loss, accuracy) of ``model`` on (x, y), in eval mode."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    tot_loss, correct, count = 0.0, 0, 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        loss, c, n = _loss_and_correct(model(xb), yb)
        tot_loss += float(loss) * n
        correct, count = correct + c, count + n
    model.train(was)
    return tot_loss / max(count, 1), correct / max(count, 1)


class MorphoTrainer:
    """Trains a MorphoNet model with its config (see the module docstring for the recipe).

    Args:
        model: a `MorphoModel` (MLP, CNN or Transformer).
        config: defaults to ``model.config``.
        log: where progress lines go (default ``print``); set ``verbose=False`` in `train` to
            silence them.
    """

    def __init__(self, model: MorphoModel, config: Optional[MorphoConfig] = None,
                 log: Callable[[str], None] = print):
        if not isinstance(model, MorphoModel):
            raise TypeError(f"model must be a MorphoNet model, got {type(model).__name__}")
        self.model = model
        self.config = (config or model.config).validate()
        self.log = log
        self.device = resolve_device(self.config.device)
        masks = [p for n, p in model.named_parameters() if n.endswith("mask_logits")]
        weights = [p for n, p in model.named_parameters() if not n.endswith("mask_logits")]
        self.weight_opt = torch.optim.AdamW(weights, lr=self.config.weight_lr,
                                            weight_decay=self.config.weight_decay)
        self.mask_opt = torch.optim.Adam(masks, lr=self.config.mask_lr)
        self._weights, self._masks = weights, masks
        self._batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                              for m in model.modules())

    def train(self, X_train, y_train, X_val=None, y_val=None, verbose: bool = True,
              callback: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
        """Train for ``config.epochs``; returns the statistics dict.

        Keys: train_time (s), final_loss (last epoch's training loss), final_sparsity
        (fraction of prunable connections removed), final_density, layer_density (live
        fraction of each masked layer, in `masked_layers` order), total_params,
        effective_params (live weights + biases + norm parameters, no mask logits),
        best_val_acc (None without validation data), best_epoch, loss_history,
        sparsity_history, temperature_history, val_acc_history, target_history,
        epochs_to_target. ``callback`` receives each epoch's record.
        """
        cfg, model = self.config, self.model
        if (X_val is None) != (y_val is None):
            raise ValueError("pass both X_val and y_val, or neither")
        x, y = check_data(model, X_train, y_train, "train")
        if X_val is not None:
            xv, yv = check_data(model, X_val, y_val, "val")
        elif cfg.val_split > 0:
            x, y, xv, yv = _hold_out(x, y, cfg.val_split, cfg.seed)
        else:
            xv = yv = None
        reach = max_reachable_sparsity(model)
        if cfg.target_sparsity - _TOLERANCE > reach:
            mcfg = model.config  # the units are the model's
            raise ValueError(
                f"target_sparsity={cfg.target_sparsity} cannot be reached on this model: every "
                f"masked layer keeps at least one {mcfg.mask_granularity} unit"
                + (f" ({mcfg.block_size}×{mcfg.block_size} blocks)"
                   if mcfg.mask_granularity == "block" else "")
                + f", so at most {reach:.1%} of its connections can be pruned; use smaller "
                "units (a smaller block_size, element masks) or a lower target_sparsity")
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        model.to(self.device)
        # every split through the model once, before the first step changes anything
        probe_data(model, [("train", x, y)] + ([("val", xv, yv)] if xv is not None else []),
                   self.device)
        gen = torch.Generator().manual_seed(cfg.seed if cfg.seed is not None else
                                            int(torch.randint(0, 2**31 - 1, ()).item()))
        hist: dict[str, list] = {k: [] for k in ("loss_history", "sparsity_history",
                                                 "temperature_history", "val_acc_history",
                                                 "target_history")}
        best = {"acc": None, "epoch": None, "state": None}
        t0 = time.perf_counter()
        every = max(1, cfg.epochs // 10)
        for epoch in range(cfg.epochs):
            temp = temperature_at(cfg, epoch)
            model.set_temperature(temp)
            loss = self._epoch(x, y, gen, penalty_scale_at(cfg, epoch))
            target = target_sparsity_at(cfg, epoch)
            enforce_sparsity(model, target, cfg.prune_score, cfg.sparsity_distribution,
                             final=max(target, cfg.target_sparsity))
            sparsity = model.sparsity()
            val_acc = evaluate(model, xv, yv)[1] if xv is not None else None
            rec = {"epoch": epoch, "loss": loss, "sparsity": sparsity, "temperature": temp,
                   "val_acc": val_acc, "target": target}
            for k, key in (("loss", "loss_history"), ("sparsity", "sparsity_history"),
                           ("temperature", "temperature_history"), ("val_acc", "val_acc_history"),
                           ("target", "target_history")):
                hist[key].append(rec[k])
            self._select(best, rec, cfg.target_sparsity)
            if callback is not None:
                callback(rec)
            if verbose and (epoch % every == 0 or epoch == cfg.epochs - 1):
                va = f"  val_acc={val_acc:.3f}" if val_acc is not None else ""
                self.log(f"epoch {epoch + 1:4d}/{cfg.epochs}  T={temp:.2f}  loss={loss:.4f}  "
                         f"sparsity={sparsity:.3f} (target {target:.3f}){va}")
        train_time = time.perf_counter() - t0
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        total, effective = model.count_params()
        reached = [i for i, s in enumerate(hist["sparsity_history"])
                   if s >= cfg.target_sparsity - _TOLERANCE]
        final = model.sparsity()
        if abs(final - cfg.target_sparsity) > _TOLERANCE + 1e-9:
            largest = max(int(layer.unit_sizes().max()) for layer in model.masked_layers())
            warnings.warn(
                f"final sparsity {final:.3f} is {100 * (final - cfg.target_sparsity):+.1f} "
                f"points from target_sparsity={cfg.target_sparsity} (tolerance ±2): the "
                f"{cfg.mask_granularity} mask units (up to {largest} connections, "
                f"{largest / model.n_connections():.1%} of the model) are too coarse for "
                f"the '{cfg.sparsity_distribution}' distribution to land closer; use smaller "
                "units" + (" or sparsity_distribution='global'"
                           if cfg.sparsity_distribution != "global" else ""), stacklevel=2)
        if xv is not None and best["state"] is None:
            warnings.warn("no epoch reached the target sparsity within 2 points, so no epoch "
                          "was eligible for model selection: the model holds the last epoch's "
                          "weights and best_val_acc is None", stacklevel=2)
        return {
            "train_time": train_time,
            "final_loss": hist["loss_history"][-1],
            "final_sparsity": final,
            "final_density": 1.0 - final,
            "layer_density": [model.layer_live(layer) / layer.n_connections()
                              for layer in model.masked_layers()],
            "total_params": total,
            "effective_params": effective,
            "best_val_acc": best["acc"],
            "best_epoch": best["epoch"],
            "epochs_to_target": reached[0] + 1 if reached else None,
            **hist,
        }

    def _epoch(self, x: Tensor, y: Tensor, gen: torch.Generator, pen_scale: float) -> float:
        cfg, model = self.config, self.model
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        total, batches = 0.0, 0
        starts = list(range(0, x.shape[0], cfg.batch_size))
        if len(starts) > 1 and x.shape[0] - starts[-1] == 1 and self._batchnorm:
            starts.pop()  # a last batch of one row joins the one before (batchnorm needs 2)
        for i, j in zip(starts, [*starts[1:], x.shape[0]]):
            idx = perm[i:j]
            xb, yb = x[idx].to(self.device), y[idx].to(self.device)
            loss, _, _ = _loss_and_correct(model(xb), yb)
            full = loss + model.sparsity_penalty(pen_scale) if pen_scale > 0 else loss
            self.weight_opt.zero_grad(set_to_none=True)
            self.mask_opt.zero_grad(set_to_none=True)
            full.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self._weights, cfg.grad_clip)
                torch.nn.utils.clip_grad_norm_(self._masks, cfg.grad_clip)
            self.weight_opt.step()
            self.mask_opt.step()
            total, batches = total + loss.item(), batches + 1
        return total / batches

    def _select(self, best: dict, rec: dict, target: float) -> None:
        """Keep the state of the best validation epoch among those at the target sparsity
        (a model selected before the schedule finished would not be at the target)."""
        if rec["val_acc"] is None or rec["sparsity"] < target - _TOLERANCE:
            return
        if best["acc"] is None or rec["val_acc"] > best["acc"]:
            best["acc"], best["epoch"] = rec["val_acc"], rec["epoch"]
            best["state"] = copy.deepcopy(self.model.state_dict())


def _hold_out(x: Tensor, y: Tensor, frac: float, seed: Optional[int]):
    n_val = max(1, int(round(x.shape[0] * frac)))
    if n_val >= x.shape[0]:
        raise ValueError(f"val_split={frac} leaves no training data for {x.shape[0]} rows")
    g = torch.Generator().manual_seed(seed if seed is not None else 0)
    perm = torch.randperm(x.shape[0], generator=g)
    return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]
