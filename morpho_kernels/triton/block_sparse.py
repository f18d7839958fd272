"""Triton kernels of block_sparse_linear: y = x @ Wᵀ + b with W stored as b×b blocks.

The layout (morpho_kernels.formats.BlockSparseLayout) keeps each live block in a fixed slot s of
`values` (C, B, B) with its block coordinates rows[s], cols[s]; `row_ptr`/`row_order` list the
slots of each block row (row-sorted), `col_ptr`/`col_order` the slots of each block column
(the transpose, for dX). Two kernels, each with a launcher (explicit strides):

* `_bs_dsd_kernel`: C = A @ op(W) with W block-sparse, on a persistent grid (SMs × CTAS_PER_SM
  programs walking the tiles). A tile is BLOCK_M tokens × one output block `pb`; the tiles are
  ordered in groups of GROUP_M token tiles × all output blocks (token tiles fastest inside a
  group; 0 = one group of every token tile), so the programs running together share a few row
  panels of A in L2 and A is read from memory about once instead of once per live block of its
  column. Forward: A = x, pb = block row of W, V read transposed (V_T). dX: A = dY, pb = block
  column, V read as stored. Before its K loop a tile loads the slots of its output block and
  their reduction indices ONCE into registers (vectors of MAXNNZ entries, chunks of MAXNNZ when
  a block has more), so the loop body has no memory indirection: the j-th entry is extracted
  with a masked sum. The loop then pipelines to num_stages buffers, where the old kernel (index
  loads inside the loop) got two buffers and a wait-for-all every step (issue 22;
  sm90.check shows both). Each block is split into B/BLOCK_R reduction steps. A and V are read
  through TMA tensor descriptors (USE_TMA: 16-bit dtypes, aligned, Triton with
  `triton.tools.tensor_descriptor`) or through pointers (fp32, strided / stride-0 inputs).
* `_bs_sdd_kernel`: dV[s] = dY[:, row block]ᵀ @ x[:, col block] for every live slot (sampled
  dense-dense): work ∝ live blocks; a TILE × TILE sub-tile per program when B > TILE. Tuned:
  `BY_ROW` visits the slots in block-row order (programs running together share dY panels);
  the tokens (the reduction) are split into grid-axis-2 chunks, SPLIT_M of them (0 = chosen at
  launch by `auto_split` so the tiles fill whole waves of the machine: at 90% block sparsity,
  b128, 8192² the 410 tiles fill 78% of four waves of 132 SMs unsplit, 93% split in three),
  accumulated with atomic adds in an fp32 workspace. The bias gradient is folded into the same
  launch: NBR extra programs sum dY's block-row columns over their token chunk (HAS_DB). The
  atomics sum in a varying order, so under `torch.use_deterministic_algorithms(True)` the
  tokens are never split (SPLIT_M ≥ 2 configs are left out, auto resolves to 1). With bf16 /
  fp16 the workspace (fp32, the size of dV) is allocated whenever a split may be chosen
  (`workspace_needed`). Whether a launch split the tokens is read from the autotuner's
  `best_config` right after it, launch and read under one lock (`common.LAUNCH_LOCK`, which
  every autotuned launch of every kernel family takes: the autotuner keeps per-call state on the
  kernel object), so threads launching at once cannot read each other's choice.

Under TRITON_INTERPRET=1 (CPU tests) each kernel keeps one config (the largest valid, or the one
`forced_config` asks for), bf16 / fp16 are upcast before tl.dot (the interpreter's
low-precision dot is wrong, DESIGN.md) and the persistent grid has `_INTERPRET_SMS` programs per
CTAS_PER_SM, so a program walks several tiles. MORPHO_TMA=0 forces the pointer path.
`sm90_cases` lists the kernels' sm_90 compile checks (morpho_kernels.triton.sm90).
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

try:  # host-side TMA descriptors: Triton >= 3.4 (the project supports 3.6 and 3.9)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: the pointer path only
    TensorDescriptor = None

# kernel name -> the config kwargs a test or the GPU script allows (forced_config,
# candidate_configs): a config runs if its kwargs include one of the dicts; empty in normal use
_FORCED: dict[str, list[dict]] = {}

# Programs of the persistent grid per CTAS_PER_SM when there is no GPU to ask: an H100 SXM's
# 132 SMs (the sm_90 target of the compile checks); under the interpreter 3, so that one
# program walks several tiles in the CPU tests.
_DEFAULT_SMS = 132
_INTERPRET_SMS = 3
# Longest block list a DSD tile keeps in registers: 32 entries fit one warp, so extracting
# the j-th costs a few shuffles; 64 spread over two warps and the extraction goes through
# shared memory with barriers every K step (sm_90 PTX of the b128 config: 26 bar.sync and 7
# shfl against 16 and 1). Longer lists are walked in chunks of 32 (one pipeline drain each).
_MAXNNZ_CAP = 32

# The 2-3 configs per kernel the short GPU script tunes among at the targets (bf16,
# b128, 8192 tokens, 8192², 50% / 90%): bench_block_sparse.py --targets.
GPU_SCRIPT_CONFIGS = {
    "dsd": [{"BLOCK_M": 128, "BLOCK_R": 64, "GROUP_M": 8, "CTAS_PER_SM": 2},
            {"BLOCK_M": 128, "BLOCK_R": 64, "GROUP_M": 8, "CTAS_PER_SM": 1},
            {"BLOCK_M": 128, "BLOCK_R": 128, "GROUP_M": 8}],
    "sdd": [{"TILE": 128, "BLOCK_M": 64, "BY_ROW": 1, "SPLIT_M": 0},
            {"TILE": 128, "BLOCK_M": 32, "BY_ROW": 1, "SPLIT_M": 0},
            {"TILE": 128, "BLOCK_M": 64, "BY_ROW": 1, "SPLIT_M": 1}],
}


def _kernel(kernel: str):
    kernels = {"dsd": _bs_dsd_kernel, "sdd": _bs_sdd_kernel}
    if kernel not in kernels:
        raise ValueError(f"kernel must be one of {sorted(kernels)}, got {kernel!r}")
    return kernels[kernel]


@contextlib.contextmanager
def candidate_configs(kernel: str, *allowed: dict):
    """Run `kernel` ("dsd" or "sdd") only with configs whose kwargs include one of the
    ``allowed`` dicts (e.g. `GPU_SCRIPT_CONFIGS`). Clears the kernel's autotune cache on entry
    and exit."""
    k = _kernel(kernel)
    names = set().union(*(c.kwargs for c in k.configs))
    unknown = sorted(set().union(*allowed) - names) if allowed else []
    if unknown:
        raise ValueError(f"{kernel} configs have no {unknown}; they have {sorted(names)}")
    _FORCED[kernel] = [dict(a) for a in allowed]
    k.cache.clear()
    try:
        yield
    finally:
        _FORCED.pop(kernel, None)
        k.cache.clear()


def forced_config(kernel: str, **kwargs):
    """Run `kernel` ("dsd" or "sdd") only with configs whose kwargs include ``kwargs``.

    For tests, so each program order / split of the tuned space is checked under the
    interpreter, which keeps one config per kernel. Clears the kernel's autotune cache on entry
    and exit.
    """
    return candidate_configs(kernel, kwargs)


def _allowed(cfg, forced: list[dict]) -> bool:
    return not forced or any(all(cfg.kwargs.get(n) == v for n, v in d.items()) for d in forced)


def _prune(dim: str, kernel: str):
    """Keep configs whose `dim` fits the block size B (and match a forced_config); under the
    interpreter only the largest, with MORPHO_AUTOTUNE=0 only the first that fits (no
    benchmarking, e.g. in tests)."""

    def prune(configs, named_args, **kwargs):
        b = kwargs.get("B", named_args.get("B"))
        forced = _FORCED.get(kernel, [])
        out = named_args.get("c_ptr", named_args.get("dv_ptr"))
        elem = out.element_size() if isinstance(out, torch.Tensor) else 2
        ok = [c for c in configs if c.kwargs[dim] <= b and _allowed(c, forced)
              and (INTERPRET or _smem_bytes(c, b, elem) * c.kwargs.get("CTAS_PER_SM", 1)
                   <= _SMEM_LIMIT)]
        if named_args.get("DETERMINISTIC"):  # atomics sum in a varying order: no token split
            ok = [c for c in ok if c.kwargs.get("SPLIT_M", 1) in (0, 1)]
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
_SMEM_LIMIT = 232448  # bytes of shared memory a block may use on sm_90 (227 KB)


def _smem_bytes(cfg, b: int, elem: int) -> int:
    """Shared memory of a config's operand buffers: num_stages × (A + V tiles) for dsd,
    num_stages × (dY + x tiles) for sdd (what Triton allocates for sm_90, within a few bytes
    of barriers). A config whose CTAS_PER_SM programs cannot share an SM's 227 KB is left out:
    fp32 doubles bf16's bytes (the 4-stage 128 × 64 dsd config needs 256 KB), so fp32 falls back
    to the configs that fit."""
    kw = cfg.kwargs
    if "BLOCK_R" in kw:
        tiles = kw["BLOCK_M"] * kw["BLOCK_R"] + kw["BLOCK_R"] * b
    else:
        tiles = 2 * kw["TILE"] * kw["BLOCK_M"]
    return cfg.num_stages * tiles * elem


def _quick_bench(kernel_call, quantiles):
    """Autotuning timer: 20 ms per config instead of triton's 100 (one tuning per shape,
    sparsity and direction)."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


