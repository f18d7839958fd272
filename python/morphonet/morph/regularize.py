"""MorphNet's resource-weighted channel regularisers (Gordon et al., 2018) for PyTorch models.

A `NetworkRegularizer` scores every channel of every free channel group (`graph.trace`) with
one of MorphNet's regularisers:

- ``"gamma"``: the |γ| of the batch norms applied to the channel (MorphNet's GammaL1; the
  largest over the batch norms of a group, like MorphNet's max grouping); alive where it is
  above ``threshold``. Groups without a batch norm are not regularised (listed in
  ``unregularised``, with a warning).
- ``"group_lasso"``: per output channel, ``(1 − l1_fraction)·‖w‖₂ + l1_fraction·‖w‖₁`` of its
  filter (the producer's weight row; the largest over the producers of a group); alive above
  ``threshold``.
- ``"gates"``: a logistic-sigmoid gate per channel (log-odds initialised to 2.5), applied to
  the channel wherever a layer reads it; gate = σ(log-odds / temperature) (with
  ``straight_through``, 1 / 0 forward and the sigmoid's gradient backward); the regularisation
  vector is the gate's probability, alive where it is above 0.5; the first channel of each
  group is kept alive (a layer needs an input). The gate log-odds are this module's
  parameters: give them to an optimizer.

and weights it by a resource cost, MorphNet's bilinear relaxation: for each convolution /
linear layer with cost coefficient ``coef`` (FLOPs: ``2·H_out·W_out·k_h·k_w`` per input·output
channel pair, divided by the groups of a grouped convolution; size: ``k_h·k_w``),

    coef · (alive_in · Σ reg_out + alive_out · Σ reg_in)

where ``alive`` counts the alive channels (no gradient) and ``Σ reg`` sums the regularisation
vector (differentiable); a depthwise convolution costs ``coef · Σ reg`` (linear in its
channels). ``cost="latency"`` is a roofline: each layer takes ``max(FLOPs / peak, bytes /
bandwidth)`` seconds, and its relaxation is the FLOP term or the bytes term (activations in and
out, weights), whichever bounds the layer (MorphNet's latency regulariser); the peak and the
bandwidth are measured once per process on the running machine (`Roofline.measure`) or taken
from a datasheet (`Roofline.h100_sxm`).

The API is MorphNet's: ``get_regularization_term()`` (add ``strength ×`` it to the loss),
``get_cost()`` (the cost at the current alive widths). A strength of about
``1 / get_cost()`` at the start (`suggested_strength`) gives a term of order one next to a
cross-entropy loss; larger strengths learn smaller networks. `MorphNetHook` plugs it into
`morphonet.loop.TrainLoop`. `NetworkRegularizer.prune` makes the channels that are not alive
exactly dead, after which `morphonet.morph.shrink` removes them without changing the function.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..checks import check_instance, check_int, check_real
from ..loop import Hook, TrainLoop
from .graph import ChannelGraph, Op, trace

__all__ = ["COSTS", "GammaFlopsRegularizer", "GroupLassoFlopsRegularizer", "KINDS",
           "LogisticSigmoidFlopsRegularizer", "MorphNetHook", "NetworkRegularizer", "Roofline"]

KINDS = ("gamma", "group_lasso", "gates")
COSTS = ("flops", "size", "latency")
DEFAULT_THRESHOLD = {"gamma": 1e-2, "group_lasso": 1e-2, "gates": 0.5}


# ---------------------------------------------------------------------------- roofline


@dataclass(frozen=True)
class Roofline:
    """A machine's roofline: ``peak_flops`` (FLOP/s), ``bandwidth`` (bytes/s) and the bytes
    per element of the activations and weights. ``seconds(flops, bytes)`` is the roofline
    time ``max(flops / peak_flops, bytes / bandwidth)``."""

    peak_flops: float
    bandwidth: float
    name: str
    bytes_per_element: int = 4

    def seconds(self, flops: float, nbytes: float) -> float:
        """Roofline time of an operation doing ``flops`` and moving ``nbytes``."""
        return max(flops / self.peak_flops, nbytes / self.bandwidth)

    @classmethod
    def h100_sxm(cls, dtype: torch.dtype = torch.float32) -> Roofline:
        """NVIDIA's H100 SXM5 datasheet: 3.35 TB/s HBM3; dense peak 67 TFLOP/s for float32
        (CUDA cores), 989 TFLOP/s for bfloat16 / float16 tensor cores (the sparsity-doubled
        figures of the datasheet are not used)."""
        if dtype == torch.float32:
            return cls(67e12, 3.35e12, "H100 SXM datasheet, float32", 4)
        if dtype in (torch.bfloat16, torch.float16):
            return cls(989.4e12, 3.35e12, f"H100 SXM datasheet, {dtype}", 2)
        raise ValueError(f"no H100 datasheet figure for {dtype}; use float32, bfloat16 or "
                         f"float16")

    @classmethod
    def measure(cls, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> Roofline:
        """Measured once per process and device: the peak from the best of several square
        matrix products, the bandwidth from the best of several large copies (read + write)."""
        return _measure(str(torch.device(device)), dtype)


@functools.cache
def _measure(device: str, dtype: torch.dtype) -> Roofline:
    dev = torch.device(device)
    n = 1024 if dev.type == "cpu" else 8192
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    x = torch.empty(32 * 2 ** 20 if dev.type == "cpu" else 256 * 2 ** 20, device=dev,
                    dtype=dtype)
    y = torch.empty_like(x)

    def best(fn, repeats: int = 5) -> float:
        fn()
        times = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        return min(times)

    t_mm = best(lambda: torch.mm(a, b))
    t_copy = best(lambda: y.copy_(x))
    size = x.element_size()
    return Roofline(2.0 * n ** 3 / t_mm, 2.0 * x.numel() * size / t_copy,
                    f"measured on {device} ({dtype})", size)


# ---------------------------------------------------------------------------- gates


class _GateHook:
    """Multiplies a layer's input by the gates of the channel groups it reads."""

    is_morph_gate = True

    def __init__(self, owner: NetworkRegularizer, entries: list[tuple[int, int, int, int]],
                 n_in: int, conv: bool):
        self.owner, self.entries, self.n_in, self.conv = owner, entries, n_in, conv

    def vector(self) -> Tensor:
        parts, pos = [], 0
        dev = next(iter(self.owner.logits.values())).device
        for off, gid, rep, size in self.entries:
            if off > pos:
                parts.append(torch.ones(off - pos, device=dev))
            g = self.owner.gate(gid) if str(gid) in self.owner.logits else \
                torch.ones(size, device=dev)
            parts.append(g.repeat_interleave(rep) if rep > 1 else g)
            pos = off + size * rep
        if pos < self.n_in:
            parts.append(torch.ones(self.n_in - pos, device=dev))
        return torch.cat(parts)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        v = self.vector().to(x.dtype)
        if self.conv:
            v = v.reshape((1, -1) + (1,) * (x.dim() - 2))
        return (x * v,) + tuple(args[1:])


