"""Triton kernels of block_sparse_linear: y = x @ Wᵀ + b with W stored as b×b blocks.

The layout (morpho_kernels.formats.BlockSparseLayout) keeps each live block in a fixed slot s of
`values` (C, B, B) with its block coordinates rows[s], cols[s]; `row_ptr`/`row_order` list the
slots of each block row (row-sorted), `col_ptr`/`col_order` the slots of each block column
(the transpose, for dX). Two kernels, each with a launcher (explicit strides):

* `_bs_dsd_kernel`: C = A @ op(W) with W block-sparse. One program owns a BLOCK_M × B tile of C
  in output block `pb` and walks the slots listed for `pb`, each block split into B/BLOCK_R
  reduction steps (so a 128-wide block still pipelines in shared memory). Forward: A = x,
  pb = block row of W, v read transposed. dX: A = dY, pb = block column, v read as stored.
  Program order (`GROUP_M`, tuned): 0 walks the token tiles fastest (programs running together
  share one block row of W); g ≥ 1 walks groups of g token tiles, each group through all output
  blocks (within a group the g tiles vary fastest; g = 1: the output blocks), so the programs
  running together share a few row panels of A in L2 and A is read from memory about once
  instead of once per live block of its column.
* `_bs_sdd_kernel`: dV[s] = dY[:, row block]ᵀ @ x[:, col block] for every live slot (sampled
  dense-dense): work ∝ live blocks; a TILE × TILE sub-tile per program when B > TILE. Tuned:
  `BY_ROW` visits the slots in block-row order (programs running together share dY panels);
  `SPLIT_M` > 1 splits the tokens into that many chunks, one program each, accumulated with
  atomic adds in an fp32 workspace (more programs than slots, and the programs running together
  read one chunk of x and dY, which fits in L2). The atomics sum in a varying order, so these
  configs are left out under `torch.use_deterministic_algorithms(True)`. With bf16 / fp16 the
  workspace (fp32, the size of dV) is allocated whenever a split config may be chosen
  (`workspace_needed`; not under deterministic mode nor MORPHO_AUTOTUNE=0). Whether a
  launch split the tokens (SPLIT_M > 1) is read from the autotuner's `best_config` right after
  it, launch and read under one lock (`common.LAUNCH_LOCK`, which every autotuned launch of
  every kernel family takes: the autotuner keeps per-call state on the kernel object), so
  threads launching at once (one autograd thread per device) cannot read each other's choice or
  tuning arguments.

Under TRITON_INTERPRET=1 (CPU tests) each kernel keeps one config (the largest valid, or the one
`forced_config` asks for) and bf16 / fp16 are upcast before tl.dot (the interpreter's
low-precision dot is wrong, DESIGN.md).
"""

from __future__ import annotations

import contextlib
import inspect
import os

import torch
import triton
import triton.language as tl
import triton.testing

from ..formats import BLOCK_SIZES
from .common import INTERPRET, LAUNCH_LOCK, dtype_flags, on_device

# kernel name -> config kwargs a test asks for (forced_config); empty in normal use
_FORCED: dict[str, dict] = {}


@contextlib.contextmanager
def forced_config(kernel: str, **kwargs):
    """Run `kernel` ("dsd" or "sdd") only with configs whose kwargs include ``kwargs``.

    For tests, so each program order / split of the tuned space is checked under the
    interpreter, which keeps one config per kernel. Clears the kernel's autotune cache on entry
    and exit.
    """
    kernels = {"dsd": _bs_dsd_kernel, "sdd": _bs_sdd_kernel}
    if kernel not in kernels:
        raise ValueError(f"kernel must be one of {sorted(kernels)}, got {kernel!r}")
    k = kernels[kernel]
    names = set().union(*(c.kwargs for c in k.configs))
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"{kernel} configs have no {unknown}; they have {sorted(names)}")
    _FORCED[kernel] = kwargs
    k.cache.clear()
    try:
        yield
    finally:
        _FORCED.pop(kernel, None)
        k.cache.clear()


def _prune(dim: str, kernel: str):
    """Keep configs whose `dim` fits the block size B (and match a forced_config); under the
    interpreter only the largest, with MORPHO_AUTOTUNE=0 only the first that fits (no
    benchmarking, e.g. in tests)."""

    def prune(configs, named_args, **kwargs):
        b = kwargs.get("B", named_args.get("B"))
        forced = _FORCED.get(kernel, {})
        ok = [c for c in configs if c.kwargs[dim] <= b
              and all(c.kwargs.get(n) == v for n, v in forced.items())]
        if named_args.get("DETERMINISTIC"):  # atomics sum in a varying order: no token split
            ok = [c for c in ok if c.kwargs.get("SPLIT_M", 1) == 1]
        if not ok:
            raise ValueError(f"no {kernel} config fits B={b} with {forced}")
        if INTERPRET:
            return [max(ok, key=lambda c: c.kwargs[dim])]
        if os.environ.get("MORPHO_AUTOTUNE", "1") == "0":
            return ok[:1]
        return ok

    _PRUNERS[kernel] = prune
    return {"early_config_prune": prune}


