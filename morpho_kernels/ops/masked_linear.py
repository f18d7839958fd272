"""morpho::masked_linear: y = x @ (W ⊙ σ(M/T))ᵀ + b, the learned-mask linear layer.

Order (DESIGN.md convention 1): backends and their checks → custom ops (forward, backward) with
fake kernels → autograd → public function. Kernels live in morpho_kernels/triton/masked_linear.py
and csrc/; the reference in morpho_kernels/reference.py.

Backends, chosen per call (MORPHO_BACKEND forces one):
* triton    CUDA tensors, fp16/bf16/fp32 (CPU tensors only under TRITON_INTERPRET=1, for tests).
            Forward: fused sigmoid-prologue GEMM while tokens ≤ fused_max_tokens(), else the
            effective weight materialised once (a temporary) and the vendor GEMM (the default).
            Backward: G = dYᵀX by the vendor GEMM and a one-pass dW/dM epilogue (or, under the
            same crossover, one fused kernel keeping G in registers); dX like the forward.
* ext       C++ (CPU, any float dtype) / CUDA (when built with CUDA): one-pass effective weight
            and one-pass backward epilogue around BLAS GEMMs.
* reference pure PyTorch (any device and float dtype).

Saved for backward: x, W, M and the 0-dim temperature; nothing of the weight's size is created
for backward beyond the parameters themselves. The Triton backward allocates no (N, K) tensor
beyond dW and dM (W ⊙ s lives in dM's buffer until the in-place epilogue overwrites it; G is
written straight into dW).

Host path: eager calls go through a plain torch.autograd.Function (`_MaskedLinearFunction`);
under torch.compile (`torch.compiler.is_compiling()`) the custom op `morpho::masked_linear`,
whose autograd calls `morpho::masked_linear_backward`. Both run the same `_forward` and
`_backward_impl`.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _ext, reference
from .._dispatch import Backend, CallSpec, Dispatcher, check_ext, check_reference, check_triton
from ..checks import check_real

# Largest token count served by the fused Triton kernels (sigmoid-prologue GEMM forward and dX,
# dW/dM with G = dYᵀX kept in registers); above it the Triton backend materialises W ⊙ σ(M/T)
# for cuBLAS and runs cuBLAS dYᵀX plus a one-pass epilogue. Measured on an H100 (run
# 4286c25e4698 in bench/results/masked_linear.jsonl, impls morpho_fused / morpho_materialized):
# the materialised path was as fast or faster at every token count from 16 to 8192 in fp32 and
# in all but one bf16 case, so the fused path is off by default (0). Override:
# MORPHO_FUSED_MAX_TOKENS.
DEFAULT_FUSED_MAX_TOKENS = 0


def fused_max_tokens() -> int:
    """Crossover (tokens) between the fused kernel and materialise-then-GEMM, read per call."""
    raw = os.environ.get("MORPHO_FUSED_MAX_TOKENS")
    if raw is None:
        return DEFAULT_FUSED_MAX_TOKENS
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"MORPHO_FUSED_MAX_TOKENS must be an integer, got {raw!r}") from exc


# ----------------------------------------------------------------------------- backends

_triton_import_error: Optional[str] = None
try:
    from ..triton import masked_linear as _tk
except Exception as exc:  # ImportError, or triton failing to initialise
    _tk = None
    _triton_import_error = f"triton unavailable ({type(exc).__name__}: {exc})"


def _check_triton(spec: CallSpec) -> Optional[str]:
    return check_triton(spec, _tk, _triton_import_error)


DISPATCH = Dispatcher(
    "masked_linear",
    [Backend("triton", _check_triton), Backend("ext", check_ext),
     Backend("reference", check_reference)],
)


def _spec(x: Tensor, weight: Tensor) -> CallSpec:
    tokens = x.numel() // max(x.shape[-1], 1) if x.dim() else 0
    n, k = weight.shape
    return CallSpec(x.device, x.dtype, (("tokens", tokens), ("n", n), ("k", k)))


def _check_temperature_value(temperature: Tensor) -> None:
    # Only CPU values are checked here: reading a CUDA scalar would synchronise the host.
    if temperature.device.type == "cpu":
        check_temperature(float(temperature))


def _rows(t: Tensor, cols: int) -> Tensor:
    """``t`` as (rows, cols); no view op for a 2-D tensor (host time of the eager path)."""
    return t if t.dim() == 2 else t.reshape(-1, cols)


def _scalar(t: Tensor) -> Tensor:
    return t if t.dim() == 0 else t.reshape(())


def _t32(temperature: Tensor, x: Tensor) -> Tensor:
    """The 0-dim fp32 temperature on x's device the Triton kernels read (no op when it is)."""
    if temperature.dtype != torch.float32 or temperature.device != x.device:
        temperature = temperature.to(device=x.device, dtype=torch.float32)
    return _scalar(temperature)