# triton.autotune takes do_bench from Triton 3.1 on (older: its default 100 ms timer)
_TUNE_KW = ({"do_bench": _quick_bench}
            if "do_bench" in inspect.signature(triton.autotune).parameters else {})


_GROUPS = (8, 1, 0)  # dsd tile orders (see the module docstring); the first is the default

# dsd (BLOCK_M, BLOCK_R, num_warps, num_stages, CTAS_PER_SM). In bf16 every one compiles for
# sm_90 with Triton 3.6 and 3.9 without spills, within 227 KB of shared memory, pipelined to
# num_stages with async MMAs (tests/kernels/test_sm90_compile.py). 128 × 128 tiles with
# 64-deep steps first: 4 stages of 32 KB; the 64-row tiles serve small blocks, two per SM.
# fp32 needs twice the shared memory: the pruning keeps the configs that fit (_smem_bytes).
_DSD_SHAPES = [
    # two co-resident programs per SM (96 KB, ≤ 128 registers each): one computes while the
    # other waits on its tile's block list and pipeline prologue (a 90% sparse b128 tile has
    # only ~13 K steps, so a lone program would idle ~a quarter of its tile there)
    (128, 64, 8, 3, 2),
    (128, 64, 8, 4, 1),
    (128, 128, 8, 3, 1),
    (256, 64, 8, 3, 1),
    (64, 32, 4, 4, 2),  # before 64 × 64: fp32's first fit (IEEE fp32 64 × 64 spills ~80 bytes)
    (64, 64, 4, 4, 2),
    (64, 16, 4, 4, 2),
]


