"""MorphoTrainer: MorphoNet Pro's training recipe, doing what its README says, on the one
training loop (`morphonet.loop.TrainLoop`).

Per epoch: temperature annealed (`AnnealTemperature`); the weights step with AdamW and the mask
logits with their own Adam (separate learning rates); loss = cross-entropy + λ(epoch)·mean
σ(M/T) (`MaskPenalty`: λ per layer, scaled by the schedule, zero during warmup); gradients
clipped; then the sparsity schedule is *enforced* by progressive hard pruning
(`EnforceSparsity`), so the final sparsity is ``target_sparsity``. Model selection uses the
validation split only, among the epochs whose sparsity has reached the target (within 2
points): after ``train()`` the model holds the weights of that best validation epoch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
from torch import Tensor

from morpho_kernels.checks import check_instance
from morpho_kernels.distributed import resolve_group
from morpho_kernels.nn import mask_parameters

from ..checks import resolve_device
from ..loop import Callback, DataParallel, Hook, TrainLoop, probe, rank_shard
from .config import MorphoConfig
from .hooks import TOLERANCE, AnnealTemperature, EnforceSparsity, MaskPenalty
from .models import MorphoModel
from .schedule import max_reachable_sparsity, penalty_scale_at, temperature_at

__all__ = ["MorphoTrainer", "hold_out"]


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
        self.config = check_instance("config", config or model.config, MorphoConfig).validate()
        self.log = log
        self.device = resolve_device(self.config.device)
        masks = mask_parameters(model)  # mask logits and head gates: their own Adam, no decay
        ids = {id(p) for p in masks}
        weights = [p for p in model.parameters() if id(p) not in ids]
        self.weight_opt = torch.optim.AdamW(weights, lr=self.config.weight_lr,
                                            weight_decay=self.config.weight_decay)
        self.mask_opt = torch.optim.Adam(masks, lr=self.config.mask_lr)

    def hooks(self, group: Any = None) -> list[Hook]:
        """The structure decisions of the recipe, in the order the loop calls them; with a
        process ``group``, data-parallel: `DataParallel` first (gradients averaged) and the
        pruning scores averaged over the group."""
        cfg, model = self.config, self.model
        return ([DataParallel(group)] if group is not None else []) + [
            AnnealTemperature(lambda e: temperature_at(cfg, e)),
            MaskPenalty(model.sparsity_penalty, lambda e: penalty_scale_at(cfg, e)),
            EnforceSparsity(model, cfg, group)]

    def train(self, X_train, y_train, X_val=None, y_val=None, verbose: bool = True,
              callback: Optional[Callable[[dict], None]] = None, *,
              checkpoint: Optional[Union[str, os.PathLike]] = None,
              resume: bool = False, group: Any = "auto") -> dict[str, Any]:
        """Train for ``config.epochs``; returns the statistics dict.

        Keys: train_time (s), final_loss (last epoch's training loss), final_sparsity
        (fraction of prunable connections removed), final_density, layer_density (live
        fraction of each masked layer, in `masked_layers` order), total_params,
        effective_params (live weights + biases + norm parameters, no mask logits),
        best_val_acc (None without validation data), best_epoch, loss_history,
        sparsity_history, temperature_history, val_acc_history, target_history,
        epochs_to_target. ``callback`` receives each epoch's record.

        ``checkpoint``: a file written (atomically, checksummed) after every epoch;
        ``resume=True`` continues a killed run from it, with the same result as an
        uninterrupted run. The checkpoint holds the model with its structure (pruned units are
        mask logits of -inf), both optimizers, the epoch (the schedule's position: temperature,
        penalty scale and sparsity target are functions of it), the shuffling generator, the
        torch RNG, the history and the best epoch.

        ``group`` (data-parallel training with ``torch.distributed``, e.g. under torchrun):
        a process group (``torch.distributed.group.WORLD``): every rank passes the same data
        and seed and trains on its `morphonet.loop.rank_shard` of the training split (the
        validation split is the same on every rank), gradients are averaged (`DataParallel`)
        and the pruning scores averaged before ranking, so the structure, weights and
        optimizer state stay identical on every rank. Give each rank its own ``checkpoint``
        file. None: a single process; "auto" (default): None without torch.distributed, an
        error with more than one rank (`morpho_kernels.distributed.resolve_group`).
        """
        group = resolve_group(group, "prune", "units")
        cfg, model = self.config.validate(), self.model
        if (X_val is None) != (y_val is None):
            raise ValueError("pass both X_val and y_val, or neither")
        x, y = model.check_inputs(X_train, y_train, "train")
        if X_val is not None:
            xv, yv = model.check_inputs(X_val, y_val, "val")
        elif cfg.val_split > 0:
            x, y, xv, yv = hold_out(x, y, cfg.val_split, cfg.seed)
        else:
            xv = yv = None
        x, y = rank_shard(x, y, group)  # (the held-out split is drawn before: the same on all)
        self._check_reachable(cfg)
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        model.to(self.device)
        # every split through the model once, before the first step changes anything
        probe(model, [("train", x, y)] + ([("val", xv, yv)] if xv is not None else []))
        gen = torch.Generator().manual_seed(cfg.seed if cfg.seed is not None else
                                            int(torch.randint(0, 2**31 - 1, ()).item()))
        hooks = self.hooks(group) + ([Callback(callback)] if callback is not None else [])
        loop = TrainLoop(model, [self.weight_opt, self.mask_opt], hooks=hooks,
                         grad_clip=cfg.grad_clip, batch_size=cfg.batch_size, generator=gen,
                         select="val_acc", log=self.log if verbose else None,
                         log_every=max(1, cfg.epochs // 10), checkpoint=checkpoint)
        res = loop.fit((x, y), (xv, yv) if xv is not None else None, cfg.epochs,
                       resume=resume)
        return self._stats(res, xv is not None)

    def _check_reachable(self, cfg: MorphoConfig) -> None:
        reach = max_reachable_sparsity(self.model)
        if cfg.target_sparsity - TOLERANCE > reach:
            mcfg = self.model.config  # the units are the model's
            raise ValueError(
                f"target_sparsity={cfg.target_sparsity} cannot be reached on this model: every "
                f"masked layer keeps at least one {mcfg.mask_granularity} unit"
                + (f" ({mcfg.block_size}×{mcfg.block_size} blocks)"
                   if mcfg.mask_granularity == "block" else "")
                + f", so at most {reach:.1%} of its connections can be pruned; use smaller "
                "units (a smaller block_size, element masks) or a lower target_sparsity")

    def _stats(self, res: dict[str, Any], has_val: bool) -> dict[str, Any]:
        cfg, model = self.config, self.model
        hist = res["history"]
        final = model.sparsity()
        if abs(final - cfg.target_sparsity) > TOLERANCE + 1e-9:
            largest = max(int(layer.unit_sizes().max()) for layer in model.masked_layers())
            warnings.warn(
                f"final sparsity {final:.3f} is {100 * (final - cfg.target_sparsity):+.1f} "
                f"points from target_sparsity={cfg.target_sparsity} (tolerance ±2): the "
                f"{cfg.mask_granularity} mask units (up to {largest} connections, "
                f"{largest / model.n_connections():.1%} of the model) are too coarse for "
                f"the '{cfg.sparsity_distribution}' distribution to land closer; use smaller "
                "units" + (" or sparsity_distribution='global'"
                           if cfg.sparsity_distribution != "global" else ""), stacklevel=3)
        if has_val and res["best_epoch"] is None:
            warnings.warn("no epoch reached the target sparsity within 2 points, so no epoch "
                          "was eligible for model selection: the model holds the last epoch's "
                          "weights and best_val_acc is None", stacklevel=3)
        total, effective = model.count_params()
        reached = [r["epoch"] for r in hist if r["sparsity"] >= cfg.target_sparsity - TOLERANCE]
        return {
            "train_time": res["train_time"],
            "final_loss": hist[-1]["loss"],
            "final_sparsity": final,
            "final_density": 1.0 - final,
            "layer_density": [model.layer_live(layer) / layer.n_connections()
                              for layer in model.masked_layers()],
            "total_params": total,
            "effective_params": effective,
            "best_val_acc": res["best_value"],
            "best_epoch": res["best_epoch"],
            "epochs_to_target": reached[0] + 1 if reached else None,
            "loss_history": [r["loss"] for r in hist],
            "sparsity_history": [r["sparsity"] for r in hist],
            "temperature_history": [r["temperature"] for r in hist],
            "val_acc_history": [r.get("val_acc") for r in hist],
            "target_history": [r["target"] for r in hist],
        }


def hold_out(x: Tensor, y: Tensor, frac: float, seed: Optional[int]):
    """(x_train, y_train, x_val, y_val): a random ``frac`` of the rows held out for
    validation (seeded by ``seed``, 0 when None)."""
    n_val = max(1, int(round(x.shape[0] * frac)))
    if n_val >= x.shape[0]:
        raise ValueError(f"val_split={frac} leaves no training data for {x.shape[0]} rows")
    g = torch.Generator().manual_seed(seed if seed is not None else 0)
    perm = torch.randperm(x.shape[0], generator=g)
    return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]