# ----------------------------------------------------------------------------- forward op


def _forward_triton(x2: Tensor, weight: Tensor, mask_logits: Tensor, t: Tensor,
                    bias: Optional[Tensor]) -> Tensor:
    if x2.shape[0] <= fused_max_tokens():
        return _tk.masked_mm(x2, weight, mask_logits, t, bias, transpose=True)
    weff = _tk.masked_weight(weight, mask_logits, t)  # temporary (N, K), freed on return
    return torch.nn.functional.linear(x2, weff, bias)


def _forward_ext(x2: Tensor, weight: Tensor, mask_logits: Tensor, t: Tensor,
                 bias: Optional[Tensor]) -> Tensor:
    weff = torch.ops.morpho.masked_weight(weight, mask_logits, t)
    return torch.nn.functional.linear(x2, weff, bias)


def _forward(x: Tensor, weight: Tensor, mask_logits: Tensor, temperature: Tensor,
             bias: Optional[Tensor]) -> Tensor:
    """The forward on the chosen backend (the body of the custom op and of the eager
    autograd.Function)."""
    backend = DISPATCH.choose(_spec(x, weight))
    _check_temperature_value(temperature)
    n, k = weight.shape
    x2 = _rows(x, k)  # (tokens, K)
    if backend == "triton":
        y = _forward_triton(x2, weight, mask_logits, _t32(temperature, x), bias)
    elif backend == "ext":
        y = _forward_ext(x2, weight, mask_logits, _scalar(temperature), bias)
    else:
        y = reference.masked_linear(x2, weight, mask_logits, temperature, bias)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n)