# ---------------------------------------------------------------------------- the regulariser


class NetworkRegularizer(nn.Module):
    """MorphNet's network regulariser for ``model`` (module docstring).

    Args:
        model: the model to regularise (traced with ``example_inputs``; it is not copied: the
            regulariser reads its parameters, and gates are installed on its layers).
        example_inputs: a batch (tensor or tuple of tensors) the model accepts.
        kind: ``"gamma"``, ``"group_lasso"`` or ``"gates"``.
        cost: ``"flops"``, ``"size"`` or ``"latency"`` (roofline).
        threshold: below it a channel is not alive (default: 1e-2 for γ and group lasso, 0.5
            for the gates' probability).
        l1_fraction: the L1 share of the group lasso (0: pure L2 per filter).
        init_log_odds, temperature, straight_through, keep_first_alive: the gates' settings.
        roofline: the machine of the latency cost (default: `Roofline.measure` on the model's
            device, once per process).
        batch_size: examples per batch for the latency cost (default: the example's batch).
        graph: a `trace` of the model already made (else it is traced here).
    """

    def __init__(self, model: nn.Module, example_inputs: Any, kind: str = "gamma",
                 cost: str = "flops", *, threshold: Optional[float] = None,
                 l1_fraction: float = 0.0, init_log_odds: float = 2.5,
                 temperature: float = 1.0, straight_through: bool = False,
                 keep_first_alive: bool = True, roofline: Optional[Roofline] = None,
                 batch_size: Optional[int] = None, graph: Optional[ChannelGraph] = None):
        super().__init__()
        check_instance("model", model, nn.Module)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
        self.kind, self.cost = kind, cost
        self.threshold = check_real("threshold", DEFAULT_THRESHOLD[kind] if threshold is None
                                    else threshold, 0)
        self.l1_fraction = check_real("l1_fraction", l1_fraction, 0, 1)
        self.temperature = check_real("temperature", temperature, 0, lo_open=True)
        self.straight_through = bool(straight_through)
        self.keep_first_alive = bool(keep_first_alive)
        object.__setattr__(self, "_model", model)  # not a submodule: not in our state_dict
        self.graph = graph if graph is not None else trace(model, example_inputs)
        self.groups = self.graph.free_groups()
        if not self.groups:
            raise ValueError(f"{type(model).__name__} has no channel group whose width may "
                             f"change (every group: "
                             f"{sorted({g.frozen for g in self.graph.groups.values()})})")
        modules = dict(model.named_modules())
        self._modules_of = modules
        self.unregularised: list[int] = []
        self._norms: dict[int, list[tuple[nn.Module, int]]] = {}
        if kind == "gamma":
            for g in self.groups:
                norms = [(modules[n], off) for n, off in g.norms if modules[n].affine]
                if norms:
                    self._norms[g.id] = norms
                else:
                    self.unregularised.append(g.id)
            if not self._norms:
                raise ValueError(f"kind='gamma' needs batch norms after the layers whose width "
                                 f"should change; {type(model).__name__} has none on any free "
                                 f"channel group: use kind='group_lasso' or 'gates'")
            if self.unregularised:
                who = ", ".join(f"{g} ({'/'.join(self.graph.groups[g].producers)})"
                                for g in self.unregularised)
                warnings.warn(f"kind='gamma': channel groups without a batch norm keep their "
                              f"width: {who}", stacklevel=2)
        self.logits = nn.ParameterDict()
        self._hooks: list[Any] = []
        if kind == "gates":
            dev = next(model.parameters()).device
            for g in self.groups:
                self.logits[str(g.id)] = nn.Parameter(
                    torch.full((g.size,), float(init_log_odds), device=dev))
            self._install_gates()
        self.roofline = roofline
        if cost == "latency" and roofline is None:
            self.roofline = Roofline.measure(next(model.parameters()).device)
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        first = args[0] if args and isinstance(args[0], Tensor) else None
        self.batch_size = check_int("batch_size", batch_size if batch_size is not None else
                                    (int(first.shape[0]) if first is not None and first.dim()
                                     else 1), 1)
        self.initial_cost = float(self.get_cost())

    # -- gates
    def _install_gates(self) -> None:
        ins: dict[str, list] = {}
        for g in self.graph.groups.values():
            for name, off, rep in g.consumers:
                ins.setdefault(name, []).append((off, g.id, rep, g.size))
        free = {g.id for g in self.groups}
        for name, entries in ins.items():
            if not any(e[1] in free for e in entries):
                continue
            m = self._modules_of[name]
            n_in = m.weight.shape[1]
            hook = _GateHook(self, sorted(entries), n_in, not isinstance(m, nn.Linear))
            self._hooks.append(m.register_forward_pre_hook(hook))

    def remove_gates(self) -> None:
        """Take the gates off the model's layers (the model then computes without them)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def gate(self, gid: int) -> Tensor:
        """The forward value of group ``gid``'s gates (module docstring)."""
        p = torch.sigmoid(self.logits[str(gid)] / self.temperature)
        g = p
        if self.straight_through:
            g = (p > 0.5).to(p) + p - p.detach()
        if self.keep_first_alive:
            g = torch.cat([torch.ones_like(g[:1]), g[1:]])
        return g

    # -- vectors
    def regularization_vectors(self) -> dict[int, Tensor]:
        """Per free group id: the regularisation vector (differentiable, one per channel)."""
        out = {}
        for g in self.groups:
            if self.kind == "gamma":
                if g.id not in self._norms:
                    continue
                v = torch.stack([m.weight[off: off + g.size].abs()
                                 for m, off in self._norms[g.id]]).amax(0)
            elif self.kind == "group_lasso":
                rows = []
                for name in g.producers:
                    w = self._modules_of[name].weight
                    w = w.reshape(w.shape[0], -1)
                    r = (1 - self.l1_fraction) * w.norm(dim=1)
                    if self.l1_fraction:
                        r = r + self.l1_fraction * w.abs().sum(1)
                    rows.append(r)
                v = torch.stack(rows).amax(0)
            else:
                v = torch.sigmoid(self.logits[str(g.id)] / self.temperature)
                if self.keep_first_alive:
                    v = torch.cat([v[:1].detach(), v[1:]])
            out[g.id] = v
        return out

    def alive_vectors(self) -> dict[int, Tensor]:
        """Per group id (every group): bool per channel, True where the channel is alive."""
        reg = self.regularization_vectors()
        out = {}
        for gid, g in self.graph.groups.items():
            if gid in reg:
                a = (reg[gid].detach() > self.threshold).cpu()
                if self.kind == "gates" and self.keep_first_alive:
                    a[0] = True
                if not bool(a.any()):
                    a[int(reg[gid].detach().argmax())] = True  # a layer needs one channel
                out[gid] = a
            else:
                out[gid] = torch.ones(g.size, dtype=torch.bool)
        return out

    def alive_widths(self) -> dict[int, int]:
        """Per group id: the number of alive channels."""
        return {gid: int(a.sum()) for gid, a in self.alive_vectors().items()}

    # -- cost
    def _op_terms(self, op: Op, alive: dict[int, int], regsum: dict[int, Tensor]
                  ) -> tuple[float, float, Any]:
        """(flops, bytes, relaxed penalty) of one op at the alive widths, per batch."""
        zero = torch.zeros((), device=self._device())
        b = self.batch_size
        if op.kind == "depthwise":
            gid = op.inputs[0][0]
            a, r = alive[gid], regsum.get(gid, zero)
            flops, params = b * op.flop_coef * a, op.param_coef * a
            nbytes = b * (op.in_elems + op.out_elems) * a + params
            coef = {"flops": op.flop_coef, "size": op.param_coef}.get(self.cost)
            if coef is None:
                coef = self._latency_coef(op, flops, nbytes, depthwise=True)
            return flops, nbytes, coef * r
        a_in = sum(alive[g] * rep for g, rep in op.inputs)
        r_in = sum((regsum[g] * rep for g, rep in op.inputs if g in regsum), zero)
        a_out = alive[op.output]
        r_out = regsum.get(op.output, zero)
        flops = b * op.flop_coef * a_in * a_out
        params = op.param_coef * a_in * a_out
        nbytes = b * (op.in_elems * a_in + op.out_elems * a_out) + params
        bilinear = a_in * r_out + a_out * r_in
        if self.cost == "flops":
            return flops, nbytes, op.flop_coef * bilinear
        if self.cost == "size":
            return flops, nbytes, op.param_coef * bilinear
        rl = self.roofline
        if flops / rl.peak_flops >= nbytes * rl.bytes_per_element / rl.bandwidth:
            return flops, nbytes, (b * op.flop_coef / rl.peak_flops) * bilinear
        per_byte = rl.bytes_per_element / rl.bandwidth
        return flops, nbytes, per_byte * (b * op.in_elems * r_in + b * op.out_elems * r_out
                                          + op.param_coef * bilinear)

    def _latency_coef(self, op: Op, flops: float, nbytes: float, depthwise: bool) -> float:
        rl = self.roofline
        if flops / rl.peak_flops >= nbytes * rl.bytes_per_element / rl.bandwidth:
            return self.batch_size * op.flop_coef / rl.peak_flops
        return rl.bytes_per_element / rl.bandwidth * (
            self.batch_size * (op.in_elems + op.out_elems) + op.param_coef)

    def _device(self) -> torch.device:
        return next(self._model.parameters()).device

    def get_regularization_term(self) -> Tensor:
        """MorphNet's relaxed cost (module docstring): a differentiable scalar."""
        reg = self.regularization_vectors()
        regsum = {gid: v.sum() for gid, v in reg.items()}
        alive = self.alive_widths()
        return sum((self._op_terms(op, alive, regsum)[2] for op in self.graph.ops),
                   torch.zeros((), device=self._device()))

    def get_cost(self, widths: Optional[dict[int, int]] = None) -> Tensor:
        """The cost at the alive widths (or the given ``widths`` per group id): FLOPs per
        example, weights, or roofline seconds per batch (no gradient)."""
        alive = self.graph.widths() | (self.alive_widths() if widths is None else widths)
        if self.cost == "flops":
            return torch.tensor(self.graph.flops(alive))
        if self.cost == "size":
            return torch.tensor(self.graph.params(alive))
        rl = self.roofline
        regsum: dict[int, Tensor] = {}
        total = self.graph.fixed_flops * self.batch_size / rl.peak_flops
        for op in self.graph.ops:
            flops, nbytes, _ = self._op_terms(op, alive, regsum)
            total += rl.seconds(flops, nbytes * rl.bytes_per_element)
        return torch.tensor(total)

    def suggested_strength(self, scale: float = 1.0) -> float:
        """``scale / initial cost``: a strength giving a regularisation term of order one at
        the start (module docstring); larger ``scale``, smaller learned networks."""
        return check_real("scale", scale, 0, lo_open=True) / self.initial_cost

    # -- making the structure exact
    @torch.no_grad()
    def prune(self, keep_constants: bool = False) -> dict[int, int]:
        """Make every channel that is not alive exactly dead, in place: its filters (the
        producers' weight rows, depthwise filters) and batch-norm γ are set to zero, and,
        unless ``keep_constants``, its biases and β too, so it carries f(0) (0 after ReLU,
        GELU, tanh, …) and `morphonet.morph.shrink` removes it with nothing to fold. With
        ``keep_constants`` it carries the constant its β / bias gives, which `shrink` folds
        into the next layers' biases (except where a zero-padded convolution reads a non-zero
        constant: that channel is kept). Gates are first folded into the layers that read
        them (their weights scaled by each gate's forward value, 0 where closed) and removed.
        Returns the alive width per group."""
        alive = self.alive_vectors()
        if self.kind == "gates":
            self._fold_gates()
        modules = self._modules_of

        def zero(m: nn.Module, idx: Tensor, weight: bool = True) -> None:
            if weight:
                m.weight[idx.to(m.weight.device)] = 0
            if not keep_constants and getattr(m, "bias", None) is not None:
                m.bias[idx.to(m.bias.device)] = 0

        for g in self.groups:
            dead = (~alive[g.id]).nonzero().flatten()
            if not dead.numel():
                continue
            for name in g.producers:
                zero(modules[name], dead)
            for name, off in g.norms:
                if modules[name].affine:
                    zero(modules[name], dead + off)
            for name, off in g.passthrough:
                zero(modules[name], dead + off)
        return {gid: int(a.sum()) for gid, a in alive.items()}

    @torch.no_grad()
    def _fold_gates(self) -> None:
        if not self._hooks:
            return
        alive = self.alive_vectors()
        for m in self._modules_of.values():
            for h in m._forward_pre_hooks.values():
                if isinstance(h, _GateHook) and h.owner is self:
                    v = h.vector().detach().clone()
                    for off, gid, rep, size in h.entries:  # closed gates read nothing
                        if str(gid) in self.logits:
                            closed = (~alive[gid]).to(v.device).repeat_interleave(rep)
                            v[off: off + size * rep][closed] = 0
                    shape = (1, -1) + (1,) * (m.weight.dim() - 2)
                    m.weight.mul_(v.to(m.weight).reshape(shape))
        self.remove_gates()


