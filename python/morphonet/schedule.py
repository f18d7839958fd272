"""Temperature annealing and the enforced sparsity schedule (pure functions of the epoch)."""

from __future__ import annotations

import math

import torch

from .config import DISTRIBUTIONS, MorphoConfig
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


def _erk_raw(layer) -> float:
    """Erdős–Rényi(-kernel) density factor of a layer: Σ dims / Π dims of its weight
    ((out + in)/(out·in) for a linear layer, + the kernel taps for a convolution)."""
    shape = tuple(layer.weight.shape)
    return sum(shape) / math.prod(shape)


def layer_budgets(model: MorphoModel, target: float, distribution: str) -> list[int]:
    """Live connections each masked layer may keep so that the model's sparsity is
    ``target`` with the layers shared out by ``distribution`` ("uniform": density equal
    everywhere; "erk": density ∝ `_erk_raw`). Water filling: a layer is never asked to grow
    (its cap is its current live count); what a capped layer cannot give, the others give in
    proportion. Rounded by largest remainder, so the budgets sum to the model's target count
    exactly whenever the caps allow it."""
    if distribution not in ("uniform", "erk"):
        raise ValueError(f"distribution must be 'uniform' or 'erk' here, got {distribution!r}")
    layers = model.masked_layers()
    sizes = [layer.n_connections() for layer in layers]
    caps = [float(layer.n_live()) for layer in layers]
    raw = [1.0 if distribution == "uniform" else _erk_raw(layer) for layer in layers]
    keep_total = sum(sizes) - int(math.floor(target * sum(sizes) + 1e-9))
    fixed: set[int] = set()
    keep = list(caps)
    while True:
        free = [i for i in range(len(layers)) if i not in fixed]
        room = keep_total - sum(caps[i] for i in fixed)
        weight = sum(raw[i] * sizes[i] for i in free)
        if not free or weight <= 0:
            break
        eps = max(room, 0.0) / weight
        over = [i for i in free if eps * raw[i] * sizes[i] > caps[i]]
        if not over:
            for i in free:
                keep[i] = eps * raw[i] * sizes[i]
            break
        fixed.update(over)
    base = [int(math.floor(k + 1e-9)) for k in keep]
    short = min(keep_total, int(sum(caps))) - sum(base)
    order = sorted(range(len(layers)), key=lambda i: base[i] - keep[i])
    for i in order:
        if short <= 0:
            break
        if base[i] < caps[i]:
            base[i] += 1
            short -= 1
    return base


def _closest_prefix(cum: torch.Tensor, need: float) -> int:
    """Length of the smallest prefix whose cumulative size reaches ``need``, or one less
    when that lands closer to it."""
    k = min(int(torch.searchsorted(cum, torch.tensor(float(need)))) + 1, cum.numel())
    if k > 1 and abs(float(cum[k - 2]) - need) < abs(float(cum[k - 1]) - need):
        k -= 1
    return k


@torch.no_grad()
def enforce_sparsity(model: MorphoModel, target: float, by: str = "mask",
                     distribution: str = "global") -> int:
    """Hard-prune the live mask units with the smallest score (`unit_scores`: the mask value
    σ(M/T), or the saliency) until the fraction of pruned connections reaches ``target``
    (never beyond it by more than one unit per ranking). Each layer keeps at least its best
    unit. Returns the number of connections pruned by this call.

    ``distribution`` "global" ranks all units of all layers together; "uniform" and "erk"
    first give each layer its share of the live connections (`layer_budgets`) and rank
    within each layer. A unit covering s connections counts s. Progressive: called after
    every epoch with the schedule's current target, so structure commits gradually and the
    final sparsity equals the target (within a unit per layer for block and neuron masks).
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must be in [0, 1), got {target!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    layers = model.masked_layers()
    total = model.n_connections()
    need = int(math.floor(target * total + 1e-9)) - (total - model.n_live())
    if need <= 0:
        return 0
    if distribution != "global":
        pruned = 0
        for layer, keep in zip(layers, layer_budgets(model, target, distribution)):
            pruned += _prune_layer(layer, layer.n_live() - keep, by)
        return pruned
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
    if not order.numel():
        return 0
    chosen = order[:_closest_prefix(torch.cumsum(z[order], 0), need)]
    pruned = 0
    for li, layer in enumerate(layers):
        sel = ix[chosen[o[chosen] == li]]
        if sel.numel():
            drop = torch.zeros(layer.mask_logits.numel(), dtype=torch.bool,
                               device=layer.mask_logits.device)
            drop[sel.to(drop.device)] = True
            pruned += layer.prune_units(drop.reshape(layer.mask_logits.shape))
    return pruned


def _prune_layer(layer, need: int, by: str) -> int:
    """Prune about ``need`` connections of one layer: its lowest-scoring live units, never
    its best one. Returns the connections pruned."""
    if need <= 0:
        return 0
    live = ~layer.pruned_units().reshape(-1)
    score = unit_scores(layer, by).reshape(-1).float()
    live[torch.argmax(torch.where(live, score, float("-inf")))] = False
    idx = torch.nonzero(live).flatten()
    if not idx.numel():
        return 0
    s = score[idx]
    z = layer.unit_sizes().reshape(-1).to(idx.device)[idx].float()
    order = torch.argsort(s.cpu(), stable=True).to(idx.device)
    chosen = idx[order[:_closest_prefix(torch.cumsum(z[order], 0).cpu(), need)]]
    drop = torch.zeros(layer.mask_logits.numel(), dtype=torch.bool,
                       device=layer.mask_logits.device)
    drop[chosen] = True
    return layer.prune_units(drop.reshape(layer.mask_logits.shape))
