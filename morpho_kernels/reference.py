"""Pure-PyTorch version of every op: the CPU fallback, the test oracle, the benchmark baseline.

Written once (DESIGN.md, convention 3). Forward functions are plain differentiable PyTorch, so
autograd through them is the oracle for the hand-written backwards, here and in the kernels.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_weight(weight: Tensor, mask_logits: Tensor, temperature: Tensor | float) -> Tensor:
    """W ⊙ σ(M / T). Logits of −inf give exact zeros."""
    return weight * torch.sigmoid(mask_logits / temperature)


def masked_linear(
    x: Tensor,
    weight: Tensor,
    mask_logits: Tensor,
    temperature: Tensor | float,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """x @ (W ⊙ σ(M / T))ᵀ + b over any number of leading dims of x."""
    return F.linear(x, masked_weight(weight, mask_logits, temperature), bias)


def masked_weight_backward(
    grad: Tensor, weight: Tensor, mask_logits: Tensor, temperature: Tensor | float
) -> tuple[Tensor, Tensor]:
    """From G = ∂L/∂(W ⊙ s): dW = G·s and dM = G·W·s(1−s)/T, with s = σ(M/T)."""
    s = torch.sigmoid(mask_logits / temperature)
    grad = grad.to(weight.dtype)
    return grad * s, grad * weight * s * (1 - s) / temperature


def masked_linear_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    mask_logits: Tensor,
    temperature: Tensor | float,
    has_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients (dx, dW, dM, db) of masked_linear from the output gradient."""
    n, k = weight.shape
    g2 = grad_out.reshape(-1, n)  # (tokens, N)
    x2 = x.reshape(-1, k)  # (tokens, K)
    gw = g2.t() @ x2  # G = dYᵀX, (N, K)
    d_weight, d_mask = masked_weight_backward(gw, weight, mask_logits, temperature)
    dx = (g2 @ masked_weight(weight, mask_logits, temperature)).reshape(x.shape)
    db = g2.sum(0) if has_bias else None
    return dx, d_weight, d_mask, db


def block_sparse_to_dense(values: Tensor, rows: Tensor, cols: Tensor,
                          shape: tuple[int, int]) -> Tensor:
    """Dense (N, K) weight with block `values[s]` (b, b) at block (rows[s], cols[s])."""
    b = values.shape[-1]
    n, k = shape
    dense = values.new_zeros(n // b, k // b, b, b)
    dense = dense.index_put((rows.long(), cols.long()), values)  # differentiable in values
    return dense.permute(0, 2, 1, 3).reshape(n, k)


def block_sparse_linear(x: Tensor, values: Tensor, rows: Tensor, cols: Tensor,
                        out_features: int, bias: Optional[Tensor] = None) -> Tensor:
    """x @ Wᵀ + b with W the block-sparse weight (values at (rows, cols)), densified."""
    w = block_sparse_to_dense(values, rows, cols, (out_features, x.shape[-1]))
    return F.linear(x, w, bias)


def block_sparse_linear_backward(grad_out: Tensor, x: Tensor, values: Tensor, rows: Tensor,
                                 cols: Tensor) -> tuple[Tensor, Tensor]:
    """(dx, dvalues) of block_sparse_linear: dx = dY W, dvalues = (dYᵀX) read at the blocks."""
    b = values.shape[-1]
    n, k = grad_out.shape[-1], x.shape[-1]
    g2, x2 = grad_out.reshape(-1, n), x.reshape(-1, k)
    w = block_sparse_to_dense(values, rows, cols, (n, k))
    dx = (g2 @ w).reshape(x.shape)
    g = (g2.t() @ x2).reshape(n // b, b, k // b, b).permute(0, 2, 1, 3)  # (R, Kb, b, b)
    return dx, g[rows.long(), cols.long()]
