"""Triton kernels of block_sparse_linear: y = x @ Wᵀ + b with W stored as b×b blocks.

The layout (morpho_kernels.formats.BlockSparseLayout) keeps each live block in a fixed slot s of
`values` (C, B, B) with its block coordinates rows[s], cols[s]; `row_ptr`/`row_order` list the
slots of each block row (row-sorted), `col_ptr`/`col_order` the slots of each block column
(the transpose, for dX). Two kernels, each with a launcher (explicit strides):

* `_bs_dsd_kernel`: C = A @ op(W) with W block-sparse. One program owns a BLOCK_M × B tile of C
  in output block `pb` and walks the slots listed for `pb`, each block split into B/BLOCK_R
  reduction steps (so a 128-wide block still pipelines in shared memory). Forward: A = x,
  pb = block row of W, v read transposed. dX: A = dY, pb = block column, v read as stored.
* `_bs_sdd_kernel`: dV[s] = dY[:, row block]ᵀ @ x[:, col block] for every live slot (sampled
  dense-dense): work ∝ live blocks; a TILE × TILE sub-tile per program when B > TILE.

Under TRITON_INTERPRET=1 (CPU tests) each kernel keeps one config (the largest valid) and bf16 /
fp16 are upcast before tl.dot (the interpreter's low-precision dot is wrong, DESIGN.md).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .masked_linear import INTERPRET, _flags, _on_device


def _prune(dim: str):
    """Keep configs whose `dim` fits the block size B; under the interpreter only the largest,
    and with MORPHO_AUTOTUNE=0 only the first that fits (no benchmarking, e.g. in tests)."""

    def prune(configs, named_args, **kwargs):
        b = kwargs.get("B", named_args.get("B"))
        ok = [c for c in configs if c.kwargs[dim] <= b]
        if INTERPRET:
            return [max(ok, key=lambda c: c.kwargs[dim])]
        if os.environ.get("MORPHO_AUTOTUNE", "1") == "0":
            return ok[:1]
        return ok

    return {"early_config_prune": prune}


def _dsd_configs() -> list:
    if INTERPRET:  # big blocks = few interpreted steps; BLOCK_R pruned to ≤ B
        return [triton.Config({"BLOCK_M": 64, "BLOCK_R": r}) for r in (16, 32, 64, 128)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_R": br}, num_warps=w, num_stages=s)
        for bm, br, w, s in [
            (128, 64, 8, 3),
            (128, 64, 4, 4),
            (256, 64, 8, 3),
            (128, 128, 8, 3),
            (128, 32, 4, 4),
            (64, 64, 4, 4),
            (64, 32, 4, 4),
            (64, 16, 4, 4),
        ]
    ]


def _sdd_configs() -> list:
    if INTERPRET:
        return [triton.Config({"TILE": t, "BLOCK_M": 64}) for t in (16, 32, 64, 128)]
    return [
        triton.Config({"TILE": t, "BLOCK_M": bm}, num_warps=w, num_stages=s)
        for t, bm, w, s in [
            (128, 64, 8, 3),
            (128, 32, 8, 4),
            (64, 64, 4, 3),
            (64, 128, 4, 3),
            (32, 64, 4, 3),
            (16, 64, 4, 3),
        ]
    ]


@triton.autotune(configs=_dsd_configs(), key=["M", "P", "B"], prune_configs_by=_prune("BLOCK_R"))
@triton.jit
def _bs_dsd_kernel(
    a_ptr, v_ptr, ptr_ptr, order_ptr, sidx_ptr, bias_ptr, c_ptr,  # pointers
    M, P,  # sizes: rows of A and C, columns of C
    stride_am, stride_ar, stride_cm, stride_cp, stride_vr, stride_vp,  # strides
    HAS_BIAS: tl.constexpr, B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
    UPCAST: tl.constexpr, IS_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pb = tl.program_id(1)  # output block: block row of W (forward) or block column (dX)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, B)
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m < M
    start = tl.load(ptr_ptr + pb)
    end = tl.load(ptr_ptr + pb + 1)
    SPLIT: tl.constexpr = B // BLOCK_R
    acc = tl.zeros((BLOCK_M, B), dtype=tl.float32)
    for i in range(start * SPLIT, end * SPLIT):
        j = i // SPLIT
        sub = i - j * SPLIT
        s = tl.load(order_ptr + j).to(tl.int64)  # slot of the j-th block of this output block
        q = tl.load(sidx_ptr + j).to(tl.int64)  # its block index along the reduction
        r_off = q * B + sub * BLOCK_R + offs_r  # (BLOCK_R,) columns of A
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + r_off[None, :] * stride_ar,
                    mask=m_mask[:, None], other=0.0)
        v = tl.load(v_ptr + s * (B * B) + (sub * BLOCK_R + offs_r)[:, None] * stride_vr
                    + offs_p[None, :] * stride_vp)  # (BLOCK_R, B)
        if UPCAST:
            a = a.to(tl.float32)
            v = v.to(tl.float32)
        if IS_FP32:
            acc = tl.dot(a, v, acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a, v, acc)
    cols = pb.to(tl.int64) * B + offs_p
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    tl.store(c_ptr + offs_m[:, None] * stride_cm + cols[None, :] * stride_cp,
             acc.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & (cols[None, :] < P))


@triton.autotune(configs=_sdd_configs(), key=["M", "B"], prune_configs_by=_prune("TILE"))
@triton.jit
def _bs_sdd_kernel(
    dy_ptr, x_ptr, rows_ptr, cols_ptr, dv_ptr,  # pointers
    M,  # sizes: tokens
    stride_dm, stride_dn, stride_xm, stride_xk,  # strides (dv is contiguous (C, B, B))
    B: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
    UPCAST: tl.constexpr, IS_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    NT: tl.constexpr = B // TILE
    t = tl.program_id(1)
    ti = t // NT
    tj = t - ti * NT
    r = tl.load(rows_ptr + s).to(tl.int64)
    c = tl.load(cols_ptr + s).to(tl.int64)
    offs_t = tl.arange(0, TILE)
    offs_n = r * B + ti * TILE + offs_t
    offs_k = c * B + tj * TILE + offs_t
    acc = tl.zeros((TILE, TILE), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        m_mask = offs_m < M
        dyt = tl.load(dy_ptr + offs_m[None, :] * stride_dm + offs_n[:, None] * stride_dn,
                      mask=m_mask[None, :], other=0.0)  # (TILE, BLOCK_M) = dYᵀ
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=m_mask[:, None], other=0.0)  # (BLOCK_M, TILE)
        if UPCAST:
            dyt = dyt.to(tl.float32)
            x = x.to(tl.float32)
        if IS_FP32:
            acc = tl.dot(dyt, x, acc, input_precision=PRECISION)
        else:
            acc = tl.dot(dyt, x, acc)
    out = dv_ptr + s * (B * B) + (ti * TILE + offs_t)[:, None] * B + (tj * TILE + offs_t)[None, :]
    tl.store(out, acc.to(dv_ptr.dtype.element_ty))


# ----------------------------------------------------------------------------- launchers


def dsd(a: torch.Tensor, values: torch.Tensor, ptr: torch.Tensor, order: torch.Tensor,
        idx: torch.Tensor, n_out_blocks: int, bias: torch.Tensor | None,
        transpose: bool) -> torch.Tensor:
    """C (M, n_out_blocks·B) = a @ op(W), W block-sparse with slots `values` (C, B, B).

    transpose=True (forward): a is x (M, K), ptr/order = row_ptr/row_order, idx = cols.
    transpose=False (dX): a is dY (M, N), ptr/order = col_ptr/col_order, idx = rows.
    """
    m = a.shape[0]
    b = values.shape[-1]
    p = n_out_blocks * b
    c = torch.empty((m, p), device=a.device, dtype=a.dtype)
    if m == 0 or p == 0:
        return c
    values = values.contiguous()
    # idx in walk order (one small gather): the loop then loads order[j] and sidx[j] side by
    # side instead of idx[order[j]], a dependent chain the software pipeliner cannot hoist
    sidx = idx.index_select(0, order.long()) if order.numel() else idx
    bias = bias.contiguous() if bias is not None else None
    svr, svp = (1, b) if transpose else (b, 1)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), n_out_blocks)
    with _on_device(a):
        _bs_dsd_kernel[grid](
            a, values, ptr, order, sidx, bias if bias is not None else c, c,
            m, p,
            a.stride(0), a.stride(1), c.stride(0), c.stride(1), svr, svp,
            HAS_BIAS=bias is not None, B=b, **_flags(a.dtype),
        )
    return c


def sdd(grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
        block: int) -> torch.Tensor:
    """dV (C, B, B): dV[s] = dY[:, rows[s]-block]ᵀ @ x[:, cols[s]-block] for every slot."""
    m = x.shape[0]
    cap = rows.shape[0]
    dv = torch.empty((cap, block, block), device=x.device, dtype=x.dtype)
    if cap == 0:
        return dv
    if m == 0:
        return dv.zero_()
    grid = lambda meta: (cap, (block // meta["TILE"]) ** 2)
    with _on_device(x):
        _bs_sdd_kernel[grid](
            grad_out, x, rows, cols, dv,
            m,
            grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1),
            B=block, **_flags(x.dtype),
        )
    return dv
