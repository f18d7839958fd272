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
