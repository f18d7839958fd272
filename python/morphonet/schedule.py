"""Temperature annealing and the enforced sparsity schedule (pure functions of the epoch)."""

from __future__ import annotations

import math

import torch

from .config import MorphoConfig
from .models import MorphoModel


def temperature_at(config: MorphoConfig, epoch: int) -> float:
    """T = max(temp_end, temp_start − (temp_start − temp_end)·epoch/epochs): the published
    trainer's max(0.5, 2 − 1.5·epoch/E) with the defaults."""
    t = config.temp_start - (config.temp_start - config.temp_end) * epoch / config.epochs
    return max(config.temp_end, t)


def schedule_progress(config: MorphoConfig, epoch: int) -> float:
    """Fraction in [0, 1] of the way from no sparsity to ``target_sparsity`` after ``epoch``
    (0-based), in the shape of ``sparsity_schedule``: 0 before the prune window, 1 from its
    last epoch on; "constant" is 1 from the window's first epoch."""
    start, end = config.prune_window()
    if epoch < start:
        return 0.0
    if config.sparsity_schedule == "constant" or epoch >= end:
        return 1.0
    p = (epoch - start + 1) / (end - start + 1)
    if config.sparsity_schedule == "linear":
        return p
    return 0.5 * (1.0 - math.cos(math.pi * p))


def target_sparsity_at(config: MorphoConfig, epoch: int) -> float:
    """The sparsity the trainer enforces at the end of ``epoch``."""
    return config.target_sparsity * schedule_progress(config, epoch)


def penalty_scale_at(config: MorphoConfig, epoch: int) -> float:
    """Multiplier of the sparsity penalty λ during ``epoch``: 0 during warmup, then the
    schedule's shape ("the penalty rises gradually"), at least 0.1 once warmup is over."""
    if epoch < config.warmup_epochs:
        return 0.0
    return max(0.1, schedule_progress(config, epoch))


PRUNE_SCORES = ("mask", "saliency")


def unit_scores(layer, by: str = "mask") -> torch.Tensor:
    """Importance of each mask unit, unit-shaped: ``"mask"`` ranks by the learned mask value
    σ(M/T); ``"saliency"`` by the mean |W ⊙ σ(M/T)| over the unit's connections (the learned
    mask times the weight it gates: what the unit contributes to the function)."""
    if by == "mask":
        return layer.unit_mask()
    if by == "saliency":
        eff = (layer.weight * layer.get_mask()).abs().float()
        return layer._reduce(eff) / layer.unit_sizes().to(eff.device)
    raise ValueError(f"by must be one of {PRUNE_SCORES}, got {by!r}")


@torch.no_grad()
def enforce_sparsity(model: MorphoModel, target: float, by: str = "mask") -> int:
    """Hard-prune the live mask units with the smallest mask value σ(M/T), across all layers,
    until the fraction of pruned connections reaches ``target`` (never beyond it by more than
    one unit). Each layer keeps at least its best unit. Returns the number of connections
    pruned by this call.

    Units are ranked by their mask value; a unit covering s connections counts s. Progressive:
    called after every epoch with the schedule's current target, so structure commits
    gradually and the final sparsity equals the target.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must be in [0, 1), got {target!r}")
    layers = model.masked_layers()
    total = model.n_connections()
    need = int(math.floor(target * total + 1e-9)) - (total - model.n_live())
    if need <= 0:
        return 0
    scores, sizes, owner, index = [], [], [], []
    for li, layer in enumerate(layers):
        live = ~layer.pruned_units().reshape(-1)
        # a layer's best unit is never a candidate: pruning a whole layer disconnects the net
        live[torch.argmax(torch.where(live, unit_scores(layer, by).reshape(-1).float(),
                                      float("-inf")))] = False
        idx = torch.nonzero(live).flatten()
        scores.append(unit_scores(layer, by).reshape(-1)[idx].float().cpu())
        sizes.append(layer.unit_sizes().reshape(-1).to(idx.device)[idx].float().cpu())
        owner.append(torch.full((idx.numel(),), li, dtype=torch.long))
        index.append(idx.cpu())
    s, z, o, ix = (torch.cat(t) for t in (scores, sizes, owner, index))
    order = torch.argsort(s, stable=True)
    cum = torch.cumsum(z[order], 0)
    # smallest prefix reaching `need`, or one unit less when that lands closer to the target
    k = int(torch.searchsorted(cum, torch.tensor(float(need)))) + 1
    k = min(k, order.numel())
    if k > 1 and abs(float(cum[k - 2]) - need) < abs(float(cum[k - 1]) - need):
        k -= 1
    chosen = order[:k]
    pruned = 0
    for li, layer in enumerate(layers):
        sel = ix[chosen[o[chosen] == li]]
        if sel.numel():
            drop = torch.zeros(layer.mask_logits.numel(), dtype=torch.bool,
                               device=layer.mask_logits.device)
            drop[sel.to(drop.device)] = True
            pruned += layer.prune_units(drop.reshape(layer.mask_logits.shape))
    return pruned
