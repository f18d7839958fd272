"""Temperature annealing and the enforced sparsity schedule (pure functions of the epoch)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from morpho_kernels.checks import check_choice, check_fraction
from morpho_kernels.distributed import group_mean, resolve_group

from .config import DISTRIBUTIONS, PRUNE_SCORES, MorphoConfig
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


def unit_scores(layer, by: str = "mask") -> torch.Tensor:
    """Importance of each mask unit, unit-shaped: ``"mask"`` ranks by the learned mask value
    σ(M/T); ``"saliency"`` by the mean |W ⊙ σ(M/T)| over the unit's connections (the learned
    mask times the weight it gates: what the unit contributes to the function)."""
    check_choice("by", by, PRUNE_SCORES)
    if by == "mask":
        return layer.unit_mask()
    eff = (layer.weight * layer.get_mask()).abs().float()
    return layer.reduce_units(eff) / layer.unit_sizes().to(eff.device)


def _erk_raw(layer) -> float:
    """Erdős–Rényi(-kernel) density factor of a layer: Σ dims / Π dims of its weight
    ((out + in)/(out·in) for a linear layer, + the kernel taps for a convolution)."""
    shape = tuple(layer.weight.shape)
    return sum(shape) / math.prod(shape)


def layer_budgets(model: MorphoModel, target: float, distribution: str) -> list[int]:
    """Live connections each masked layer may keep so that the model's sparsity is
    ``target`` with the layers shared out by ``distribution`` ("uniform": density equal
    everywhere; "erk": density ∝ `_erk_raw`), within bounds: a layer never grows back (its
    cap is its live count, `MorphoModel.layer_live`) and keeps at least its largest live unit
    (pruning never removes a layer's last unit); what a bounded layer cannot give or take,
    the others share in proportion (water filling). Rounded by largest remainder, so the
    budgets sum to the model's target count exactly whenever the bounds allow it."""
    check_choice("distribution", distribution, ("uniform", "erk"))
    target = check_fraction("target", target, hi_open=True)
    layers = model.masked_layers()
    sizes = [layer.n_connections() for layer in layers]
    caps = [model.layer_live(layer) for layer in layers]
    floors = [min(cap, _largest_unit(layer)) for layer, cap in zip(layers, caps)]
    share = [size * (1.0 if distribution == "uniform" else _erk_raw(layer))
             for layer, size in zip(layers, sizes)]
    keep_total = sum(sizes) - int(math.floor(target * sum(sizes) + 1e-9))
    keep_total = min(max(keep_total, sum(floors)), sum(caps))

    def filled(eps: float) -> list[float]:
        return [min(max(eps * w, f), c) for w, f, c in zip(share, floors, caps)]

    lo, hi = 0.0, max(c / w for c, w in zip(caps, share))
    for _ in range(200):  # Σ filled(eps) rises with eps: bisect for keep_total
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sum(filled(mid)) < keep_total else (lo, mid)
    keep = filled(hi)
    base = [min(int(math.floor(k + 1e-9)), c) for k, c in zip(keep, caps)]
    short = keep_total - sum(base)
    by_remainder = sorted(range(len(layers)), key=lambda i: keep[i] - base[i], reverse=True)
    for i in by_remainder:  # largest remainders gain a connection first
        if short > 0 and base[i] < caps[i]:
            base[i] += 1
            short -= 1
    for i in reversed(by_remainder):  # (not reached in practice) smallest give one back first
        if short < 0 and base[i] > floors[i]:
            base[i] -= 1
            short += 1
    return base


def max_reachable_sparsity(model: MorphoModel) -> float:
    """An upper bound on the sparsity `enforce_sparsity` can reach from the model's current
    state: every masked layer keeps at least one live unit, at best its smallest (pruning
    never grows back). With block masks of layers only a few blocks across, this can be far
    below 1 (a layer smaller than one block cannot be pruned at all)."""
    keep = 0.0
    for layer in model.masked_layers():
        live = ~layer.pruned_units()
        if live.any():
            keep += float(layer.unit_sizes().to(live.device)[live].min())
    return 1.0 - keep / model.n_connections()


def _largest_unit(layer) -> int:
    """Connections in the layer's largest live mask unit (0 when none is live)."""
    live = ~layer.pruned_units()
    return int(round(float(layer.unit_sizes().to(live.device)[live].max()))) if live.any() else 0


def _closest_fill(sizes: torch.Tensor, need: float) -> torch.Tensor:
    """Which units of a ranking (``sizes`` in rank order, lowest score first) to prune so
    that their total size is close to ``need``: the longest prefix that fits, then, walking
    on down the ranking, every further unit that still fits (a smaller unit after a big one
    that did not), then the one skipped unit that lands closest, if that is closer than
    stopping short. With equal sizes this is the prefix closest to ``need``; with mixed sizes
    (edge blocks, neurons of different fan-in, a head of single connections) it lands within
    half the smallest unit skipped, where a prefix could miss by half the largest. Returns a
    bool tensor over the ranking."""
    n = sizes.numel()
    take = torch.zeros(n, dtype=torch.bool)
    if n == 0 or need <= 0:
        return take
    cum = torch.cumsum(sizes, 0)
    k = int(torch.searchsorted(cum, torch.tensor(float(need), dtype=cum.dtype), right=True))
    take[:k] = True
    gap = float(need) - (float(cum[k - 1]) if k else 0.0)
    if k == n or gap == 0:
        return take
    lo, hi = float(sizes[k:].min()), float(sizes.max())
    if lo == hi == float(sizes.min()):  # equal sizes (element masks): the closest prefix
        if lo - gap <= gap:  # one more unit lands as close or closer (ties: one more)
            take[k] = True
        return take
    if gap >= lo:  # walk on down the ranking, taking every unit that still fits
        rest = sizes[k:]
        suffix_min = torch.flip(torch.cummin(torch.flip(rest, (0,)), 0).values, (0,)).tolist()
        for i, z in enumerate(rest.tolist()):
            if gap < suffix_min[i]:  # nothing further down fits
                break
            if z <= gap:
                take[k + i] = True
                gap -= z
    if gap > 0:
        skipped = ~take
        skipped[:k] = False
        if bool(skipped.any()):
            miss = torch.where(skipped, (sizes - gap).abs(),
                               torch.tensor(float("inf"), dtype=sizes.dtype))
            j = int(torch.argmin(miss))  # the first (lowest-ranked) of equally close ones
            if float(miss[j]) <= gap:  # as close or closer (ties: one more, as a prefix)
                take[j] = True
                gap -= float(sizes[j])
    if abs(gap) > 0.5 * float(sizes.min()):
        exact = _fill_by_size(sizes, need)
        if exact is not None:
            return exact
    return take


# the size search's limits (else the greedy result stands): cells × choices it visits
# (~30 ms typical, ~0.15 s at the limit) and cells × sizes it keeps (8 bytes each)
_DP_BUDGET = 5_000_000
_DP_MEMORY = 2_000_000


def _fill_by_size(sizes: torch.Tensor, need: float) -> Optional[torch.Tensor]:
    """`_closest_fill` for mixed sizes when its greedy pass misses by more than half the
    smallest unit: a dynamic programme over the distinct sizes (within each size the
    lowest-ranked units go first, so the ranking is honoured per size) for the total
    closest to ``need``; among totals within half the smallest unit of it, the one whose
    units rank lowest overall (sum of rank positions). Size-1 units (a head's single
    connections) fill any remaining gap exactly. None when the programme would be too big
    (`_DP_BUDGET`); the greedy result stands then."""
    z = sizes.round().long().tolist()
    by_size: dict[int, list[int]] = {}
    for i, v in enumerate(z):
        by_size.setdefault(v, []).append(i)
    ones = by_size.pop(1, [])
    classes = sorted(by_size)
    if not classes:
        return None
    g = math.gcd(*classes)
    cap = int(math.floor(need)) + max(classes)
    n_cells = cap // g + 1
    if (n_cells * sum(len(by_size[c]) + 1 for c in classes) > _DP_BUDGET
            or n_cells * len(classes) > _DP_MEMORY):
        return None
    inf = float("inf")
    cost = np.full(n_cells, inf)
    cost[0] = 0.0
    choice = []
    for c in classes:
        idx = by_size[c]
        rank_cost = np.concatenate([[0.0], np.cumsum(idx, dtype=np.float64)])
        step = c // g
        best = cost.copy()
        pick = np.zeros(n_cells, dtype=np.int64)
        for j in range(1, len(idx) + 1):
            shift = j * step
            if shift >= n_cells:
                break
            cand = np.full(n_cells, inf)
            cand[shift:] = cost[:n_cells - shift] + rank_cost[j]
            better = cand < best
            best[better] = cand[better]
            pick[better] = j
        cost = best
        choice.append(pick)
    totals = np.arange(n_cells, dtype=np.float64) * g
    filled = totals + np.clip(need - totals, 0, len(ones))
    miss = np.where(np.isfinite(cost), np.abs(filled - need), inf)
    tol = 0.5 * min(classes[0], 1 if ones else classes[0])
    good = miss <= max(tol, float(miss.min()))
    cell = int(np.argmin(np.where(good, cost, inf)))
    take = torch.zeros(len(z), dtype=torch.bool)
    rest = cell
    for c, pick in zip(reversed(classes), reversed(choice)):
        j = int(pick[rest])
        take[by_size[c][:j]] = True
        rest -= j * (c // g)
    f = int(round(filled[cell] - totals[cell]))
    take[ones[:f]] = True
    return take


@torch.no_grad()
def enforce_sparsity(model: MorphoModel, target: float, by: str = "mask",
                     distribution: str = "global", final: Optional[float] = None, *,
                     group: Any = "auto") -> int:
    """Hard-prune the live mask units with the smallest score (`unit_scores`: the mask value
    σ(M/T), or the saliency) until the fraction of pruned connections is as close to ``target``
    as whole units allow. Each layer keeps at least its best unit. Returns the number of
    connections pruned by this call.

    ``distribution`` "global" ranks all units of all layers together (within half a unit of the
    target, see `_closest_fill`; a Transformer unit straddling a pruned head counts at its full
    size, so there a call can stop short and the next calls close the gap). "uniform" and "erk"
    first give each layer its share of the live connections (`layer_budgets`), then prune each
    layer by its own ranking; what unit rounding leaves over or under carries to the next layer,
    as far as that layer can take it within half of its own largest unit (so no layer, a
    classifier head of single connections least of all, pays for the coarse layers before it).
    Exact for element masks; with block or neuron masks off by about a unit, or more when the
    layers' bounds (nothing grows back, every layer keeps a unit) make the target unreachable
    (`max_reachable_sparsity`). A unit covering s connections counts s. Progressive: called
    after every epoch with the schedule's current target, so structure commits gradually.
    ``final`` (the schedule's last target, ≥ ``target``): units are then pruned only from a
    selection that lands on ``final`` (planned with the current scores), so that with coarse
    units the early, small steps do not prune a mix of sizes from which the final target can no
    longer be reached (pruning never grows back).

    ``group`` (data-parallel training, `morpho_kernels.distributed.resolve_group`): with a
    process group the unit scores are averaged over its ranks before ranking, so every replica
    prunes the same units (every rank must call); None: rank-local; "auto" (default):
    rank-local without torch.distributed, an error with more than one rank.
    """
    group = resolve_group(group, "prune", "units")
    target = check_fraction("target", target, hi_open=True)
    check_choice("distribution", distribution, DISTRIBUTIONS)
    if final is not None and not target <= final < 1.0:
        raise ValueError(f"final must be in [target, 1), got {final!r} with target {target!r}")
    layers = model.masked_layers()
    total = model.n_connections()
    dead = total - model.n_live()
    need = int(math.floor(target * total + 1e-9)) - dead
    if need <= 0:
        return 0
    if distribution != "global":
        # each layer to its budget, plus what rounding left over, up to half its own unit
        budgets = layer_budgets(model, target, distribution)
        finals = (layer_budgets(model, final, distribution) if final is not None
                  else [None] * len(layers))
        carry = pruned = 0
        for layer, keep, keep_final in zip(layers, budgets, finals):
            live = model.layer_live(layer)
            half = _largest_unit(layer) // 2
            _prune_ranked([layer], live - keep + max(-half, min(half, carry)), by,
                          None if keep_final is None else live - keep_final, group, model)
            now = live - model.layer_live(layer)
            carry += (live - keep) - now
            pruned += now
        return pruned
    plan = None if final is None else int(math.floor(final * total + 1e-9)) - dead
    return _prune_ranked(layers, need, by, plan, group, model)


# How often the connectivity rule of `_prune_ranked` fired since import (read it to see
# whether a run relied on it): "calls": choices it replaced (a step's or a plan's), "units"
# and "connections": those of the replaced choices it kept.
connectivity_kept = {"calls": 0, "units": 0, "connections": 0}
_CONNECTIVITY_RULE = True  # tests switch it off to compare with the old pruning


def _prune_ranked(layers: list, need: float, by: str, plan: Optional[float] = None,
                  group: Any = None, model: Optional[MorphoModel] = None) -> int:
    """Rank the live units of ``layers`` together by score (`unit_scores`), never a layer's
    best one, and hard-prune the lowest-ranked units whose total size is closest to ``need``
    connections (`_closest_fill`); with ``plan`` (> need), only from among the units
    `_closest_fill` would choose for ``plan`` connections; with a process ``group``, the
    scores are the group's mean (`enforce_sparsity`). Returns the connections pruned.

    With ``model`` (the model ``layers`` belong to), the connectivity rule: a choice (the
    plan's, then the step's) that would leave an output that some input reaches now reached
    by none (`MorphoModel.output_reach`) is replaced by the closest choice that does not
    (`_Connectivity.choose`); a choice that keeps every output reached is pruned as it is,
    so pruning that never disconnects is unchanged. Counted in `connectivity_kept`, with a
    warning."""
    if need <= 0:
        return 0
    scores, sizes, owner, index = [], [], [], []
    for li, layer in enumerate(layers):
        live = ~layer.pruned_units().reshape(-1)
        score = unit_scores(layer, by).reshape(-1).float()
        if group is not None:  # every rank ranks the same numbers
            score = group_mean(score, group)
        # a layer's best unit is never a candidate: pruning a whole layer disconnects the net
        live[torch.argmax(torch.where(live, score, float("-inf")))] = False
        idx = torch.nonzero(live).flatten()
        scores.append(score[idx].cpu())
        sizes.append(layer.unit_sizes().reshape(-1).to(idx.device)[idx].double().cpu())
        owner.append(torch.full((idx.numel(),), li, dtype=torch.long))
        index.append(idx.cpu())
    s, z, o, ix = (torch.cat(t) for t in (scores, sizes, owner, index))
    if not s.numel():
        return 0
    order = torch.argsort(s, stable=True)
    rule = _Connectivity(model, layers, z, o, ix) if model is not None and \
        _CONNECTIVITY_RULE else None

    def pick(order: Tensor, need: float) -> Tensor:
        chosen = order[_closest_fill(z[order], need)]
        return chosen if rule is None else rule.choose(order, chosen, need)

    if plan is not None and plan > need:
        order = pick(order, plan)  # still in rank order
    chosen = pick(order, need)
    pruned = 0
    for li, layer in enumerate(layers):
        sel = ix[chosen[o[chosen] == li]]
        if sel.numel():
            drop = torch.zeros(layer.mask_logits.numel(), dtype=torch.bool,
                               device=layer.mask_logits.device)
            drop[sel.to(drop.device)] = True
            pruned += layer.prune_units(drop.reshape(layer.mask_logits.shape))
    return pruned


# The connectivity rule searches every connected choice when the candidates are at most this
# many (block and neuron masks of small layers: 2^12 subsets at most, far fewer tried since a
# choice that cuts an output off is not extended); beyond, it bars units one at a time.
_EXACT_UNITS = 12


class _Connectivity:
    """`_prune_ranked`'s connectivity rule for one call: whether pruning a set of candidates
    (positions into ``z`` sizes, ``o`` layer indices into ``layers``, ``ix`` flat unit
    indices) leaves every output reached that is reached now (`MorphoModel.output_reach`),
    and a choice that does (`choose`)."""

    def __init__(self, model: MorphoModel, layers: list, z: Tensor, o: Tensor, ix: Tensor):
        self.model, self.z, self.o, self.ix = model, z, o, ix
        self.before = model.output_reach()
        self.all_layers = model.masked_layers()
        self.pos = [next(k for k, m in enumerate(self.all_layers) if m is layer)
                    for layer in layers]
        self.live = [(~m.pruned_units()).reshape(-1) for m in self.all_layers]

    def connected(self, cands: Tensor) -> bool:
        """True when pruning ``cands`` cuts no reached output off."""
        trial = [t.clone() for t in self.live]
        owner = self.o[cands]
        for li, k in enumerate(self.pos):
            idx = self.ix[cands[owner == li]]
            trial[k][idx.to(trial[k].device)] = False
        shaped = [t.reshape(m.mask_logits.shape) for t, m in zip(trial, self.all_layers)]
        return bool((self.model.output_reach(shaped) | ~self.before).all())

    def choose(self, order: Tensor, chosen: Tensor, need: float) -> Tensor:
        """``chosen`` (`_closest_fill`'s choice from ``order``, in rank order) when it stays
        connected. Else, among at most `_EXACT_UNITS` candidates, the connected choice from
        ``order`` closest to ``need`` (among those within half the smallest unit of the
        closest, the lowest-ranked, as `_fill_by_size` decides); among more, the first unit
        of ``chosen``, in rank order, whose pruning (after the units before it) cuts an
        output off is barred, as a layer's best unit is, and `_closest_fill` chooses again
        from the rest, until a choice stays connected. Counted in `connectivity_kept`."""
        if self.before is None or not chosen.numel() or self.connected(chosen):
            return chosen
        first, z = chosen, self.z
        if order.numel() <= _EXACT_UNITS:
            zs = [float(z[c]) for c in order.tolist()]
            half = 0.5 * min(zs)
            found: list[tuple[float, int, list[int]]] = []  # (miss, rank cost, positions)

            def extend(start: int, taken: list[int], total: float) -> None:
                found.append((abs(total - need), sum(taken), taken))
                for j in range(start, len(zs)):
                    # past need a bigger total only misses by more; a choice that cuts an
                    # output off is not extended (fewer connections never reach more)
                    if total + zs[j] - need <= max(half, min(f[0] for f in found)) and \
                            self.connected(order[taken + [j]]):
                        extend(j + 1, taken + [j], total + zs[j])

            extend(0, [], 0.0)
            tol = max(half, min(f[0] for f in found))
            best = min((f for f in found if f[0] <= tol), key=lambda f: (f[1], f[0]))
            chosen = order[best[2]]
        else:
            barred = torch.zeros(z.numel(), dtype=torch.bool)
            while not self.connected(chosen):
                # the shortest disconnecting prefix (fewer live connections never reach
                # more, so the prefixes that stay connected are those below a bound)
                lo, hi = 0, chosen.numel()  # chosen[:lo] stays connected, [:hi] does not
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if self.connected(chosen[:mid]) else (lo, mid)
                barred[chosen[hi - 1]] = True
                rest = order[~barred[order]]
                chosen = rest[_closest_fill(z[rest], need)]
        is_new = torch.zeros(z.numel(), dtype=torch.bool)
        is_new[chosen] = True
        kept = first[~is_new[first]]
        connectivity_kept["calls"] += 1
        connectivity_kept["units"] += kept.numel()
        connectivity_kept["connections"] += int(round(float(z[kept].sum())))
        warnings.warn("enforce_sparsity kept mask units whose pruning would have cut an "
                      "output off from every input (the sparsity target can be missed by "
                      "about those units; counts in morphonet.masks.schedule."
                      "connectivity_kept)", RuntimeWarning, stacklevel=5)
        return chosen
