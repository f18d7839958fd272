"""Channel groups of a user's model, found by tracing it with ``torch.fx``.

A *channel group* is a set of channels that must keep or lose their members together: the
output channels of one convolution / linear layer, merged with every other tensor they are
added to (residual adds), followed through per-channel operations (batch norm, activations,
pooling, dropout, a depthwise convolution), into the layers that read them (at an offset after
a concat, each channel as a block of features after a flatten). `trace` records, per group,
who produces it, who normalises it, who passes it through, and who reads it, so that
regularisers can score the channels, costs can count the work of each operation, and the
surgery (`morphonet.morph.surgery`) can remove or copy channels everywhere at once.

Why ``torch.fx`` (``symbolic_trace``): it keeps the module boundaries (every Conv / Linear /
BatchNorm stays one ``call_module`` node, so the surgery replaces modules and the user's class
and forward stay as written), runs without a backward pass or example gradients, and needs no
extra dependency. ``torch.export`` lowers to ATen ops (the modules disappear into
``aten.convolution`` calls with lifted parameters), and Torch-Pruning's dependency graph traces
the autograd graph and is an optional dependency; both would need mapping back to modules.

What is understood, exactly: Conv1d / Conv2d (groups = 1; depthwise, groups = in = out, passes
its channels through; other grouped convolutions keep their widths), Linear (on the last
dimension: an MLP's hidden width, a transformer MLP's 4·d), BatchNorm1d / 2d, activations,
dropout, pooling, global means, residual adds (groups merged), multiplications by tensors of
the same channels, ``torch.cat`` along channels (offsets), flatten into a Linear (each channel
a block of features). LayerNorm / GroupNorm normalise across channels, so the groups they read
keep their width; so do the model's inputs and outputs, the channels added to a constant
tensor, and the channels read by an operation that rearranges dimensions (view / reshape to a
fixed shape, permute, transpose, split, chunk, indexing, matrix products, softmax, attention:
the result is opaque, and the layers reading it keep their input width; the FLOPs of matrix
products and attention are counted as fixed). Any other operation on a channel tensor raises
`UnsupportedOpError` naming the operation and where the model calls it: never a silent zero
cost.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..checks import check_instance

__all__ = ["ChannelGraph", "ChannelGroup", "Op", "UnsupportedOpError", "trace"]


class UnsupportedOpError(ValueError):
    """An operation on a channel tensor that the tracer cannot follow exactly."""


_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU,
                  nn.ELU, nn.Hardswish, nn.Hardtanh, nn.Mish, nn.Dropout, nn.Dropout1d,
                  nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                  nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                  nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_UNARY_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.tanh, torch.sigmoid,
                    F.leaky_relu, F.elu, F.hardswish, F.hardtanh, F.mish, F.dropout,
                    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
                    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d,
                    F.adaptive_max_pool2d, torch.nn.functional.tanh,
                    torch.nn.functional.sigmoid}
_UNARY_METHODS = {"relu", "tanh", "sigmoid", "contiguous", "clone", "detach"}
_BINARY = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul,
           operator.sub, torch.sub}
_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)
# Operations that rearrange or mix a tensor's dimensions (attention heads, slicing, matrix
# products): the channels they read keep their width, and their result is opaque (the layers
# reading it see fixed widths). Their FLOPs, where they do arithmetic, are counted as fixed.
_OPAQUE_METHODS = {"view", "reshape", "permute", "transpose", "split", "chunk", "unsqueeze",
                   "squeeze", "softmax", "masked_fill", "expand", "repeat", "unflatten",
                   "matmul", "__getitem__"}
_OPAQUE_FUNCTIONS = {operator.getitem, torch.matmul, operator.matmul, torch.bmm, F.softmax,
                     torch.softmax, F.scaled_dot_product_attention, torch.transpose,
                     torch.permute, torch.reshape, torch.split, torch.chunk, torch.unsqueeze,
                     torch.squeeze, torch.stack, F.pad, torch.masked_fill}
_MATMULS = {torch.matmul, operator.matmul, torch.bmm, "matmul"}


@dataclass
class ChannelGroup:
    """Channels that live or die together (module docstring).

    producers: modules whose output channels are these (rows of their weight, their bias).
    norms: (module, offset) batch norms applying per channel to them at that offset.
    passthrough: (module, offset) depthwise convolutions carrying them channel by channel.
    consumers: (module, offset, rep) layers reading them as input features
    ``offset + rep·c … offset + rep·c + rep − 1`` for channel c (rep > 1 after a flatten).
    frozen: why the width cannot change (None: it can).
    """

    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    norms: list[tuple[str, int]] = field(default_factory=list)
    passthrough: list[tuple[str, int]] = field(default_factory=list)
    consumers: list[tuple[str, int, int]] = field(default_factory=list)
    frozen: Optional[str] = None


@dataclass
class Op:
    """One convolution / linear layer and the work it does per example.

    ``inputs``: (group id, rep) in input order; ``output``: its output group (None for a
    depthwise convolution, which passes its input group through). Per example:
    FLOPs = ``flop_coef · (Σ_in alive·rep) · alive_out`` (+ nothing else), parameters =
    ``param_coef · (Σ_in alive·rep) · alive_out``; a depthwise op costs
    ``flop_coef · alive`` FLOPs and ``param_coef · alive`` parameters.
    ``in_elems`` / ``out_elems``: activation elements per input / output channel (for the
    bytes of a roofline)."""

    name: str
    kind: str  # "conv", "linear" or "depthwise"
    inputs: list[tuple[int, int]]
    output: Optional[int]
    flop_coef: float
    param_coef: float
    in_elems: float
    out_elems: float


class ChannelGraph:
    """The traced channel structure of a model (`trace`): ``groups`` by id, ``ops`` in
    execution order, the ``GraphModule`` and the example's shapes."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, groups: dict[int, ChannelGroup],
                 ops: list[Op], fixed_flops: float = 0.0):
        self.model, self.gm, self.groups, self.ops = model, gm, groups, ops
        self.fixed_flops = fixed_flops  # per example, of matrix products and attention

    def free_groups(self) -> list[ChannelGroup]:
        """The groups whose width may change, in id order."""
        return [g for g in self.groups.values() if g.frozen is None]

    def widths(self) -> dict[int, int]:
        """The full width of every group, by id."""
        return {gid: g.size for gid, g in self.groups.items()}

    def flops(self, alive: Optional[dict[int, int]] = None) -> float:
        """FLOPs per example at the given alive widths (default: the full widths), the fixed
        FLOPs of matrix products and attention included."""
        widths = self.widths() | dict(alive or {})
        return self.fixed_flops + sum(_op_cost(op, widths, "flop") for op in self.ops)

    def params(self, alive: Optional[dict[int, int]] = None) -> float:
        """Weights (conv / linear, biases excluded) at the given alive widths."""
        widths = self.widths() | dict(alive or {})
        return sum(_op_cost(op, widths, "param") for op in self.ops)

    def __repr__(self) -> str:
        free = len(self.free_groups())
        return (f"ChannelGraph({len(self.groups)} groups, {free} free, {len(self.ops)} ops, "
                f"{self.flops():.3g} FLOPs per example)")