_PRUNERS: dict = {}  # kernel name -> its early_config_prune (the launcher asks it too)


def _quick_bench(kernel_call, quantiles):
    """Autotuning timer: 20 ms per config instead of triton's 100 (the tuned spaces have 24
    configs per kernel and one tuning per shape, sparsity and direction)."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


# triton.autotune takes do_bench from Triton 3.1 on (older: its default 100 ms timer)
_TUNE_KW = ({"do_bench": _quick_bench}
            if "do_bench" in inspect.signature(triton.autotune).parameters else {})


_GROUPS = (0, 1, 8)  # dsd program orders (see the module docstring); 0 = the old order


def _dsd_configs() -> list:
    # interpreter: big blocks = few interpreted steps; one BLOCK_R per legal block size, pruned
    # to the largest ≤ B (B itself unless a test forces a smaller step)
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_R": r, "GROUP_M": g})
                for g in _GROUPS for r in BLOCK_SIZES]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_R": br, "GROUP_M": g}, num_warps=w, num_stages=s)
        for g in _GROUPS
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


def _zero_workspace(nargs) -> None:
    nargs["ws_ptr"].zero_()


# (BY_ROW, SPLIT_M) of the sdd kernel; (0, 1) = the old behaviour
_SDD_WALKS = ((0, 1), (1, 1), (1, 4), (1, 16))


def _sdd_configs() -> list:
    def cfg(kw, by_row, split, **launch):
        return triton.Config({**kw, "BY_ROW": by_row, "SPLIT_M": split},
                             pre_hook=_zero_workspace if split > 1 else None, **launch)

    if INTERPRET:  # one TILE per legal block size, pruned like BLOCK_R above
        return [cfg({"TILE": t, "BLOCK_M": 64}, by_row, split)
                for by_row, split in _SDD_WALKS for t in BLOCK_SIZES]
    return [
        cfg({"TILE": t, "BLOCK_M": bm}, by_row, split, num_warps=w, num_stages=s)
        for by_row, split in _SDD_WALKS
        for t, bm, w, s in [
            (128, 64, 8, 3),
            (128, 32, 8, 4),
            (64, 64, 4, 3),
            (64, 128, 4, 3),
            (32, 64, 4, 3),
            (16, 64, 4, 3),
        ]
    ]


@triton.autotune(configs=_dsd_configs(), key=["M", "P", "B", "CAP", "stride_vr"],
                 prune_configs_by=_prune("BLOCK_R", "dsd"), **_TUNE_KW)
@triton.jit(do_not_specialize=["CAP"])
def _bs_dsd_kernel(
    a_ptr, v_ptr, ptr_ptr, order_ptr, sidx_ptr, bias_ptr, c_ptr,  # pointers
    M, P, NPB, CAP,  # sizes: rows of A and C, columns of C, output blocks, live blocks (tuning)
    stride_am, stride_ar, stride_cm, stride_cp, stride_vr, stride_vp,  # strides
    HAS_BIAS: tl.constexpr, B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, UPCAST: tl.constexpr, IS_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    if GROUP_M == 0:  # token tiles fastest
        pid_m = pid % num_m
        pb = pid // num_m  # output block: block row of W (forward) or block column (dX)
    else:  # output blocks fastest, within groups of GROUP_M token tiles
        in_group = GROUP_M * NPB
        first_m = (pid // in_group) * GROUP_M
        size = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % size
        pb = (pid % in_group) // size
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


@triton.autotune(configs=_sdd_configs(), key=["M", "B", "CAP", "DETERMINISTIC"],
                 prune_configs_by=_prune("TILE", "sdd"), **_TUNE_KW)
@triton.jit(do_not_specialize=["CAP", "DETERMINISTIC"])
def _bs_sdd_kernel(
    dy_ptr, x_ptr, rows_ptr, cols_ptr, order_ptr, dv_ptr, ws_ptr,  # pointers
    M, CAP, DETERMINISTIC,  # sizes: tokens, live blocks; tuning: no-atomics flag
    stride_dm, stride_dn, stride_xm, stride_xk,  # strides (dv, ws are contiguous (C, B, B))
    B: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr, BY_ROW: tl.constexpr,
    SPLIT_M: tl.constexpr, UPCAST: tl.constexpr, IS_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    if BY_ROW:  # slots in block-row order
        s = tl.load(order_ptr + tl.program_id(0)).to(tl.int64)
    else:
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
    # this program's chunk of the tokens: [m_lo, m_hi), whole BLOCK_M steps
    m_per = tl.cdiv(tl.cdiv(M, SPLIT_M), BLOCK_M) * BLOCK_M
    m_lo = tl.program_id(2) * m_per
    m_hi = tl.minimum(M, m_lo + m_per)
    acc = tl.zeros((TILE, TILE), dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        m_mask = offs_m < m_hi
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
    at = s * (B * B) + (ti * TILE + offs_t)[:, None] * B + (tj * TILE + offs_t)[None, :]
    if SPLIT_M == 1:
        tl.store(dv_ptr + at, acc.to(dv_ptr.dtype.element_ty))
    else:  # partial sums of the chunks meet in the fp32 workspace (zeroed by the pre_hook)
        tl.atomic_add(ws_ptr + at, acc, sem="relaxed")


def tuned_configs(tokens: int, capacity: int) -> dict[str, list[str]]:
    """The configs the autotuner chose so far for calls with these tokens and live blocks
    (strings such as "BLOCK_M: 128, BLOCK_R: 64, GROUP_M: 1, num_warps: 8, ..."), per kernel;
    benchmarks record them next to their timings."""
    out: dict[str, list[str]] = {}
    for name, kernel, cap_at in (("dsd", _bs_dsd_kernel, 3), ("sdd", _bs_sdd_kernel, 2)):
        out[name] = sorted({str(cfg) for key, cfg in kernel.cache.items()
                            if key[0] == tokens and key[cap_at] == capacity})
    return out


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
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * n_out_blocks,)
    with on_device(a), LAUNCH_LOCK:
        _bs_dsd_kernel[grid](
            a, values, ptr, order, sidx, bias if bias is not None else c, c,
            m, p, n_out_blocks, values.shape[0],
            a.stride(0), a.stride(1), c.stride(0), c.stride(1), svr, svp,
            HAS_BIAS=bias is not None, B=b, **dtype_flags(a.dtype),
        )
    return c


def workspace_needed(block: int, deterministic: int) -> bool:
    """Whether the sdd autotuner may pick a token-split config for this call (the same
    pruning it applies: block size, forced configs, deterministic mode, MORPHO_AUTOTUNE): a
    bf16 / fp16 launch allocates the fp32 workspace only then."""
    key = (block, deterministic, INTERPRET, os.environ.get("MORPHO_AUTOTUNE", "1"),
           tuple(sorted(_FORCED.get("sdd", {}).items())))
    possible = _SPLIT_POSSIBLE.get(key)
    if possible is None:  # memoised: the pruning walks every config (~10 µs a backward)
        kept = _PRUNERS["sdd"](_bs_sdd_kernel.configs, {"DETERMINISTIC": deterministic},
                               B=block)
        possible = _SPLIT_POSSIBLE[key] = any(c.kwargs["SPLIT_M"] > 1 for c in kept)
    # a choice cached before the settings changed (MORPHO_AUTOTUNE) is launched as it is
    return possible or any(c.kwargs["SPLIT_M"] > 1 for c in _bs_sdd_kernel.cache.values())


_SPLIT_POSSIBLE: dict[tuple, bool] = {}  # workspace_needed's pruning, per settings




def sdd(grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
        row_order: torch.Tensor, block: int) -> torch.Tensor:
    """dV (C, B, B): dV[s] = dY[:, rows[s]-block]ᵀ @ x[:, cols[s]-block] for every slot.

    `row_order`: the slots in block-row order (the layout's), for the BY_ROW walk.
    """
    m = x.shape[0]
    cap = rows.shape[0]
    dv = torch.empty((cap, block, block), device=x.device, dtype=x.dtype)
    if cap == 0:
        return dv
    if m == 0:
        return dv.zero_()
    det = int(torch.are_deterministic_algorithms_enabled())
    # fp32 workspace of the SPLIT_M configs (their pre_hook zeroes it); fp32 sums in place
    ws = (torch.empty(dv.shape, device=dv.device, dtype=torch.float32)
          if dv.dtype != torch.float32 and workspace_needed(block, det) else dv)
    grid = lambda meta: (cap, (block // meta["TILE"]) ** 2, meta["SPLIT_M"])
    with on_device(x), LAUNCH_LOCK:
        _bs_sdd_kernel[grid](
            grad_out, x, rows, cols, row_order, dv, ws,
            m, cap, det,
            grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1),
            B=block, **dtype_flags(x.dtype),
        )
        split = _bs_sdd_kernel.best_config.kwargs["SPLIT_M"] > 1
    if ws is not dv and split:
        dv.copy_(ws)
    return dv
