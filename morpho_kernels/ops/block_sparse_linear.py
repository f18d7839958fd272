"""morpho::block_sparse_linear: y = x @ Wᵀ + b with W stored as live b×b blocks.

Order (DESIGN.md convention 1): backends and their checks → custom ops (forward, backward) with
fake kernels → autograd → public function. Kernels: morpho_kernels/triton/block_sparse.py (GPU)
and csrc/cpu/block_sparse.cpp (CPU); the reference (densify, then dense GEMMs) in reference.py.

Backends, chosen per call (MORPHO_BACKEND forces one):
* triton    CUDA tensors, fp16/bf16/fp32: forward and dX walk the live blocks of each output
            block (row / column ordering of the layout), dW is computed at live blocks only.
            CPU tensors only under TRITON_INTERPRET=1 with MORPHO_BACKEND=triton (tests).
* ext       CPU, fp32/fp64 (fp16/bf16 computed in fp32): register-blocked C++ micro-kernels that
            read x in place; work ∝ live blocks.
* reference pure PyTorch on any device and float dtype: densifies W (work ∝ all blocks).

Saved for backward: x, values and the layout's index tensors (no dense weight).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import reference
from .._dispatch import Backend, CallSpec, Dispatcher, check_ext, check_reference, check_triton
from ..formats import BlockSparseLayout

# ----------------------------------------------------------------------------- backends

_triton_import_error: Optional[str] = None
try:
    from ..triton import block_sparse as _tk
except Exception as exc:  # ImportError, or triton failing to initialise
    _tk = None
    _triton_import_error = f"triton unavailable ({type(exc).__name__}: {exc})"


def _check_triton(spec: CallSpec) -> Optional[str]:
    return check_triton(spec, _tk, _triton_import_error)


def _check_ext(spec: CallSpec) -> Optional[str]:
    return check_ext(spec, op="bs_dsd", cuda=False)  # CUDA tensors go to the Triton kernels


DISPATCH = Dispatcher(
    "block_sparse_linear",
    [Backend("triton", _check_triton), Backend("ext", _check_ext),
     Backend("reference", check_reference)],
)


def _spec(x: Tensor, values: Tensor, out_features: int) -> CallSpec:
    tokens = x.numel() // max(x.shape[-1], 1) if x.dim() else 0
    return CallSpec(x.device, x.dtype, (("tokens", tokens), ("n", out_features),
                                        ("k", x.shape[-1]), ("block", values.shape[-1]),
                                        ("blocks", values.shape[0])))


def _ext_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


# ----------------------------------------------------------------------------- forward op


@torch.library.custom_op("morpho::block_sparse_linear", mutates_args=())
def _bs_linear_op(x: Tensor, values: Tensor, rows: Tensor, cols: Tensor, row_ptr: Tensor,
                  row_order: Tensor, col_ptr: Tensor, col_order: Tensor, out_features: int,
                  bias: Optional[Tensor]) -> Tensor:
    backend = DISPATCH.choose(_spec(x, values, out_features))
    k = x.shape[-1]
    b = values.shape[-1]
    x2 = x.reshape(-1, k)  # (tokens, K)
    if backend == "triton":
        y = _tk.dsd(x2, values, row_ptr, row_order, cols, out_features // b, bias, True)
    elif backend == "ext":
        dt = _ext_dtype(x.dtype)
        vmat = values.to(dt).transpose(1, 2).contiguous()  # [slot][k][n]
        y = torch.ops.morpho.bs_dsd(x2.to(dt), vmat, row_ptr, row_order, cols, out_features // b,
                                    bias.to(dt) if bias is not None else None).to(x.dtype)
    else:
        y = reference.block_sparse_linear(x2, values, rows, cols, out_features, bias)
    return y.reshape(*x.shape[:-1], out_features)


@_bs_linear_op.register_fake
def _bs_linear_fake(x, values, rows, cols, row_ptr, row_order, col_ptr, col_order, out_features,
                    bias):
    return x.new_empty((*x.shape[:-1], out_features))


# ----------------------------------------------------------------------------- backward op


def _backward_triton(g2, x2, values, rows, cols, row_order, col_ptr, col_order, k, need_x,
                     need_v, need_b):
    """(dx, dv, db): db (fp32) comes from dW's launch when dW is asked for, else None."""
    b = values.shape[-1]
    dx = _tk.dsd(g2, values, col_ptr, col_order, rows, k // b, None, False) if need_x else None
    dv, db = _tk.sdd(g2, x2, rows, cols, row_order, b, need_b) if need_v else (None, None)
    return dx, dv, db


def _backward_ext(g2, x2, values, rows, cols, col_ptr, col_order, k, need_x, need_v):
    b = values.shape[-1]
    dt = _ext_dtype(x2.dtype)
    g2 = g2.to(dt)
    dx = dv = None
    if need_x:
        dx = torch.ops.morpho.bs_dsd(g2, values.to(dt).contiguous(), col_ptr, col_order, rows,
                                     k // b, None).to(x2.dtype)
    if need_v:
        dv = torch.ops.morpho.bs_sdd(g2, x2.to(dt), rows, cols, b).to(values.dtype)
    return dx, dv


@torch.library.custom_op("morpho::block_sparse_linear_backward", mutates_args=())
def _bs_linear_backward_op(grad_out: Tensor, x: Tensor, values: Tensor, rows: Tensor,
                           cols: Tensor, row_ptr: Tensor, row_order: Tensor, col_ptr: Tensor,
                           col_order: Tensor, need_x: bool, need_values: bool,
                           need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dvalues, dbias); a gradient that was not asked for comes back empty."""
    n = grad_out.shape[-1]
    backend = DISPATCH.choose(_spec(x, values, n))
    k = x.shape[-1]
    g2 = grad_out.reshape(-1, n)  # (tokens, N); may be stride-0 (expanded): kernels take strides
    x2 = x.reshape(-1, k)  # (tokens, K)
    db = None
    if backend == "triton":
        dx, dv, db = _backward_triton(g2, x2, values, rows, cols, row_order, col_ptr, col_order,
                                      k, need_x, need_values, need_bias)
    elif backend == "ext":
        dx, dv = _backward_ext(g2, x2, values, rows, cols, col_ptr, col_order, k, need_x,
                               need_values)
    else:
        dx, dv = reference.block_sparse_linear_backward(g2, x2, values, rows, cols)
    empty = grad_out.new_empty(0)
    acc = torch.float64 if g2.dtype == torch.float64 else torch.float32
    if need_bias:  # the Triton dW launch folds the bias gradient in (fp32 column sums)
        db = (db if db is not None else g2.sum(0, dtype=acc)).to(grad_out.dtype)
    else:
        db = empty.clone()
    dx = dx.reshape(x.shape).contiguous() if need_x else empty.clone()
    dv = dv.contiguous() if need_values else empty.clone()
    return dx, dv, db


@_bs_linear_backward_op.register_fake
def _bs_linear_backward_fake(grad_out, x, values, rows, cols, row_ptr, row_order, col_ptr,
                             col_order, need_x, need_values, need_bias):
    def maybe(flag, like, shape):
        return like.new_empty(shape) if flag else grad_out.new_empty(0)

    return (maybe(need_x, x, x.shape), maybe(need_values, values, values.shape),
            maybe(need_bias, grad_out, (grad_out.shape[-1],)))


# ----------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output):
    x, values, rows, cols, row_ptr, row_order, col_ptr, col_order, _, bias = inputs
    ctx.save_for_backward(x, values, rows, cols, row_ptr, row_order, col_ptr, col_order)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    need_x, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = bool(ctx.needs_input_grad[9] and ctx.has_bias)
    dx, dv, db = _bs_linear_backward_op(grad_out, *ctx.saved_tensors, need_x, need_v, need_b)
    return (dx if need_x else None, dv if need_v else None, None, None, None, None, None, None,
            None, db if need_b else None)


_bs_linear_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public function


def _validate(x, values, layout, bias) -> None:
    if not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout must be a BlockSparseLayout, got {type(layout).__name__}")
    for name, t in (("x", x), ("values", values)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    b, (n, k) = layout.block_size, layout.shape
    if values.shape != (layout.capacity, b, b):
        raise ValueError(f"values shape {tuple(values.shape)} must be {(layout.capacity, b, b)} "
                         "(capacity, block, block) of the layout")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x's last dim ({tuple(x.shape)}) must equal the layout's in_features "
                         f"({k})")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias shape {tuple(bias.shape)} must be ({n},)")


def _validate_dtypes(x, values, bias) -> None:
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be floating point, got {x.dtype}")
    for name, t in (("values", values), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name} dtype {t.dtype} must equal x dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def block_sparse_linear(x: Tensor, values: Tensor, layout: BlockSparseLayout,
                        bias: Optional[Tensor] = None) -> Tensor:
    """Linear layer with a block-sparse weight: ``x @ Wᵀ + bias``, W given by (values, layout).

    Args:
        x: input ``(*, in_features)``, fp16 / bf16 / fp32 (fp64 on the ext and reference paths).
        values: ``(layout.capacity, b, b)`` blocks; slot s sits at block
            ``(layout.rows[s], layout.cols[s])``. Same dtype and device as ``x``.
        layout: a `BlockSparseLayout` on ``x``'s device.
        bias: optional ``(out_features,)``.

    Returns:
        ``(*, out_features)`` in ``x``'s dtype; under autocast, inputs are cast to the autocast
        dtype first (like ``F.linear``). Differentiable in x, values and bias; gradients of the
        values are computed at live blocks only.

    Raises:
        TypeError / ValueError naming the offending argument for bad input;
        BackendUnavailableError when MORPHO_BACKEND forces a backend that cannot serve the call.
    """
    _validate(x, values, layout, bias)
    if layout.device != x.device:
        raise ValueError(f"the layout is on {layout.device} but x is on {x.device}")
    return apply_block_sparse(x, values, layout.tensors(), layout.shape[0], bias)


def apply_block_sparse(x: Tensor, values: Tensor, index: tuple, out_features: int,
                       bias: Optional[Tensor]) -> Tensor:
    """block_sparse_linear on the layout's index tensors (`BlockSparseLayout.tensors()`), with
    the dtype checks and autocast but without the layout-object checks: what a module calls
    from its forward (torch.compile traces it without a Python layout object)."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, values = x.to(dtype), values.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    _validate_dtypes(x, values, bias)
    with torch.autocast(x.device.type, enabled=False):
        return _bs_linear_op(x, values, *index, out_features, bias)