def _op_cost(op: Op, alive: dict[int, int], what: str) -> float:
    coef = op.flop_coef if what == "flop" else op.param_coef
    if op.kind == "depthwise":
        return coef * alive[op.inputs[0][0]]
    a_in = sum(alive[g] * rep for g, rep in op.inputs)
    return coef * a_in * alive[op.output]


class _Union:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def add(self, g: int) -> None:
        self.parent.setdefault(g, g)

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


@dataclass
class _Chan:
    """The channel map of a traced tensor: its channel dimension and the groups along it."""

    dim: int  # 1 (N, C, *spatial), -1 (N, …, features), 0: opaque (not yet read by a layer)
    segs: list[tuple[int, int]]  # (group, rep) in order
    why: str = "model input"  # for an opaque tensor: why its channels cannot change


class _Tracer:
    def __init__(self, model: nn.Module, gm: fx.GraphModule):
        self.model, self.gm = model, gm
        self.modules = dict(gm.named_modules())
        self.uf = _Union()
        self.size: dict[int, int] = {}
        self.frozen: dict[int, str] = {}
        self.producers: dict[int, list[str]] = {}
        self.norms: list[tuple[str, int, int]] = []  # (module, offset, group)
        self.passthrough: list[tuple[str, int, int]] = []
        self.consumers: list[tuple[str, int, int, int]] = []  # (module, offset, group, rep)
        self.ops: list[Op] = []
        self.fixed_flops = 0.0  # per example, of operations whose widths cannot change
        self.chan: dict[fx.Node, Optional[_Chan]] = {}
        self._next = 0

    # -- helpers
    def new_group(self, size: int, producer: Optional[str] = None,
                  frozen: Optional[str] = None) -> int:
        g = self._next
        self._next += 1
        self.uf.add(g)
        self.size[g] = size
        self.producers[g] = [producer] if producer else []
        if frozen:
            self.frozen[g] = frozen
        return g

    def freeze(self, c: Optional[_Chan], why: str) -> None:
        for g, _ in (c.segs if c else []):
            self.frozen.setdefault(self.uf.find(g), why)

    def fail(self, node: fx.Node, what: str) -> None:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_module":
            owner = ""  # ``what`` names the module
        elif stack:
            path, cls = list(stack.values())[-1]
            owner = f" in module '{path}' ({getattr(cls, '__name__', cls)})"
        else:
            owner = f" in {type(self.model).__name__}.forward"
        line = _user_line(node.meta.get("stack_trace") or "")
        raise UnsupportedOpError(
            f"cannot follow the channels through {what}{owner} (node '{node.name}'{line}): "
            "convolutions, linear layers, batch norms, activations, pooling, residual adds, "
            "concat, flatten and the rearranging operations listed in morphonet.morph.graph "
            "are understood")

    @staticmethod
    def shape(node: Any) -> Optional[torch.Size]:
        meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) \
            else None
        return getattr(meta, "shape", None)

    # -- the walk
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.chan[node] = self.visit(node)

    def visit(self, node: fx.Node) -> Optional[_Chan]:
        if node.op == "placeholder":
            # where a raw input's channels are is known only when a layer reads it
            return _Chan(0, []) if self.shape(node) is not None else None
        if node.op == "get_attr":
            return None
        if node.op == "output":
            for a in _flat_args(node.args):
                if isinstance(a, fx.Node):
                    self.freeze(self.chan.get(a), "model output")
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        if node.op == "call_function":
            return self.visit_function(node)
        if node.op == "call_method":
            return self.visit_method(node)
        self.fail(node, node.op)  # pragma: no cover - fx has no other node kinds

    def inputs_of(self, node: fx.Node) -> list[Optional[_Chan]]:
        return [self.chan.get(a) for a in node.args if isinstance(a, fx.Node)]

    def visit_module(self, node: fx.Node, m: nn.Module) -> Optional[_Chan]:
        c = self.chan.get(node.args[0]) if node.args else None
        name = node.target
        # exact types: a subclass may compute something else (it is rejected below by name)
        if type(m) in (nn.Conv1d, nn.Conv2d):
            return self.conv(node, name, m, c)
        if type(m) is nn.Linear:
            return self.linear(node, name, m, c)
        if isinstance(m, nn.MultiheadAttention):
            return self.attention_module(node, name, m)
        if isinstance(m, nn.Embedding):  # e.g. a transformer's residual stream
            return _Chan(-1, [(self.new_group(m.embedding_dim, frozen=f"embedding '{name}'"),
                               1)])
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            if c is None:
                self.fail(node, f"{type(m).__name__} '{name}' on a tensor without channels")
            if c.dim == 0:
                c = _Chan(1, [(self.new_group(m.num_features, frozen=c.why), 1)])
            if c.dim == -1 and len(self.shape(node) or ()) > 2:
                self.fail(node, f"BatchNorm1d '{name}' on a sequence")
            off = 0
            for g, rep in c.segs:
                if rep != 1:
                    self.fail(node, f"{type(m).__name__} '{name}' after a flatten")
                self.norms.append((name, off, g))
                off += self.size[g]
            return c
        if isinstance(m, _CHANNEL_NORMS):
            self.freeze(c, f"{type(m).__name__} '{name}' normalises across the channels")
            return c
        if isinstance(m, nn.Flatten):
            return self.flatten(node, c, m.start_dim, m.end_dim)
        if isinstance(m, _UNARY_MODULES):
            return c
        if c is None and all(x is None for x in self.inputs_of(node)):
            return None  # a module on tensors without channel maps (e.g. embeddings of ids)
        self.fail(node, f"module '{name}' ({type(m).__name__})")

    def conv(self, node, name: str, m: nn.Conv1d, c: Optional[_Chan]) -> _Chan:
        if c is not None and c.dim == 0:
            c = _Chan(1, [(self.new_group(m.in_channels, frozen=c.why), 1)])
        if c is None or c.dim != 1 or any(rep != 1 for _, rep in c.segs):
            self.fail(node, f"{type(m).__name__} '{name}' on a tensor without a channel "
                            f"dimension")
        out_shape = self.shape(node)
        spatial = math.prod(out_shape[2:]) if out_shape is not None else 1
        taps = math.prod(m.kernel_size)
        in_shape = self.shape(node.args[0])
        in_sp = math.prod(in_shape[2:]) if in_shape is not None else 1
        if m.groups == 1:
            off = 0
            for g, _ in c.segs:
                self.consumers.append((name, off, g, 1))
                off += self.size[g]
            out = self.new_group(m.out_channels, producer=name)
            self.ops.append(Op(name, "conv", list(c.segs), out, 2.0 * spatial * taps, taps,
                               in_sp, spatial))
            return _Chan(1, [(out, 1)])
        if m.groups == m.in_channels == m.out_channels:  # depthwise: channel by channel
            off = 0
            for g, _ in c.segs:
                self.passthrough.append((name, off, g))
                off += self.size[g]
            for g, _ in c.segs:
                self.ops.append(Op(name, "depthwise", [(g, 1)], None, 2.0 * spatial * taps,
                                   taps, in_sp, spatial))
            return c
        self.freeze(c, f"grouped convolution '{name}' (groups={m.groups}) couples its "
                       f"channels in blocks")
        out = self.new_group(m.out_channels, producer=name,
                             frozen=f"output of grouped convolution '{name}'")
        self.ops.append(Op(name, "conv", list(c.segs), out,
                           2.0 * spatial * taps / m.groups, taps / m.groups, in_sp, spatial))
        return _Chan(1, [(out, 1)])

    def linear(self, node, name: str, m: nn.Linear, c: Optional[_Chan]) -> _Chan:
        if c is not None and c.dim == 0:
            c = _Chan(-1, [(self.new_group(m.in_features, frozen=c.why), 1)])
        if c is None or c.dim != -1:
            self.fail(node, f"Linear '{name}' on a tensor whose last dimension is not its "
                            f"features")
        out_shape = self.shape(node)
        tokens = math.prod(out_shape[1:-1]) if out_shape is not None else 1
        off = 0
        for g, rep in c.segs:
            self.consumers.append((name, off, g, rep))
            off += self.size[g] * rep
        out = self.new_group(m.out_features, producer=name)
        self.ops.append(Op(name, "linear", list(c.segs), out, 2.0 * tokens, 1.0, tokens,
                           tokens))
        return _Chan(-1, [(out, 1)])

    def flatten(self, node, c: Optional[_Chan], start: int, end: int) -> Optional[_Chan]:
        in_shape = self.shape(node.args[0])
        if c is None or c.dim == 0:
            return c
        nd = len(in_shape) if in_shape is not None else 2
        end = end % nd
        if start != 1 or end != nd - 1:
            return self.opaque(node, f"flatten(start_dim={start}, end_dim={end})", "flatten")
        if c.dim == -1:
            if nd == 2:
                return c
            return self.opaque(node, "a flatten of a sequence of features", "flatten")
        rep = math.prod(in_shape[2:]) if in_shape is not None else 1
        return _Chan(-1, [(g, r * rep) for g, r in c.segs])

    def visit_function(self, node: fx.Node) -> Optional[_Chan]:
        t = node.target
        ins = self.inputs_of(node)
        if t in _UNARY_FUNCTIONS:
            return ins[0] if ins else None
        if t in _BINARY:
            return self.binary(node, [self.chan.get(a) if isinstance(a, fx.Node) else None
                                      for a in node.args[:2]],
                               [isinstance(a, fx.Node) for a in node.args[:2]])
        if t is torch.cat:
            return self.cat(node)
        if t is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, self.chan.get(node.args[0]), start, end)
        if t is torch.mean or t is torch.sum:
            return self.reduce(node, self.chan.get(node.args[0]))
        if t in _OPAQUE_FUNCTIONS:
            return self.opaque(node, getattr(t, "__name__", str(t)), t)
        if t is getattr:
            return None  # x.shape, x.dtype, …: not a tensor of channels
        if not any(ins):
            return None  # arithmetic on sizes and other non-channel values
        self.fail(node, f"function {getattr(t, '__name__', t)}")

    def visit_method(self, node: fx.Node) -> Optional[_Chan]:
        name = node.target
        c = self.chan.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if name in ("size", "dim", "numel"):
            return None
        if c is None or (c.dim == 0 and name not in ("add", "mul", "sub", "add_", "mul_")):
            return c  # methods on opaque tensors and on non-channel values (sizes, ids)
        if name in _UNARY_METHODS:
            return c
        if name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, c, start, end)
        if name in ("view", "reshape"):
            return self.view(node, c)
        if name in ("mean", "sum"):
            return self.reduce(node, c)
        if name in ("add", "mul", "sub", "add_", "mul_"):
            other = node.args[1] if len(node.args) > 1 else None
            return self.binary(node, [c, self.chan.get(other) if isinstance(other, fx.Node)
                                      else None], [True, isinstance(other, fx.Node)])
        if name in _OPAQUE_METHODS:
            return self.opaque(node, f".{name}()", name)
        self.fail(node, f"method .{name}()")

    def opaque(self, node: fx.Node, what: str, target: Any) -> Optional[_Chan]:
        """An operation that rearranges dimensions: the channels it reads keep their width;
        its result is opaque; a matrix product's / attention's FLOPs are counted as fixed."""
        chans = [self.chan.get(a) for a in _flat_args(node.args) if isinstance(a, fx.Node)]
        if all(c is None for c in chans):
            return None
        why = f"{what} at '{node.name}' rearranges them"
        for c in chans:
            self.freeze(c, why)
        out = self.shape(node)
        if target in _MATMULS and out is not None and len(out) >= 2:
            a = self.shape(node.args[0])
            k = a[-1] if a is not None and len(a) else 1
            self.fixed_flops += 2.0 * math.prod(out[1:]) * k
        elif target is F.scaled_dot_product_attention and out is not None:
            q, kk = self.shape(node.args[0]), self.shape(node.args[1])
            if q is not None and kk is not None:
                # QKᵀ and the weighted sum of V: 2·T·S·D each, per head, per example
                self.fixed_flops += 4.0 * math.prod(q[1:]) * kk[-2]
        return _Chan(0, [], why)

    def attention_module(self, node: fx.Node, name: str, m: nn.MultiheadAttention) -> _Chan:
        for a in _flat_args(node.args) + _flat_args(list(node.kwargs.values())):
            if isinstance(a, fx.Node):
                self.freeze(self.chan.get(a), f"MultiheadAttention '{name}' reads them")
        q = self.shape(node.args[0])
        if q is not None and len(q) == 3:
            t = q[0] if not m.batch_first else q[1]
            e = m.embed_dim
            # the four projections and the two attention products, per example
            self.fixed_flops += 8.0 * t * e * e + 4.0 * t * t * e
        return _Chan(0, [], f"output of MultiheadAttention '{name}'")

    def view(self, node: fx.Node, c: _Chan) -> _Chan:
        in_shape, out_shape = self.shape(node.args[0]), self.shape(node)
        if in_shape is not None and out_shape is not None:
            if tuple(in_shape) == tuple(out_shape):
                return c
            if len(out_shape) == 2 and out_shape[0] == in_shape[0] and c.dim == 1:
                if not any(isinstance(a, int) and a not in (-1,) and a != in_shape[0]
                           for a in node.args[1:]):
                    return self.flatten(node, c, 1, len(in_shape) - 1)
        return self.opaque(node, f".{node.target}() to a fixed shape", node.target)

    def reduce(self, node: fx.Node, c: Optional[_Chan]) -> Optional[_Chan]:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        in_shape = self.shape(node.args[0])
        if c is None or c.dim == 0:
            return c
        if dims is None:
            return self.opaque(node, f"{getattr(node.target, '__name__', node.target)} over "
                                     f"every dimension", node.target)
        dims = [dims] if isinstance(dims, int) else list(dims)
        nd = len(in_shape) if in_shape is not None else 0
        dims = [d % nd for d in dims]
        if c.dim == 1 and 0 not in dims and 1 not in dims:
            if keep or len(dims) < nd - 2:
                return c
            return _Chan(-1, c.segs)  # (N, C): the channels are now the features
        if c.dim == -1 and (nd - 1) not in dims and 0 not in dims:
            return c  # a mean over tokens keeps the features
        return self.opaque(node, f"{getattr(node.target, '__name__', node.target)} over the "
                                 f"channel or batch dimension", node.target)

    def binary(self, node: fx.Node, chans: list[Optional[_Chan]],
               is_tensor: list[bool]) -> Optional[_Chan]:
        a, b = chans
        if a is None and b is None:
            return None
        if a is not None and a.dim == 0 or b is not None and b.dim == 0:
            if a is not None and b is not None and (a.dim != 0 or b.dim != 0):
                c = b if a.dim == 0 else a  # channels combined with a model input
                self.freeze(c, f"'{node.name}' combines the channels with a model input")
                return c
            return a if a is not None else b  # arithmetic on a raw input
        if a is not None and b is not None:
            sa = [self.size[g] * r for g, r in a.segs]
            sb = [self.size[g] * r for g, r in b.segs]
            if a.dim == b.dim and sa == sb and [r for _, r in a.segs] == [r for _, r in
                                                                           b.segs]:
                for (ga, _), (gb, _) in zip(a.segs, b.segs):
                    if self.size[ga] != self.size[gb]:
                        break
                    self.uf.union(ga, gb)
                else:
                    return a
            self.freeze(a, f"'{node.name}' combines tensors whose channels do not line up")
            self.freeze(b, f"'{node.name}' combines tensors whose channels do not line up")
            return a
        c = a if a is not None else b
        other = node.args[1] if a is not None else node.args[0]
        if isinstance(other, fx.Node):  # a tensor without a channel map (a constant, a mask)
            shp = self.shape(other)
            if shp is not None and len(shp) > 0 and any(s > 1 for s in shp):
                self.freeze(c, f"'{node.name}' combines the channels with a constant tensor")
        return c

    def cat(self, node: fx.Node) -> Optional[_Chan]:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        chans = [self.chan.get(t) for t in tensors]
        if any(c is None or c.dim == 0 for c in chans):
            if all(c is None for c in chans):
                return None
            if all(c is not None and c.dim == 0 for c in chans):
                return chans[0]  # raw inputs joined before any layer reads them
            self.fail(node, "torch.cat of channel tensors with other tensors")
        nd = len(self.shape(node) or ())
        cdim = chans[0].dim % nd if nd else chans[0].dim
        if dim % nd == cdim and all(c.dim == chans[0].dim for c in chans):
            return _Chan(chans[0].dim, [s for c in chans for s in c.segs])
        for c in chans[1:]:  # along another dimension: the same channels in every part
            self.binary(node, [chans[0], c], [True, True])
        return chans[0]

    # -- the result
    def result(self) -> ChannelGraph:
        roots: dict[int, ChannelGroup] = {}
        for g in self.size:
            r = self.uf.find(g)
            grp = roots.setdefault(r, ChannelGroup(r, self.size[r]))
            grp.producers += self.producers.get(g, [])
            if g in self.frozen and grp.frozen is None:
                grp.frozen = self.frozen[g]
        for name, off, g in self.norms:
            roots[self.uf.find(g)].norms.append((name, off))
        for name, off, g in self.passthrough:
            roots[self.uf.find(g)].passthrough.append((name, off))
        for name, off, g, rep in self.consumers:
            roots[self.uf.find(g)].consumers.append((name, off, rep))
        ops = [Op(o.name, o.kind, [(self.uf.find(g), r) for g, r in o.inputs],
                  None if o.output is None else self.uf.find(o.output), o.flop_coef,
                  o.param_coef, o.in_elems, o.out_elems) for o in self.ops]
        return ChannelGraph(self.model, self.gm, dict(sorted(roots.items())), ops,
                            self.fixed_flops)


