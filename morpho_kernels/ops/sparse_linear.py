"""morpho::sparse_linear: y = x Wᵀ + b with W given as an EdgeList (CSR by destination) and one
value per edge slot; work ∝ live connections × tokens. Also morpho::dense_grad_at, ∂L/∂W at
candidate positions (what gradient-driven growth such as RigL ranks).

Order (DESIGN.md convention 1): backends and checks → custom ops (forward, backward, dense
gradient) with fake kernels → autograd → public functions. Kernels: csrc/cpu/sparse_linear.cpp,
csrc/cuda/graph.cu; reference: morpho_kernels/reference_graph.py (materialises the dense W).

Backends, chosen per call (MORPHO_BACKEND forces one):
* ext       C++ (CPU) / CUDA (when built with CUDA), fp16 / bf16 / fp32 / fp64. x is transposed
            once to (K, T) so each edge is a contiguous axpy over tokens. Backward: dx by the same
            kernel on the transposed edge list (EdgeList.transpose(), cached per structure),
            dvalues[e] = ⟨dy[:, dst_e], x[:, src_e]⟩.
* reference pure PyTorch through the dense (out, in) weight (any device and float dtype).
No Triton backend: MORPHO_BACKEND=triton raises for this op.

Saved for backward: x, the index tensors and values; nothing of the dense weight's size.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from .. import _ext, reference_graph
from .._dispatch import FLOAT_DTYPES, Backend, CallSpec, Dispatcher, check_ext, check_reference
from ..formats import EdgeList, check_index

# ----------------------------------------------------------------------------- backends

@functools.cache
def _register_ext_fakes() -> None:

    @torch.library.register_fake("morpho::sparse_linear_t")
    def _t_fake(xt, row_ptr, col, values, bias):
        return xt.new_empty((row_ptr.shape[0] - 1, xt.shape[1]))

    @torch.library.register_fake("morpho::sparse_linear_dvalues")
    def _dv_fake(dyt, xt, row_ptr, col):
        return dyt.new_empty(col.shape)


def _check_ext(spec: CallSpec) -> Optional[str]:
    return check_ext(spec, dtypes=FLOAT_DTYPES, on_ready=_register_ext_fakes)


DISPATCH = Dispatcher("sparse_linear",
                      [Backend("ext", _check_ext), Backend("reference", check_reference)])


# CPU: from this many tokens on, xᵀ is passed tile-major (T / 64, K, 64), padded to a multiple
# of 64 tokens, so each 64-token tile's slice of xᵀ is contiguous (1 MiB at K = 4096, in L2):
# 4.75 -> 1.5 ms at 4096x4096, 1%, 256 tokens on 2 cores. Below it, (K, T) is small enough.
_TILE, _TILED_MIN_TOKENS = 64, 128


def _transposed(x2: Tensor) -> tuple[Tensor, int]:
    """x (T, K) as the kernel's xᵀ, and the token count the kernel will produce."""
    t, k = x2.shape
    if x2.device.type != "cpu" or t < _TILED_MIN_TOKENS:
        return x2.t().contiguous(), t
    tp = -(-t // _TILE) * _TILE
    xp = torch.nn.functional.pad(x2, (0, 0, 0, tp - t)) if tp != t else x2
    return xp.view(tp // _TILE, _TILE, k).transpose(1, 2).contiguous(), tp


def _apply_t(ops, x2: Tensor, row_ptr: Tensor, col: Tensor, values: Tensor,
             bias: Optional[Tensor]) -> Tensor:
    """(T, N) = x2 Wᵀ (+ bias) through the extension's transposed-layout kernel."""
    xt, tp = _transposed(x2)
    yt = ops.sparse_linear_t(xt, row_ptr, col, values, bias)  # (N, tp)
    return yt[:, :x2.shape[0]].t()


def _spec(x2: Tensor, row_ptr: Tensor, col: Tensor) -> CallSpec:
    return CallSpec(x2.device, x2.dtype, (("tokens", x2.shape[0]), ("n", row_ptr.numel() - 1),
                                          ("k", x2.shape[1]), ("capacity", col.numel())))


# ----------------------------------------------------------------------------- forward op


@torch.library.custom_op("morpho::sparse_linear", mutates_args=())
def _sparse_linear_op(x: Tensor, row_ptr: Tensor, col: Tensor, values: Tensor,
                      bias: Optional[Tensor], t_ptr: Optional[Tensor], t_dst: Optional[Tensor],
                      t_perm: Optional[Tensor]) -> Tensor:
    """x (*, K) → (*, N); t_* (the transposed list) are carried for backward only."""
    n, k = row_ptr.numel() - 1, x.shape[-1]
    x2 = x.reshape(-1, k)  # (T, K)
    if DISPATCH.choose(_spec(x2, row_ptr, col)) == "ext":
        y = _apply_t(_ext.ops(), x2, row_ptr, col, values, bias)
    else:
        y = reference_graph.sparse_linear(x2, row_ptr, col, values, bias)
    return y.reshape(*x.shape[:-1], n).contiguous()


@_sparse_linear_op.register_fake
def _sparse_linear_fake(x, row_ptr, col, values, bias, t_ptr, t_dst, t_perm):
    return x.new_empty((*x.shape[:-1], row_ptr.shape[0] - 1))


# ----------------------------------------------------------------------------- backward op


@torch.library.custom_op("morpho::sparse_linear_backward", mutates_args=())
def _sparse_linear_backward_op(grad_out: Tensor, x: Tensor, row_ptr: Tensor, col: Tensor,
                               values: Tensor, t_ptr: Optional[Tensor], t_dst: Optional[Tensor],
                               t_perm: Optional[Tensor], need_x: bool, need_values: bool,
                               need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dvalues, dbias); a gradient not asked for comes back empty."""
    n, k = row_ptr.numel() - 1, x.shape[-1]
    x2, g2 = x.reshape(-1, k), grad_out.reshape(-1, n)  # (T, K), (T, N)
    dx, dv, db = (grad_out.new_empty(0) for _ in range(3))  # distinct: outputs may not alias
    if DISPATCH.choose(_spec(x2, row_ptr, col)) == "ext":
        ops = _ext.ops()
        gt = g2.t().contiguous()  # (N, T)
        if need_x:
            dx = _apply_t(ops, g2, t_ptr, t_dst, values[t_perm], None).reshape(x.shape)
        if need_values:
            dv = ops.sparse_linear_dvalues(gt, x2.t().contiguous(), row_ptr, col)
    else:
        w = reference_graph.dense_weight(row_ptr, col, values, k)
        if need_x:
            dx = (g2 @ w).reshape(x.shape)
        if need_values:
            dw = g2.t() @ x2  # (N, K)
            d = reference_graph.dst_index(row_ptr, col.numel())
            live = d < n
            dv = torch.where(live, dw[d.clamp(max=max(n - 1, 0)), col], 0).to(values.dtype)
    if need_bias:
        acc = torch.float64 if g2.dtype == torch.float64 else torch.float32
        db = g2.sum(0, dtype=acc).to(grad_out.dtype)
    return dx.contiguous(), dv.contiguous(), db


@_sparse_linear_backward_op.register_fake
def _sparse_linear_backward_fake(grad_out, x, row_ptr, col, values, t_ptr, t_dst, t_perm,
                                 need_x, need_values, need_bias):
    e = grad_out.new_empty(0)
    return (x.new_empty(x.shape) if need_x else e,
            values.new_empty(values.shape) if need_values else grad_out.new_empty(0),
            grad_out.new_empty(row_ptr.shape[0] - 1) if need_bias else grad_out.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, row_ptr, col, values, bias, t_ptr, t_dst, t_perm = inputs
    ctx.save_for_backward(x, row_ptr, col, values, t_ptr, t_dst, t_perm)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, row_ptr, col, values, t_ptr, t_dst, t_perm = ctx.saved_tensors
    need_x, _, _, need_v, need_b = ctx.needs_input_grad[:5]
    if need_x and t_ptr is None:
        raise RuntimeError("sparse_linear: x needs a gradient but the transposed edge list was "
                           "not passed (call through morpho_kernels.sparse_linear)")
    dx, dv, db = _sparse_linear_backward_op(grad_out, x, row_ptr, col, values, t_ptr, t_dst,
                                            t_perm, need_x, need_v, bool(need_b and ctx.has_bias))
    return (dx if need_x else None, None, None, dv if need_v else None,
            db if need_b and ctx.has_bias else None, None, None, None)


_sparse_linear_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- dense gradient


@torch.library.custom_op("morpho::dense_grad_at", mutates_args=())
def _dense_grad_at_op(x: Tensor, grad_out: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    k, n = x.shape[-1], grad_out.shape[-1]
    x2, g2 = x.reshape(-1, k), grad_out.reshape(-1, n)
    row_ptr = torch.zeros(n + 1, dtype=torch.int64, device=x.device)
    spec = _spec(x2, row_ptr, src)
    if DISPATCH.choose(spec) != "ext":
        return reference_graph.dense_grad_at(x2, g2, src, dst)
    # Candidates grouped by destination (a CSR whose rows need not be sorted), then one dot
    # per candidate with the dvalues kernel.
    perm = torch.argsort(dst, stable=True)
    row_ptr[1:] = torch.cumsum(torch.bincount(dst, minlength=n), 0)
    dv = _ext.ops().sparse_linear_dvalues(g2.t().contiguous(), x2.t().contiguous(), row_ptr,
                                          src[perm].contiguous())
    out = torch.empty_like(dv)
    out[perm] = dv
    return out


@_dense_grad_at_op.register_fake
def _dense_grad_at_fake(x, grad_out, src, dst):
    return x.new_empty(src.shape)


# ----------------------------------------------------------------------------- public functions


def _validate(x, edges, values, bias) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(edges, EdgeList):
        raise TypeError(f"edges must be an EdgeList, got {type(edges).__name__}")
    if not isinstance(values, Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be floating point, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != edges.in_features:
        raise ValueError(f"x's last dim ({tuple(x.shape)}) must equal edges.in_features "
                         f"({edges.in_features})")
    if values.shape != (edges.capacity,):
        raise ValueError(f"values shape {tuple(values.shape)} must be (edges.capacity,) = "
                         f"({edges.capacity},)")
    if bias is not None and bias.shape != (edges.out_features,):
        raise ValueError(f"bias shape {tuple(bias.shape)} must be ({edges.out_features},)")
    for name, t in (("values", values), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name} dtype {t.dtype} must equal x dtype {x.dtype}")
    for name, t in (("edges", edges.row_ptr), ("values", values), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def sparse_linear(x: Tensor, edges: EdgeList, values: Tensor,
                  bias: Optional[Tensor] = None) -> Tensor:
    """``y[..., d] = bias[d] + Σ_{edges s→d} values[slot] · x[..., s]``.

    Args:
        x: ``(*, in_features)`` fp16 / bf16 / fp32 / fp64.
        edges: the layer's EdgeList (on x's device).
        values: ``(edges.capacity,)`` one value per slot, x's dtype (spare slots are ignored).
        bias: optional ``(out_features,)``.

    Returns:
        ``(*, out_features)``; differentiable in x, values and bias (spare slots get gradient 0).
        Under autocast, x, values and bias are cast to the autocast dtype first.
    """
    _validate(x, edges, values, bias)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, values = x.to(dtype), values.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    t_ptr = t_dst = t_perm = None
    if torch.is_grad_enabled() and x.requires_grad:
        t_ptr, t_dst, t_perm = edges.transpose()
    with torch.autocast(x.device.type, enabled=False):
        return _sparse_linear_op(x, edges.row_ptr, edges.col, values, bias, t_ptr, t_dst, t_perm)


def dense_grad_at(x: Tensor, grad_out: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """∂L/∂W[dst[i], src[i]] = Σ_tokens grad_out[..., dst[i]] · x[..., src[i]] for a linear layer
    with input ``x (*, K)`` and output gradient ``grad_out (*, N)``, at candidate positions only
    (the dense ``N × K`` gradient is never formed on the ext backend). In x's dtype."""
    for name, t in (("x", x), ("grad_out", grad_out)):
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating torch.Tensor")
    if x.shape[:-1] != grad_out.shape[:-1] or x.dim() < 1:
        raise ValueError(f"x {tuple(x.shape)} and grad_out {tuple(grad_out.shape)} must have the "
                         "same leading (token) dims")
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise TypeError("grad_out must have x's dtype and device")
    src = check_index("src", src, x.shape[-1]).to(x.device)
    dst = check_index("dst", dst, grad_out.shape[-1]).to(x.device)
    if src.shape != dst.shape:
        raise ValueError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} must match")
    return _dense_grad_at_op(x.detach(), grad_out.detach(), src, dst)