@torch.library.custom_op("morpho::masked_linear", mutates_args=())
def _masked_linear_op(x: Tensor, weight: Tensor, mask_logits: Tensor, temperature: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
    return _forward(x, weight, mask_logits, temperature, bias)


@_masked_linear_op.register_fake
def _masked_linear_fake(x, weight, mask_logits, temperature, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# ----------------------------------------------------------------------------- backward op


def _backward_triton(g2, x2, weight, mask_logits, t, need_x, need_wm):
    dx = dw = dm = None
    if g2.shape[0] <= fused_max_tokens():
        if need_wm:
            dw, dm = _tk.masked_linear_bwd_wm(g2, x2, weight, mask_logits, t)
        if need_x:
            dx = _tk.masked_mm(g2, weight, mask_logits, t, None, transpose=False)
        return dx, dw, dm
    if not need_wm:  # dX alone: the effective weight is the one (N, K) temporary
        return g2 @ _tk.masked_weight(weight, mask_logits, t), None, None
    # No (N, K) tensor beyond the two results (issue 22: was G, W ⊙ s and a copy, +3 N×K at
    # the peak): W ⊙ s goes into dM's buffer for dX, G = dYᵀX straight into dW, and the
    # epilogue turns G into dW and overwrites dM in place.
    dm = torch.empty(weight.shape, dtype=mask_logits.dtype, device=weight.device)
    if need_x:
        dx = g2 @ _tk.masked_weight(weight, mask_logits, t, out=dm)  # (tokens, K)
    dw = torch.mm(g2.t(), x2, out=torch.empty(weight.shape, dtype=weight.dtype,
                                              device=weight.device))  # G (N, K)
    _tk.masked_weight_backward_(dw, weight, mask_logits, t, dm)
    return dx, dw, dm


def _backward_ext(g2, x2, weight, mask_logits, t, need_x, need_wm):
    ops = _ext.ops()
    dx = dw = dm = None
    if need_wm:
        dw, dm = ops.masked_weight_backward(g2.t() @ x2, weight, mask_logits, t)
    if need_x:
        dx = g2 @ ops.masked_weight(weight, mask_logits, t)
    return dx, dw, dm


def _backward_impl(grad_out: Tensor, x: Tensor, weight: Tensor, mask_logits: Tensor,
                   temperature: Tensor, need_x: bool, need_wm: bool, need_bias: bool):
    """(dx, dW, dM, db) on the chosen backend; None for a gradient not asked for."""
    backend = DISPATCH.choose(_spec(x, weight))
    n, k = weight.shape
    g2 = _rows(grad_out, n)  # (tokens, N); may be stride-0 (expanded), kernels take strides
    x2 = _rows(x, k)  # (tokens, K)
    if backend == "triton":
        dx, dw, dm = _backward_triton(g2, x2, weight, mask_logits, _t32(temperature, x),
                                      need_x, need_wm)
    elif backend == "ext":
        dx, dw, dm = _backward_ext(g2.contiguous(), x2, weight, mask_logits,
                                   _scalar(temperature), need_x, need_wm)
    else:
        dx, dw, dm, _ = reference.masked_linear_backward(g2, x2, weight, mask_logits,
                                                         temperature, False)
    dx = (dx if x.dim() == 2 else dx.reshape(x.shape)).contiguous() if need_x else None
    acc = torch.float64 if g2.dtype == torch.float64 else torch.float32
    db = g2.sum(0, dtype=acc).to(grad_out.dtype) if need_bias else None
    # contiguous on every backend, as the fake kernel says (weights may be views)
    dw, dm = (dw.contiguous(), dm.contiguous()) if need_wm else (None, None)
    return dx, dw, dm, db


@torch.library.custom_op("morpho::masked_linear_backward", mutates_args=())
def _masked_linear_backward_op(grad_out: Tensor, x: Tensor, weight: Tensor, mask_logits: Tensor,
                               temperature: Tensor, need_x: bool, need_wm: bool,
                               need_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dW, dM, db); a gradient that was not asked for comes back as an empty tensor."""
    grads = _backward_impl(grad_out, x, weight, mask_logits, temperature, need_x, need_wm,
                           need_bias)
    return tuple(grad_out.new_empty(0) if g is None else g for g in grads)


@_masked_linear_backward_op.register_fake
def _masked_linear_backward_fake(grad_out, x, weight, mask_logits, temperature, need_x, need_wm,
                                 need_bias):
    def maybe(flag, like, shape):
        return like.new_empty(shape) if flag else grad_out.new_empty(0)

    return (maybe(need_x, x, x.shape), maybe(need_wm, weight, weight.shape),
            maybe(need_wm, mask_logits, mask_logits.shape),
            maybe(need_bias, grad_out, (weight.shape[0],)))


# ----------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output):
    x, weight, mask_logits, temperature, bias = inputs
    ctx.save_for_backward(x, weight, mask_logits, temperature)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight, mask_logits, temperature = ctx.saved_tensors
    need_x, need_w, need_m, _, need_b = ctx.needs_input_grad
    dx, dw, dm, db = _masked_linear_backward_op(
        grad_out, x, weight, mask_logits, temperature, need_x, need_w or need_m,
        bool(need_b and ctx.has_bias),
    )
    return (dx if need_x else None, dw if need_w else None, dm if need_m else None, None,
            db if need_b and ctx.has_bias else None)


_masked_linear_op.register_autograd(_backward, setup_context=_setup_context)


class _MaskedLinearFunction(torch.autograd.Function):
    """The eager path: the same forward and backward as the custom op without its dispatch
    layers (schema parsing, autograd and fake-kernel registrations, ~0.25 ms of host time per
    fwd+bwd on an H100, issue 22). torch.compile traces the custom op instead."""

    @staticmethod
    def forward(ctx, x, weight, mask_logits, temperature, bias):
        ctx.save_for_backward(x, weight, mask_logits, temperature)
        ctx.has_bias = bias is not None
        return _forward(x, weight, mask_logits, temperature, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mask_logits, temperature = ctx.saved_tensors
        need_x, need_w, need_m, _, need_b = ctx.needs_input_grad
        dx, dw, dm, db = _backward_impl(grad_out, x, weight, mask_logits, temperature, need_x,
                                        need_w or need_m, bool(need_b and ctx.has_bias))
        return dx, dw if need_w else None, dm if need_m else None, None, db


# ----------------------------------------------------------------------------- public function


def _validate(x, weight, mask_logits, bias) -> None:
    for name, t in (("x", x), ("weight", weight), ("mask_logits", mask_logits)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if weight.dim() != 2:
        raise ValueError("weight must be 2-D (out_features, in_features), got "
                         f"{tuple(weight.shape)}")
    if mask_logits.shape != weight.shape:
        raise ValueError(f"mask_logits shape {tuple(mask_logits.shape)} must equal weight shape "
                         f"{tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x's last dim ({tuple(x.shape)}) must equal weight's in_features "
                         f"({weight.shape[1]})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias shape {tuple(bias.shape)} must be ({weight.shape[0]},)")


def _validate_dtypes(x, weight, mask_logits, bias) -> None:
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be floating point, got {x.dtype}")
    for name, t in (("weight", weight), ("mask_logits", mask_logits), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name} dtype {t.dtype} must equal x dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def check_temperature(temperature) -> float:
    """A Python temperature T > 0 as a float; TypeError / ValueError naming it otherwise."""
    return check_real("temperature", temperature, 0, lo_open=True)


def _temperature_tensor(temperature, x: Tensor) -> Tensor:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or not temperature.dtype.is_floating_point:
            raise ValueError("temperature must be a float or a floating tensor with one element, "
                             f"got shape {tuple(temperature.shape)} dtype {temperature.dtype}")
        if temperature.requires_grad:
            raise ValueError("temperature must not require grad (it is annealed, not learned)")
        if temperature.device != x.device:
            raise ValueError(f"temperature is on {temperature.device} but x is on {x.device}")
        return _scalar(temperature)
    temperature = check_temperature(temperature)
    # A fill kernel, not a host-to-device copy: no synchronisation.
    tdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((), float(temperature), dtype=tdtype, device=x.device)


def masked_linear(x: Tensor, weight: Tensor, mask_logits: Tensor,
                  temperature: Union[float, Tensor], bias: Optional[Tensor] = None) -> Tensor:
    """Linear layer with a learned soft mask: ``x @ (weight ⊙ σ(mask_logits / T))ᵀ + bias``.

    Args:
        x: input ``(*, in_features)``, fp16 / bf16 / fp32 (fp64 on the ext and reference paths).
        weight: ``(out_features, in_features)``, same dtype and device as ``x``.
        mask_logits: mask logits M, same shape, dtype and device as ``weight``; ``-inf`` marks a
            hard-pruned connection (exact zero, zero gradients, never NaN).
        temperature: T > 0, a Python float or a one-element floating tensor on ``x``'s device.
            Pass a tensor (e.g. a module buffer) when T changes during compiled training, so
            torch.compile does not recompile for every value. A CUDA tensor's value is not
            checked (that would synchronise); it must be finite and positive.
        bias: optional ``(out_features,)``.

    Returns:
        ``(*, out_features)`` in ``x``'s dtype. Under autocast, inputs are cast to the autocast
        dtype first (like ``F.linear``). Differentiable in x, weight, mask_logits and bias.

    Raises:
        TypeError / ValueError naming the offending argument for bad input;
        BackendUnavailableError when MORPHO_BACKEND forces a backend that cannot serve the call.
    """
    _validate(x, weight, mask_logits, bias)
    autocast = torch.is_autocast_enabled(x.device.type)
    if autocast:
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, mask_logits = x.to(dtype), weight.to(dtype), mask_logits.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    _validate_dtypes(x, weight, mask_logits, bias)
    t = _temperature_tensor(temperature, x)
    # torch.compile traces the custom op (fake kernel, one graph node); eager calls take the
    # plain autograd.Function, whose host path is a few Python calls
    apply = (_masked_linear_op if torch.compiler.is_compiling()
             else _MaskedLinearFunction.apply)
    if not autocast:
        return apply(x, weight, mask_logits, t, bias)
    with torch.autocast(x.device.type, enabled=False):
        return apply(x, weight, mask_logits, t, bias)