def _tma_hook(nargs) -> None:
    """Give the TMA descriptors of a launch this config's block shapes."""
    if not nargs.get("USE_TMA"):
        return
    b, bm = nargs["B"], nargs["BLOCK_M"]
    if "BLOCK_R" in nargs:  # dsd: A tiles (BLOCK_M, BLOCK_R), V tiles (B, BLOCK_R) or transposed
        br = nargs["BLOCK_R"]
        nargs["a_src"].block_shape = [bm, br]
        nargs["v_src"].block_shape = [b, br] if nargs["V_T"] else [br, b]
    else:  # sdd: dY and x tiles (BLOCK_M, TILE)
        t = nargs["TILE"]
        nargs["dy_src"].block_shape = [bm, t]
        nargs["x_src"].block_shape = [bm, t]


def _dsd_configs() -> list:
    # interpreter: big blocks = few interpreted steps; one BLOCK_R per legal block size, pruned
    # to the largest ≤ B (B itself unless a test forces a smaller step)
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_R": r, "GROUP_M": g, "CTAS_PER_SM": 1},
                              pre_hook=_tma_hook)
                for g in _GROUPS for r in BLOCK_SIZES]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_R": br, "GROUP_M": g, "CTAS_PER_SM": ctas},
                      num_warps=w, num_stages=s, pre_hook=_tma_hook)
        for g in _GROUPS
        for bm, br, w, s, ctas in _DSD_SHAPES
    ]


def _sdd_hook(nargs) -> None:
    _tma_hook(nargs)
    # partial sums of token chunks meet in the zeroed workspaces (never split if deterministic)
    if nargs["SPLIT_M"] != 1 and not nargs["DETERMINISTIC"]:
        nargs["ws_ptr"].zero_()
        if nargs["HAS_DB"]:
            nargs["db_ptr"].zero_()


# (BY_ROW, SPLIT_M) of the sdd kernel; SPLIT_M 0 = `auto_split` at launch, the default
_SDD_WALKS = ((1, 0), (1, 1), (0, 1), (1, 4))
# sdd (TILE, BLOCK_M, num_warps, num_stages): checked for sm_90 like _DSD_SHAPES
_SDD_SHAPES = [
    (128, 64, 8, 4),
    (128, 32, 8, 4),
    (64, 64, 4, 4),
    (32, 64, 4, 3),
    (16, 64, 4, 3),
]


def _sdd_configs() -> list:
    def cfg(kw, by_row, split, **launch):
        return triton.Config({**kw, "BY_ROW": by_row, "SPLIT_M": split}, pre_hook=_sdd_hook,
                             **launch)

    if INTERPRET:  # one TILE per legal block size, pruned like BLOCK_R above
        return [cfg({"TILE": t, "BLOCK_M": 64}, by_row, split)
                for by_row, split in _SDD_WALKS for t in BLOCK_SIZES]
    return [
        cfg({"TILE": t, "BLOCK_M": bm}, by_row, split, num_warps=w, num_stages=s)
        for by_row, split in _SDD_WALKS
        for t, bm, w, s in _SDD_SHAPES
    ]