def _user_line(stack: str) -> str:
    """", at <file>:<line>: <code>" of the first frame of ``stack`` outside torch."""
    lines = stack.splitlines()
    for i, ln in enumerate(lines):
        ln = ln.strip()
        if ln.startswith("File ") and "/torch/" not in ln:
            parts = ln.split('"')
            where = parts[1] if len(parts) > 2 else ln
            num = ln.split("line ")[-1].split(",")[0] if "line " in ln else "?"
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f", at {where}:{num}: {code}"
    return ""


def _flat_args(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out += _flat_args(a)
        elif isinstance(a, dict):
            out += _flat_args(list(a.values()))
        else:
            out.append(a)
    return out


_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
           nn.GroupNorm, nn.Embedding, nn.MultiheadAttention)


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer, recording source lines, that also keeps subclasses of the layers
    it knows as single modules (so a ``MyLinear(nn.Linear)`` is rejected by its name instead
    of being traced into)."""

    def __init__(self):
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or isinstance(m, _LAYERS)


def trace(model: nn.Module, example_inputs: Any) -> ChannelGraph:
    """The channel groups and operations of ``model`` (module docstring), traced with
    ``torch.fx`` and sized by running ``example_inputs`` (a tensor or a tuple of tensors)
    through it once in eval mode (no state changes: the training mode is restored).

    Raises `UnsupportedOpError` naming an operation it cannot follow on channels."""
    check_instance("model", model, nn.Module)
    if not list(model.children()):
        raise ValueError(f"the model is a single layer ({type(model).__name__}): there is no "
                         f"width between layers to learn or change")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        tracer = _LeafTracer()
        graph = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as e:  # data-dependent control flow and the like
        raise UnsupportedOpError(f"torch.fx cannot trace {type(model).__name__}: {e}") from e
    modes = {m: m.training for m in model.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    finally:
        for m, t in modes.items():
            m.training = t
    tracer = _Tracer(model, gm)
    tracer.run()
    return tracer.result()
