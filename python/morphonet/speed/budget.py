"""A latency budget that chooses the structure.

The user states a target (``target_speedup=3`` over the dense model, or ``latency_ms=`` on this
machine) instead of a sparsity. `plan_for_budget` picks the mask granularity (element → edge
list, block b → block-sparse, neuron → shrink), the block size and a density per layer from
the *measured* speed of the kernels on the running machine (`costmodel.measure_costs`), as
MorphNet weighs channels by their latency cost:

    minimise  Σ_l w_l · g(granularity) · (−ln d_l)      (the predicted loss of capacity)
    subject to other_ms + Σ_l t_l(format, d_l) ≤ budget_ms

w_l is layer l's share of the weights, d_l its density (live fraction), t_l the measured
(interpolated) time of its format at that density, ``other_ms`` the measured time of
everything that is not a planned linear layer. −ln d is the capacity prior: the same removal
hurts more the sparser a layer already is (90% → 2.3, 99% → 4.6), so sparsity is spread
where it buys time; g (`GRANULARITY_COST`) says that whole units lose more than single
connections (coarser: more). Each granularity is solved by Lagrangian relaxation (per layer
the density minimising cost + λ·time; λ bisected until the budget holds), neuron masks by one
keep fraction q over the hidden units (a shrunk layer costs its dense time × q_out·q_in), and
the feasible granularity of least cost wins. A layer planned at density 1 stays dense.

`PlannedTrainer` trains with the plan (MorphoNet's recipe, each layer pruned to its own
density by `EnforceLayerDensities`), `export_plan` exports each layer in its planned format.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from morpho_kernels.checks import check_instance, check_int, check_real
from morpho_kernels.distributed import resolve_group
from morpho_kernels.formats import BLOCK_SIZES
from morpho_kernels.nn import MaskedLinear

from ..loop import Hook, TrainLoop
from ..masks.config import MorphoConfig
from ..masks.export import convert_layer, edge_list_layer, shrink
from ..masks.hooks import TOLERANCE, EnforceSparsity
from ..masks.models import MorphoModel, MorphoNetMLP
from ..masks.schedule import _prune_ranked, schedule_progress
from ..masks.trainer import MorphoTrainer
from ..timing import time_models
from .costmodel import CostModel, LayerShape, measure_costs

__all__ = ["GRANULARITY_COST", "BudgetError", "EnforceLayerDensities", "LayerPlan", "Plan",
           "PlannedTrainer", "export_plan", "layer_shapes", "plan_for_budget", "solve_plan"]

# capacity lost per unit of −ln(density), relative to single connections: a prior (not fitted),
# coarser units cost more because they cannot keep the single strong weights inside them
GRANULARITY_COST = {"element": 1.0, "block16": 1.15, "block32": 1.3, "block64": 1.5,
                    "block128": 1.7, "neuron": 2.0}
_GRID = 96  # densities tried per layer (geometric, from the floor to 1)


@dataclass
class LayerPlan:
    """One layer of a plan: its shape, format ("edge", "block<b>", "neuron" or "dense" when it
    stays dense), density (live fraction of its connections) and predicted ms."""

    name: str
    out_features: int
    in_features: int
    format: str
    density: float
    predicted_ms: float


@dataclass
class Plan:
    """The structure `plan_for_budget` chose (``describe()`` says it in words)."""

    granularity: str  # "element", "block" or "neuron"
    block_size: int
    layers: list[LayerPlan]
    predicted_ms: float
    dense_ms: float
    other_ms: float
    budget_ms: float
    capacity_loss: float
    rows: int
    machine: str
    alternatives: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``element``, ``block<b>`` or ``neuron``."""
        return f"block{self.block_size}" if self.granularity == "block" else self.granularity

    @property
    def densities(self) -> list[float]:
        """Each layer's planned density (connections kept), in layer order."""
        return [lp.density for lp in self.layers]

    @property
    def target_sparsity(self) -> float:
        """The whole model's connection sparsity the plan implies (for `MorphoConfig`)."""
        total = sum(lp.out_features * lp.in_features for lp in self.layers)
        live = sum(lp.density * lp.out_features * lp.in_features for lp in self.layers)
        return 1.0 - live / total

    @property
    def predicted_speedup(self) -> float:
        """Dense model time / predicted time."""
        return self.dense_ms / self.predicted_ms

    def morpho_config(self, base: MorphoConfig) -> MorphoConfig:
        """``base`` with this plan's granularity, block size and overall target sparsity."""
        return base.replace(mask_granularity=self.granularity, block_size=self.block_size,
                            target_sparsity=round(self.target_sparsity, 6))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON)."""
        d = dict(self.__dict__)
        d["layers"] = [dict(lp.__dict__) for lp in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["layers"] = [LayerPlan(**lp) for lp in d["layers"]]
        return cls(**d)

    def describe(self) -> str:
        """The plan in words: granularity, predicted latency against the budget and the dense
        model, each layer's format and density, and the other granularities' outcome."""
        lines = [f"{self.kind} masks: predicted {self.predicted_ms:.3f} ms for {self.rows} rows "
                 f"(budget {self.budget_ms:.3f} ms; dense {self.dense_ms:.3f} ms, "
                 f"{self.predicted_speedup:.2f}× faster), overall sparsity "
                 f"{self.target_sparsity:.1%}, capacity loss {self.capacity_loss:.3f}; "
                 f"{self.other_ms:.3f} ms outside the planned layers; measured on {self.machine}"]
        for lp in self.layers:
            lines.append(f"  {lp.name} ({lp.out_features}×{lp.in_features}): {lp.format} at "
                         f"density {lp.density:.3f} → {lp.predicted_ms:.3f} ms")
        for k, v in self.alternatives.items():
            if k != self.kind:
                lines.append(f"  alternative {k}: " + (
                    f"{v['predicted_ms']:.3f} ms, capacity loss {v['capacity_loss']:.3f}"
                    if v.get("feasible") else f"cannot meet the budget (best "
                    f"{v['predicted_ms']:.3f} ms)"))
        return "\n".join(lines)


# ---------------------------------------------------------------------------- solving


class BudgetError(ValueError):
    """No structure meets the latency budget on this machine (the message says the fastest
    any reaches)."""


def _grid(floor: float) -> list[float]:
    lo = math.log(floor)
    return [math.exp(lo + (0 - lo) * i / (_GRID - 1)) for i in range(_GRID)]


def _solve_units(shapes: Sequence[LayerShape], cost: CostModel, fmt: str, budget: float,
                 other: float, g: float) -> dict[str, Any]:
    """Per-layer densities of one format under the budget (Lagrangian relaxation)."""
    total = sum(s.params for s in shapes)
    options = []
    for s in shapes:
        b = int(fmt[5:]) if fmt.startswith("block") else 1
        floor = max(0.005, min(1.0, b * b / s.params))  # at least one block / 0.5%
        opts = [(1.0, cost.dense_ms(s), 0.0)]  # density 1: the layer stays dense
        for d in _grid(floor)[:-1]:
            opts.append((d, cost.layer_ms(s, fmt, d), g * s.params / total * -math.log(d)))
        options.append(opts)

    def pick(lam: float) -> list[tuple[float, float, float]]:
        return [min(o, key=lambda c: (c[2] + lam * c[1], c[1])) for o in options]

    def time_of(ch) -> float:
        return other + sum(c[1] for c in ch)

    lo, hi = 0.0, 1e-3
    while time_of(pick(hi)) > budget and hi < 1e12:
        hi *= 4
    fastest = [min(o, key=lambda c: c[1]) for o in options]
    if time_of(pick(hi)) > budget:
        return {"feasible": time_of(fastest) <= budget, "choice": fastest,
                "predicted_ms": time_of(fastest), "capacity_loss": sum(c[2] for c in fastest)}
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if time_of(pick(mid)) > budget else (lo, mid)
    ch = pick(hi)
    return {"feasible": True, "choice": ch, "predicted_ms": time_of(ch),
            "capacity_loss": sum(c[2] for c in ch)}


def _chain(shapes: Sequence[LayerShape]) -> bool:
    return all(a.out_features == b.in_features for a, b in zip(shapes, shapes[1:]))


def _solve_neuron(shapes: Sequence[LayerShape], cost: CostModel, budget: float, other: float,
                  g: float) -> Optional[dict[str, Any]]:
    """One keep fraction q of every hidden layer's units (the last layer keeps its outputs):
    a shrunk layer costs its dense time × q_out·q_in (GEMM work). None when the layers are
    not a chain (out of one = in of the next)."""
    if len(shapes) < 2 or not _chain(shapes):
        return None
    total = sum(s.params for s in shapes)
    dense = [cost.dense_ms(s) for s in shapes]

    def at(q: float):
        qs = [q] * (len(shapes) - 1) + [1.0]
        ms = [t * qo * (qs[i - 1] if i else 1.0) for i, (t, qo) in enumerate(zip(dense, qs))]
        loss = sum(g * s.params / total * -math.log(qo * (qs[i - 1] if i else 1.0))
                   for i, (s, qo) in enumerate(zip(shapes, qs)))
        return qs, ms, loss

    floor = 1.0 / min(s.out_features for s in shapes[:-1])
    if other + sum(at(floor)[1]) > budget:
        qs, ms, loss = at(floor)
        return {"feasible": False, "predicted_ms": other + sum(ms), "capacity_loss": loss,
                "choice": list(zip(qs, ms, [0.0] * len(qs)))}
    lo, hi = floor, 1.0
    for _ in range(60):  # the largest q within the budget
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if other + sum(at(mid)[1]) <= budget else (lo, mid)
    qs, ms, loss = at(lo)
    return {"feasible": True, "predicted_ms": other + sum(ms), "capacity_loss": loss,
            "choice": list(zip(qs, ms, [0.0] * len(qs)))}


def solve_plan(shapes: Sequence[LayerShape], cost: CostModel, budget_ms: float,
               dense_ms: Optional[float] = None, other_ms: float = 0.0,
               kinds: Optional[Sequence[str]] = None,
               granularity_cost: Optional[dict[str, float]] = None,
               shrinkable: bool = True) -> Plan:
    """The plan of least predicted capacity loss whose predicted time (``other_ms`` + the
    planned layers) is at most ``budget_ms``, over ``kinds`` ("element", "block<b>",
    "neuron"; default: every one the cost model measured, and neuron for a chain of layers
    when ``shrinkable``: the model can remove whole units, as a MorphoNet MLP without skips).
    Pure logic on a given `CostModel` (module docstring). `BudgetError` (a ValueError) when
    no kind can meet the budget, with the fastest any reaches."""
    budget_ms = check_real("budget_ms", budget_ms, 0, lo_open=True)
    other_ms = check_real("other_ms", other_ms, 0)
    if not shapes:
        raise ValueError("shapes must name at least one layer")
    gc = dict(GRANULARITY_COST, **(granularity_cost or {}))
    dense_ms = (other_ms + sum(cost.dense_ms(s) for s in shapes) if dense_ms is None
                else check_real("dense_ms", dense_ms, 0, lo_open=True))
    measured = set.intersection(*(set(cost.formats(s)) for s in shapes))
    if kinds is None:
        kinds = [k for k in ("element",) + tuple(f"block{b}" for b in BLOCK_SIZES)
                 if (k if k != "element" else "edge") in measured]
        kinds += ["neuron"] if shrinkable else []
    results: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        if kind == "neuron":
            r = _solve_neuron(shapes, cost, budget_ms, other_ms, gc["neuron"])
            if r is not None:
                results[kind] = r
            continue
        fmt = "edge" if kind == "element" else kind
        if fmt not in measured:
            raise ValueError(f"kinds: {kind!r} was not measured by the cost model (measured: "
                             f"{sorted(measured)})")
        results[kind] = _solve_units(shapes, cost, fmt, budget_ms, other_ms, gc[kind])
    feasible = {k: r for k, r in results.items() if r["feasible"]}
    alternatives = {k: {"feasible": r["feasible"], "predicted_ms": r["predicted_ms"],
                        "capacity_loss": r["capacity_loss"]} for k, r in results.items()}
    if not feasible:
        best = min(results.values(), key=lambda r: r["predicted_ms"])["predicted_ms"]
        raise BudgetError(f"no structure meets the budget of {budget_ms:.3f} ms on this machine: "
                         f"the fastest predicted is {best:.3f} ms (dense {dense_ms:.3f} ms, "
                         f"{other_ms:.3f} ms outside the planned layers); ask for less "
                         f"(target_speedup ≤ {dense_ms / best:.2f})")
    kind = min(feasible, key=lambda k: (feasible[k]["capacity_loss"], feasible[k]["predicted_ms"]))
    r = feasible[kind]
    fmt = "edge" if kind == "element" else kind
    layers = [LayerPlan(s.name, s.out_features, s.in_features,
                        ("dense" if d >= 1.0 else ("neuron" if kind == "neuron" else fmt)),
                        float(d), float(t)) for s, (d, t, _) in zip(shapes, r["choice"])]
    gran = "block" if kind.startswith("block") else kind
    return Plan(gran, int(kind[5:]) if gran == "block" else 16, layers, float(r["predicted_ms"]),
                float(dense_ms), float(other_ms), float(budget_ms), float(r["capacity_loss"]),
                cost.rows, cost.machine, alternatives)


# ---------------------------------------------------------------------------- from a model


def layer_shapes(model: nn.Module) -> list[LayerShape]:
    """The learned-mask linear layers of ``model`` (``model.layers`` order for a MorphoNet
    model) as `LayerShape`s named by their module path."""
    names = {id(m): n for n, m in model.named_modules()}
    layers = (model.masked_layers() if isinstance(model, MorphoModel) else
              [m for m in model.modules() if isinstance(m, MaskedLinear)])
    out = [LayerShape(names[id(m)], m.out_features, m.in_features) for m in layers
           if isinstance(m, MaskedLinear)]
    if not out:
        raise ValueError("model has no learned-mask linear layer (MaskedLinear / MorphoLinear) "
                         "to plan")
    return out


def _example(model: nn.Module, batch: int) -> torch.Tensor:
    cfg = getattr(model, "config", None)
    if isinstance(model, MorphoNetMLP):
        return torch.randn(batch, cfg.input_dim)
    if cfg is not None and cfg.network_type == "transformer":
        return torch.randint(0, model.vocab_size, (batch, cfg.max_seq_len))
    raise TypeError(f"pass example= (an input batch) for a {type(model).__name__}")


def _other_ms(twin: nn.Module, shapes: Sequence[LayerShape], x: torch.Tensor, rows: int,
              threads: int, rounds: int) -> float:
    """Milliseconds of the dense model outside its planned layers: the whole model and those
    layers alone (plain ``nn.Linear`` of the same shapes on inputs of the same rows), timed
    interleaved, the difference of their fastest rounds (as the cost model's figures; at
    least 0)."""
    torch.manual_seed(0)
    lins = [nn.Linear(s.in_features, s.out_features) for s in shapes]
    xs = [torch.randn(rows, s.in_features) for s in shapes]

    def layers_only(_x: torch.Tensor) -> None:
        for lin, xi in zip(lins, xs):
            lin(xi)

    res = time_models({"model": twin, "layers": layers_only}, x, rounds=rounds, threads=threads,
                      min_sample_ms=0.5)
    return max(0.0, min(res["model"]["samples_ms"]) - min(res["layers"]["samples_ms"]))


def plan_for_budget(model_or_shapes: Union[nn.Module, Sequence[LayerShape]], *,
                    target_speedup: Optional[float] = None, latency_ms: Optional[float] = None,
                    batch: int = 256, example: Optional[torch.Tensor] = None,
                    cost_model: Optional[CostModel] = None, cache: Optional[str] = None,
                    kinds: Optional[Sequence[str]] = None, threads: int = 1, rounds: int = 15,
                    log: Optional[Callable[[str], None]] = None) -> Plan:
    """The structure that meets a latency budget on this machine (module docstring).

    Args:
        model_or_shapes: a model holding learned-mask linear layers (a MorphoNet MLP or
            Transformer; its dense twin is timed whole, so the time outside the planned
            layers is measured too) or a list of `LayerShape` (then only the layers count).
        target_speedup: the dense model's time / the budget (> 1), or
        latency_ms: the budget itself (ms per call of ``batch`` rows); exactly one of them.
        batch: rows per call (sequences for a Transformer: rows = batch × sequence length).
        example: an input batch (default: random rows / token ids of the model's shape).
        cost_model: figures to plan with (default: measured now, `measure_costs`, cached in
            ``cache``).
        kinds: granularities to consider (default: all measured, and neuron for a chain).
        threads, rounds: of the timing.
        log: progress lines.
    """
    if (target_speedup is None) == (latency_ms is None):
        raise ValueError("give exactly one of target_speedup= or latency_ms=")
    if target_speedup is not None:
        target_speedup = check_real("target_speedup", target_speedup, 1, lo_open=True)
    if latency_ms is not None:
        latency_ms = check_real("latency_ms", latency_ms, 0, lo_open=True)
    batch = check_int("batch", batch, 1)
    threads = check_int("threads", threads, 1)
    check_instance("cost_model", cost_model, CostModel, optional=True)
    other = 0.0
    shrinkable = True
    if isinstance(model_or_shapes, nn.Module):
        from .models import dense_twin

        model = model_or_shapes
        shapes = layer_shapes(model)
        # neuron masks export by shrink: an MLP without skip connections (the Transformer's
        # projections look like a chain of shapes but share residual widths)
        shrinkable = isinstance(model, MorphoNetMLP) and not len(model.skip_gates)
        x = example if example is not None else _example(model, batch)
        rows = int(x.shape[0] * (x.shape[1] if not x.is_floating_point() else 1))
        if cost_model is None:
            cost_model = measure_costs(shapes, rows, threads=threads, rounds=rounds,
                                       cache=cache, log=log)
        twin = dense_twin(model) if isinstance(model, MorphoModel) else model
        other = _other_ms(twin, shapes, x, rows, threads, rounds)
    else:
        shapes = list(model_or_shapes)
        for i, s in enumerate(shapes):
            check_instance(f"model_or_shapes[{i}]", s, LayerShape)
        if cost_model is None:
            cost_model = measure_costs(shapes, batch, threads=threads, rounds=rounds,
                                       cache=cache, log=log)
    # the dense model on the cost model's scale: what the planned layers cost dense, plus
    # the measured rest (timings taken minutes apart on a loaded machine would not add up)
    dense_ms = other + sum(cost_model.dense_ms(s) for s in shapes)
    budget = latency_ms if latency_ms is not None else dense_ms / target_speedup
    return solve_plan(shapes, cost_model, budget, dense_ms=dense_ms, other_ms=other,
                      kinds=kinds, shrinkable=shrinkable)


# ---------------------------------------------------------------------------- training


class EnforceLayerDensities(Hook):
    """After every epoch, prune each planned layer by its own ranking (MorphoNet's
    `prune_score`) toward its planned density, following the config's sparsity schedule
    (layer sparsity × `schedule_progress`); only epochs with every layer within `TOLERANCE`
    of its planned sparsity may be selected. The record gets ``sparsity`` and ``target``."""

    def __init__(self, model: MorphoModel, densities: Sequence[float], config: MorphoConfig,
                 group: Any = None):
        layers = model.masked_layers()
        if len(densities) != len(layers):
            raise ValueError(f"densities has {len(densities)} entries, the model has "
                             f"{len(layers)} masked layers")
        self.model, self.densities, self.config = model, [float(d) for d in densities], config
        # data-parallel: scores averaged over it before ranking (the one group rule)
        self.group = resolve_group(group, "prune", "units")

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        p = schedule_progress(self.config, record["epoch"])
        for layer, d in zip(self.model.masked_layers(), self.densities):
            n, live = layer.n_connections(), self.model.layer_live(layer)
            keep = n - int(math.floor((1.0 - d) * p * n + 1e-9))
            keep_final = n - int(math.floor((1.0 - d) * n + 1e-9))
            # with the model: the connectivity rule (no output cut off from every input)
            _prune_ranked([layer], live - keep, self.config.prune_score, live - keep_final,
                          self.group, self.model)
        record["sparsity"] = self.model.sparsity()
        record["target"] = self.config.target_sparsity * p

    def selectable(self, loop: TrainLoop, record: dict[str, Any]) -> bool:
        return all(1.0 - self.model.layer_live(layer) / layer.n_connections()
                   >= (1.0 - d) - TOLERANCE
                   for layer, d in zip(self.model.masked_layers(), self.densities))

    def describe(self, record: dict[str, Any]) -> str:
        return f"sparsity={record['sparsity']:.3f} (target {record['target']:.3f})"


class PlannedTrainer(MorphoTrainer):
    """`MorphoTrainer` whose enforced sparsity is the plan's, layer by layer
    (`EnforceLayerDensities` in place of the model-wide `EnforceSparsity`); train the model
    built from ``plan.morpho_config(base)``."""

    def __init__(self, model: MorphoModel, plan: Plan, config: Optional[MorphoConfig] = None,
                 log: Callable[[str], None] = print):
        super().__init__(model, config, log)
        self.plan = check_instance("plan", plan, Plan)
        if len(plan.layers) != len(model.masked_layers()):
            raise ValueError(f"plan has {len(plan.layers)} layers, the model "
                             f"{len(model.masked_layers())} masked layers")

    def hooks(self, group: Any = None) -> list[Hook]:
        """MorphoTrainer's hooks with `EnforceSparsity` replaced by `EnforceLayerDensities`
        (the same ``group`` for its score averaging)."""
        return [EnforceLayerDensities(self.model, self.plan.densities, self.config, group)
                if isinstance(h, EnforceSparsity) else h for h in super().hooks(group)]


def _dense_layer(layer: MaskedLinear, dead: Optional[torch.Tensor] = None,
                 col_scale: Optional[torch.Tensor] = None) -> nn.Linear:
    """``layer`` as a plain ``nn.Linear`` with its mask folded in (and, inside attention, the
    pruned heads' connections zeroed and the head gates folded into o's columns)."""
    lin = layer.to_linear()
    with torch.no_grad():
        if col_scale is not None:
            lin.weight.mul_(col_scale.to(lin.weight)[None, :])
        if dead is not None:
            lin.weight.masked_fill_(dead.to(lin.weight.device), 0.0)
    return lin


def export_plan(model: MorphoModel, plan: Plan) -> nn.Module:
    """The trained ``model`` with each layer in its planned format: ``shrink`` for a neuron
    plan; otherwise an edge list or block-sparse layer per layer, and a plain ``nn.Linear``
    (mask folded in) for a layer planned dense; a Transformer's attention folds its head gates
    into o as `to_block_sparse` does. Outputs equal the model's."""
    if plan.granularity == "neuron":
        return shrink(model).eval()
    out = copy.deepcopy(model).eval()
    names = dict(out.named_modules())
    by_id = {id(names[lp.name]): lp for lp in plan.layers}

    def convert(layer, dead=None, col_scale=None):
        lp = by_id[id(layer)]
        if lp.format == "dense":
            return _dense_layer(layer, dead, col_scale)
        if lp.format == "edge":
            return edge_list_layer(layer, dead=dead, col_scale=col_scale)
        return convert_layer(layer, int(lp.format[5:]), dead=dead, col_scale=col_scale)

    for m in list(out.modules()):
        if hasattr(m, "convert_projections"):  # attention: gates folded, pruned heads dropped
            m.convert_projections(convert)
    names = dict(out.named_modules())
    for lp in plan.layers:
        layer = names.get(lp.name)
        if not isinstance(layer, MaskedLinear):  # converted with its attention
            continue
        parent_name, _, attr = lp.name.rpartition(".")
        setattr(names[parent_name] if parent_name else out, attr, convert(layer))
    return out