@triton.jit
def _dsd_tile(tile, num_m, group, in_group):
    """(token tile, output block) of a tile: groups of `group` token tiles × all output
    blocks, token tiles fastest inside a group (the last group may be smaller)."""
    first_m = (tile // in_group) * group
    size = tl.minimum(num_m - first_m, group)
    return first_m + (tile % in_group) % size, (tile % in_group) // size


@triton.autotune(configs=_dsd_configs(), key=["M", "P", "B", "CAP", "V_T", "USE_TMA"],
                 prune_configs_by=_prune("BLOCK_R", "dsd"), **_TUNE_KW)
@triton.jit(do_not_specialize=["CAP"])
def _bs_dsd_kernel(
    a_src, v_src, ptr_ptr, order_ptr, idx_ptr, bias_ptr, c_ptr,  # A, V: TMA descriptors or ptrs
    M, P, NPB, CAP,  # sizes: rows of A and C, columns of C, output blocks, live blocks (tuning)
    stride_am, stride_ar, stride_cm, stride_cp, stride_vr, stride_vp,  # strides (pointer path)
    HAS_BIAS: tl.constexpr, B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, CTAS_PER_SM: tl.constexpr, MAXNNZ: tl.constexpr,
    V_T: tl.constexpr, USE_TMA: tl.constexpr, UPCAST: tl.constexpr, IS_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    num_m = tl.cdiv(M, BLOCK_M)
    if GROUP_M == 0:  # one group: token tiles fastest, output block by output block
        group = num_m
    else:
        group = GROUP_M
    in_group = group * NPB
    SPLIT: tl.constexpr = B // BLOCK_R
    jj = tl.arange(0, MAXNNZ)
    offs_p = tl.arange(0, B)
    offs_r = tl.arange(0, BLOCK_R)
    num_tiles = num_m * NPB
    # each tile's block-list bounds are loaded one tile ahead (in flight during the previous
    # tile's K loop): one dependent load fewer at a tile's start (three: ptr, order, idx)
    _, pb_next = _dsd_tile(tl.program_id(0), num_m, group, in_group)
    next_start = tl.load(ptr_ptr + pb_next)
    next_end = tl.load(ptr_ptr + pb_next + 1)
    for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):  # persistent
        pid_m, pb = _dsd_tile(tile, num_m, group, in_group)  # pb: block row / column of W
        start = next_start
        end = next_end
        _, pb_next = _dsd_tile(tl.minimum(tile + tl.num_programs(0), num_tiles - 1), num_m,
                               group, in_group)
        next_start = tl.load(ptr_ptr + pb_next)
        next_end = tl.load(ptr_ptr + pb_next + 1)
        m0 = pid_m * BLOCK_M
        offs_m = m0.to(tl.int64) + tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        acc = tl.zeros((BLOCK_M, B), dtype=tl.float32)
        for c0 in range(start, end, MAXNNZ):  # one chunk unless the block has > MAXNNZ
            live = c0 + jj < end
            slots = tl.load(order_ptr + c0 + jj, mask=live, other=0)  # (MAXNNZ,) in registers
            qs = tl.load(idx_ptr + slots, mask=live, other=0)  # their reduction block indices
            for i in range(0, tl.minimum(end - c0, MAXNNZ) * SPLIT):  # the K loop
                j = i // SPLIT
                sub = i - j * SPLIT
                s = tl.sum(tl.where(jj == j, slots, 0), axis=0)  # no load: registers only
                q = tl.sum(tl.where(jj == j, qs, 0), axis=0)
                if USE_TMA:
                    a = a_src.load([m0, q * B + sub * BLOCK_R])  # (BLOCK_M, BLOCK_R)
                    if V_T:
                        v = v_src.load([s * B, sub * BLOCK_R]).T  # (BLOCK_R, B)
                    else:
                        v = v_src.load([s * B + sub * BLOCK_R, 0])
                else:
                    r_off = q.to(tl.int64) * B + sub * BLOCK_R + offs_r  # (BLOCK_R,)
                    a = tl.load(a_src + offs_m[:, None] * stride_am + r_off[None, :] * stride_ar,
                                mask=m_mask[:, None], other=0.0)
                    v = tl.load(v_src + s.to(tl.int64) * (B * B)
                                + (sub * BLOCK_R + offs_r)[:, None] * stride_vr
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


@triton.autotune(configs=_sdd_configs(), key=["M", "B", "CAP", "DETERMINISTIC", "USE_TMA"],
                 prune_configs_by=_prune("TILE", "sdd"), **_TUNE_KW)
@triton.jit(do_not_specialize=["CAP", "DETERMINISTIC"])
def _bs_sdd_kernel(
    dy_src, x_src, rows_ptr, cols_ptr, order_ptr, dv_ptr, ws_ptr, db_ptr,  # dY, x: TMA or ptrs
    M, CAP, DETERMINISTIC,  # sizes: tokens, live blocks; tuning: no-atomics flag
    stride_dm, stride_dn, stride_xm, stride_xk,  # strides (dv, ws are contiguous (C, B, B))
    B: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr, BY_ROW: tl.constexpr,
    SPLIT_M: tl.constexpr, HAS_DB: tl.constexpr, USE_TMA: tl.constexpr, UPCAST: tl.constexpr,
    IS_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    NT: tl.constexpr = B // TILE
    t = tl.program_id(1)
    ti = t // NT
    tj = t - ti * NT
    offs_t = tl.arange(0, TILE)
    # this program's chunk of the tokens: [m_lo, m_hi), whole BLOCK_M steps
    nsplit = tl.num_programs(2)
    m_per = tl.cdiv(tl.cdiv(M, nsplit), BLOCK_M) * BLOCK_M
    m_lo = tl.program_id(2) * m_per
    m_hi = tl.minimum(M, m_lo + m_per)
    if tl.program_id(0) < CAP:  # a live slot's TILE × TILE sub-tile of dV
        if BY_ROW:  # slots in block-row order
            s = tl.load(order_ptr + tl.program_id(0)).to(tl.int64)
        else:
            s = tl.program_id(0).to(tl.int64)
        r = tl.load(rows_ptr + s)
        c = tl.load(cols_ptr + s)
        offs_n = r.to(tl.int64) * B + ti * TILE + offs_t
        offs_k = c.to(tl.int64) * B + tj * TILE + offs_t
        acc = tl.zeros((TILE, TILE), dtype=tl.float32)
        for m0 in range(m_lo, m_hi, BLOCK_M):
            if USE_TMA:  # rows past M come back zero; chunks end on BLOCK_M multiples
                dyt = dy_src.load([m0, r * B + ti * TILE]).T  # (TILE, BLOCK_M) = dYᵀ
                x = x_src.load([m0, c * B + tj * TILE])  # (BLOCK_M, TILE)
            else:
                offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
                m_mask = offs_m < m_hi
                dyt = tl.load(dy_src + offs_m[None, :] * stride_dm + offs_n[:, None] * stride_dn,
                              mask=m_mask[None, :], other=0.0)
                x = tl.load(x_src + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                            mask=m_mask[:, None], other=0.0)
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
        elif nsplit == 1:  # auto split chose one chunk
            tl.store(ws_ptr + at, acc.to(ws_ptr.dtype.element_ty))
        else:  # partial sums of the chunks meet in the fp32 workspace (zeroed by the pre_hook)
            tl.atomic_add(ws_ptr + at, acc, sem="relaxed")
    elif HAS_DB:  # the bias gradient: one program per (block row, TILE rows of it, chunk)
        if tj == 0:
            n0 = (tl.program_id(0) - CAP) * B + ti * TILE
            offs_n = n0.to(tl.int64) + offs_t
            db = tl.zeros((TILE,), dtype=tl.float32)
            for m0 in range(m_lo, m_hi, BLOCK_M):
                if USE_TMA:
                    d = dy_src.load([m0, n0])  # (BLOCK_M, TILE)
                else:
                    offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
                    d = tl.load(dy_src + offs_m[:, None] * stride_dm + offs_n[None, :] * stride_dn,
                                mask=(offs_m < m_hi)[:, None], other=0.0)
                db += tl.sum(d.to(tl.float32), axis=0)
            if nsplit == 1:
                tl.store(db_ptr + offs_n, db)
            else:
                tl.atomic_add(db_ptr + offs_n, db, sem="relaxed")


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

_SMS: dict[int, int] = {}  # CUDA device index -> multiprocessor count


def num_sms(device: torch.device) -> int:
    """Programs per CTAS_PER_SM of a persistent grid on ``device``: its multiprocessor count
    (cached), 132 (an H100 SXM) for a non-CUDA device, `_INTERPRET_SMS` under the
    interpreter."""
    if INTERPRET:
        return _INTERPRET_SMS
    if device.type != "cuda":
        return _DEFAULT_SMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def maxnnz(n_reduction_blocks: int, capacity: int) -> int:
    """MAXNNZ of a DSD launch: the longest block list an output block can have (every
    reduction block, at most every slot), as a power of two in [2, `_MAXNNZ_CAP`]. A bound
    known without reading the layout, so a launch never synchronises with the device and a
    captured graph stays valid when the structure changes."""
    bound = max(1, min(n_reduction_blocks, capacity))
    return max(2, min(_MAXNNZ_CAP, triton.next_power_of_2(bound)))


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """Whether these 2-D operands can be read through TMA descriptors: 16-bit dtypes (fp32
    keeps the pointer path), last dim contiguous, 16-byte aligned base and row stride, on an
    sm_90+ GPU (or the interpreter); MORPHO_TMA=0 turns it off."""
    if TensorDescriptor is None or os.environ.get("MORPHO_TMA", "1") == "0":
        return False
    for t in tensors:
        if (t.dtype not in (torch.bfloat16, torch.float16) or t.dim() != 2 or t.stride(1) != 1
                or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16
                or min(t.shape) == 0):
            return False
        if not INTERPRET and not (t.is_cuda and _major(t.device) >= 9):
            return False
    return True


_MAJOR: dict[int, int] = {}  # CUDA device index -> compute capability major (TMA from 9)


def _major(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _MAJOR:
        _MAJOR[index] = torch.cuda.get_device_capability(index)[0]
    return _MAJOR[index]


# whether the latest launch of each kernel read its operands through TMA descriptors (else
# the pointer path: fp32, strided or misaligned inputs, no sm_90, MORPHO_TMA=0); benchmarks
# record it, so a fallback to the pointer path shows in their records
last_tma: dict[str, bool] = {}


def _descriptor(t: torch.Tensor, block: int) -> TensorDescriptor:
    # the block shape is set per config by _tma_hook before the launch
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [block, block])


def dsd(a: torch.Tensor, values: torch.Tensor, ptr: torch.Tensor, order: torch.Tensor,
        idx: torch.Tensor, n_out_blocks: int, bias: torch.Tensor | None,
        transpose: bool) -> torch.Tensor:
    """C (M, n_out_blocks·B) = a @ op(W), W block-sparse with slots `values` (C, B, B).

    transpose=True (forward): a is x (M, K), ptr/order = row_ptr/row_order, idx = cols.
    transpose=False (dX): a is dY (M, N), ptr/order = col_ptr/col_order, idx = rows.
    No per-call index work: each tile gathers idx[order[...]] of its output block once, in
    the kernel.
    """
    m = a.shape[0]
    b = values.shape[-1]
    p = n_out_blocks * b
    c = torch.empty((m, p), device=a.device, dtype=a.dtype)
    if m == 0 or p == 0:
        return c
    values = values.contiguous()
    bias = bias.contiguous() if bias is not None else None
    cap = values.shape[0]
    v2 = values.view(cap * b, b)  # (C·B, B): block s is rows s·B .. s·B + B
    use_tma = _tma_ok(a, v2) if cap else False
    last_tma["dsd fwd" if transpose else "dsd dX"] = use_tma
    a_src, v_src = (_descriptor(a, b), _descriptor(v2, b)) if use_tma else (a, values)
    svr, svp = (1, b) if transpose else (b, 1)
    sms = num_sms(a.device)

    def grid(meta):
        tiles = triton.cdiv(m, meta["BLOCK_M"]) * n_out_blocks
        return (min(tiles, sms * meta["CTAS_PER_SM"]),)

    with on_device(a), LAUNCH_LOCK:
        _bs_dsd_kernel[grid](
            a_src, v_src, ptr, order, idx, bias if bias is not None else c, c,
            m, p, n_out_blocks, cap,
            a.stride(0), a.stride(1), c.stride(0), c.stride(1), svr, svp,
            HAS_BIAS=bias is not None, B=b, MAXNNZ=maxnnz(a.shape[1] // b, cap),
            V_T=transpose, USE_TMA=use_tma, **dtype_flags(a.dtype),
        )
    return c


def auto_split(tiles: int, tokens: int, block_m: int, sms: int, deterministic: bool) -> int:
    """Token chunks of an sdd launch with SPLIT_M = 0: the fewest (up to 8) whose tiles ×
    chunks fill ≥ 90% of their waves over ``sms`` programs, each chunk at least 4 BLOCK_M
    steps long (else the best filling one); 1 under deterministic mode (no atomics).
    410 tiles on 132 SMs: 1 chunk fills 78% of 4 waves, 2 fill 89% of 7, 3 fill 93% of 10."""
    if deterministic or tiles <= 0:
        return 1
    best, best_fill = 1, 0.0
    for split in range(1, 9):
        if split > 1 and triton.cdiv(tokens, split) < 4 * block_m:
            break
        fill = tiles * split / (triton.cdiv(tiles * split, sms) * sms)
        if fill >= 0.9:
            return split
        if fill > best_fill + 1e-9:
            best, best_fill = split, fill
    return best


def workspace_needed(block: int, deterministic: int) -> bool:
    """Whether the sdd autotuner may split the tokens for this call (the same pruning it
    applies: block size, forced configs, deterministic mode, MORPHO_AUTOTUNE; a SPLIT_M = 0
    config may split unless deterministic): a bf16 / fp16 launch allocates the fp32 workspace
    only then."""
    key = (block, deterministic, INTERPRET, os.environ.get("MORPHO_AUTOTUNE", "1"),
           repr(_FORCED.get("sdd")))
    possible = _SPLIT_POSSIBLE.get(key)
    if possible is None:  # memoised: the pruning walks every config (~10 µs a backward)
        kept = _PRUNERS["sdd"](_bs_sdd_kernel.configs, {"DETERMINISTIC": deterministic},
                               B=block)
        possible = _SPLIT_POSSIBLE[key] = any(_may_split(c, deterministic) for c in kept)
    # a choice cached before the settings changed (MORPHO_AUTOTUNE) is launched as it is
    return possible or any(_may_split(c, deterministic) for c in _bs_sdd_kernel.cache.values())


def _may_split(cfg, deterministic) -> bool:
    split = cfg.kwargs["SPLIT_M"]
    return split > 1 or (split == 0 and not deterministic)


_SPLIT_POSSIBLE: dict[tuple, bool] = {}  # workspace_needed's pruning, per settings
last_sdd_split = 0  # token chunks of the latest sdd launch (tests and bench records read it)


def sdd(grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
        row_order: torch.Tensor, block: int,
        need_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dV (C, B, B), dbias (N,) fp32 or None): dV[s] = dY[:, rows[s]-block]ᵀ @
    x[:, cols[s]-block] for every slot, and with ``need_bias`` dY's column sums from the same
    launch.

    `row_order`: the slots in block-row order (the layout's), for the BY_ROW walk.
    """
    m, n = x.shape[0], grad_out.shape[1]
    cap = rows.shape[0]
    dv = torch.empty((cap, block, block), device=x.device, dtype=x.dtype)
    db = torch.empty(n, device=x.device, dtype=torch.float32) if need_bias else None
    if m == 0 or (cap == 0 and not need_bias):
        return dv.zero_(), (db.zero_() if need_bias else None)
    det = int(torch.are_deterministic_algorithms_enabled())
    # fp32 workspace of the split configs (their pre_hook zeroes it); fp32 sums in place
    ws = (torch.empty(dv.shape, device=dv.device, dtype=torch.float32)
          if dv.dtype != torch.float32 and workspace_needed(block, det) else dv)
    use_tma = _tma_ok(grad_out, x)
    last_tma["sdd"] = use_tma
    dy_src, x_src = ((_descriptor(grad_out, block), _descriptor(x, block)) if use_tma
                     else (grad_out, x))
    sms = num_sms(x.device)
    nbr = n // block if need_bias else 0

    def split_of(meta) -> int:
        tiles = cap * (block // meta["TILE"]) ** 2
        return meta["SPLIT_M"] or auto_split(tiles, m, meta["BLOCK_M"], sms, bool(det))

    grid = lambda meta: (cap + nbr, (block // meta["TILE"]) ** 2, split_of(meta))
    with on_device(x), LAUNCH_LOCK:
        _bs_sdd_kernel[grid](
            dy_src, x_src, rows, cols, row_order, dv, ws, db if need_bias else ws,
            m, cap, det,
            grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1),
            B=block, HAS_DB=need_bias, USE_TMA=use_tma, **dtype_flags(x.dtype),
        )
        cfg = _bs_sdd_kernel.best_config
        wrote_ws = cfg.kwargs["SPLIT_M"] != 1
        global last_sdd_split
        last_sdd_split = split_of(cfg.all_kwargs())
    if ws is not dv and wrote_ws:
        dv.copy_(ws)
    return dv, db


# ----------------------------------------------------------------------------- sm_90 checks


def sm90_cases() -> list:
    """The kernels' ahead-of-time sm_90 compile checks (`morpho_kernels.triton.sm90`): bf16 at
    the issue's target (b128, 8192 tokens, 8192², 90% block sparsity: 410 live blocks), every
    tuned shape of the TMA path (one tile order / walk each: the order changes only the tile
    arithmetic outside the K loop) plus `GPU_SCRIPT_CONFIGS`, and the default shape of the
    pointer path; forward (V read transposed) and dX for dsd."""
    from .sm90 import Case

    b, m, n, cap = 128, 8192, 8192, 410

    def desc(*dims):
        def ty(kw):
            return f"tensordesc<bf16[{', '.join(str(kw.get(d, d)) for d in dims)}]>"
        return ty

    cases = []
    for vt in (True, False):
        for tma in (True, False):
            configs = [c for c in _bs_dsd_kernel.configs if c.kwargs["BLOCK_R"] <= b and (
                _allowed(c, GPU_SCRIPT_CONFIGS["dsd"]) if not tma else
                c.kwargs["GROUP_M"] == _GROUPS[0])]
            configs = configs if tma else configs[:1]
            v_dims = (b, "BLOCK_R") if vt else ("BLOCK_R", b)
            args = dict(a_src=desc("BLOCK_M", "BLOCK_R") if tma else "*bf16",
                        v_src=desc(*v_dims) if tma else "*bf16", ptr_ptr="*i32",
                        order_ptr="*i32", idx_ptr="*i32", bias_ptr="*bf16", c_ptr="*bf16",
                        M=m, P=n, NPB=n // b, CAP=cap, stride_am=n, stride_ar=1, stride_cm=n,
                        stride_cp=1, stride_vr=1 if vt else b, stride_vp=b if vt else 1)
            cst = dict(HAS_BIAS=vt, B=b, MAXNNZ=maxnnz(n // b, cap), V_T=vt, USE_TMA=tma,
                       UPCAST=False, IS_FP32=False, PRECISION="ieee")
            name = f"dsd {'fwd' if vt else 'dX'} {'tma' if tma else 'pointers'}"
            # the TMA path's programs must share an SM as CTAS_PER_SM says (the pointer path,
            # a fallback for strided inputs, needs more registers and may run them in turn)
            cases.append(Case(name, _bs_dsd_kernel, args, cst, configs=configs,
                              ctas_per_sm=(lambda kw: kw["CTAS_PER_SM"]) if tma else None))
            if not tma:
                cases += _fp32_cases(name, _bs_dsd_kernel, args, cst, "dsd", "c_ptr", b)
    for tma in (True, False):
        shapes = _SDD_SHAPES if tma else _SDD_SHAPES[:1]
        configs = [c for c in _bs_sdd_kernel.configs
                   if ((c.kwargs["BY_ROW"], c.kwargs["SPLIT_M"]) == _SDD_WALKS[0]
                       and (c.kwargs["TILE"], c.kwargs["BLOCK_M"]) in {s[:2] for s in shapes})
                   or (tma and _allowed(c, GPU_SCRIPT_CONFIGS["sdd"]))]
        args = dict(dy_src=desc("BLOCK_M", "TILE") if tma else "*bf16",
                    x_src=desc("BLOCK_M", "TILE") if tma else "*bf16", rows_ptr="*i32",
                    cols_ptr="*i32", order_ptr="*i32", dv_ptr="*bf16", ws_ptr="*fp32",
                    db_ptr="*fp32", M=m, CAP=cap, DETERMINISTIC=0, stride_dm=n, stride_dn=1,
                    stride_xm=n, stride_xk=1)
        cst = dict(B=b, HAS_DB=True, USE_TMA=tma, UPCAST=False, IS_FP32=False,
                   PRECISION="ieee")
        # a TILE < 64 dV tile is too short for a warp-group MMA (64 rows): mma.sync
        cases.append(Case(f"sdd {'tma' if tma else 'pointers'}", _bs_sdd_kernel, args, cst,
                          configs=configs, mma=lambda kw: kw["TILE"] >= 64))
        if not tma:
            cases += _fp32_cases("sdd pointers", _bs_sdd_kernel, args, cst, "sdd", "dv_ptr", b)
    return cases


def _fp32_cases(name, kernel, args, cst, which, out_arg, b) -> list:
    """fp32 (pointer path) in the first config the pruning keeps for fp32: with TF32 it must
    pipeline on warp-group MMAs; IEEE fp32 runs FMAs (no MMA to check), still without spills
    and within shared memory."""
    from .sm90 import Case

    first = _PRUNERS[which](kernel.configs, {out_arg: torch.empty(0)}, B=b)[:1]
    args = {k: "*fp32" if v == "*bf16" else v for k, v in args.items()}
    return [Case(f"{name} fp32 {prec}", kernel, args, dict(cst, IS_FP32=True, PRECISION=prec),
                 configs=first, mma=prec == "tf32", pipelined=prec == "tf32")
            for prec in ("tf32", "ieee")]