class GammaFlopsRegularizer(NetworkRegularizer):
    """MorphNet's ``GammaFlopsRegularizer``: batch-norm γ L1 weighted by FLOPs."""

    def __init__(self, model: nn.Module, example_inputs: Any, gamma_threshold: float = 1e-2,
                 **kwargs: Any):
        super().__init__(model, example_inputs, "gamma", "flops", threshold=gamma_threshold,
                         **kwargs)


class GroupLassoFlopsRegularizer(NetworkRegularizer):
    """MorphNet's ``GroupLassoFlopsRegularizer``: per-filter group lasso weighted by FLOPs."""

    def __init__(self, model: nn.Module, example_inputs: Any, threshold: float = 1e-2,
                 l1_fraction: float = 0.0, **kwargs: Any):
        super().__init__(model, example_inputs, "group_lasso", "flops", threshold=threshold,
                         l1_fraction=l1_fraction, **kwargs)


class LogisticSigmoidFlopsRegularizer(NetworkRegularizer):
    """MorphNet's ``LogisticSigmoidFlopsRegularizer``: channel gates weighted by FLOPs."""

    def __init__(self, model: nn.Module, example_inputs: Any, **kwargs: Any):
        super().__init__(model, example_inputs, "gates", "flops", **kwargs)


class MorphNetHook(Hook):
    """Adds ``strength · regularizer.get_regularization_term()`` to every step's loss; after
    each epoch's steps the record gets ``cost`` (at the alive widths) and ``alive`` (alive
    channels over all free groups). The regulariser's gate log-odds, if any, are kept in the
    loop's checkpoints (give them to an optimizer yourself)."""

    def __init__(self, regularizer: NetworkRegularizer, strength: float):
        self.regularizer = check_instance("regularizer", regularizer, NetworkRegularizer)
        self.strength = check_real("strength", strength, 0)

    def penalty(self, loop: TrainLoop) -> Optional[Tensor]:
        if self.strength == 0:
            return None
        return self.strength * self.regularizer.get_regularization_term()

    def on_train_end(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        reg = self.regularizer
        record["cost"] = float(reg.get_cost())
        widths = reg.alive_widths()
        record["alive"] = sum(widths[g.id] for g in reg.groups)

    def describe(self, record: dict[str, Any]) -> str:
        return (f"cost {record['cost'] / self.regularizer.initial_cost:.0%} "
                f"alive {record['alive']}")

    def state_dict(self) -> dict[str, Any]:
        return {"regularizer": self.regularizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.regularizer.load_state_dict(state["regularizer"])
