"""Triton kernels of a block-sparse regrow (`BlockSparseLayout.regrow` on CUDA): three launches
where the ATen path makes ~40 (top-k, index fills and copies, two sorts and searches, one
index_fill per optimizer moment), all of them host latency, not work (issue 22: 0.67 ms of
launches for ~50–100 µs of device work on an H100).

* `_slot_norms_kernel`: the L2 norm of every slot's b×b block (the default drop scores),
  accumulated in fp32 (fp64 for fp64 values), stored as fp32: what the ATen path's
  ``block_norms(values).float()`` gives up to the order of the sum.
* `_select_rebuild_kernel`: ONE program does both selections and the index rebuild:
  1. a map grid → slot (−1 for a dead block) in a scratch buffer, from rows / cols;
  2. the ``drop`` smallest drop scores among the slots and the ``drop`` largest grow scores
     among the dead blocks, each as a running sorted list of KP 64-bit keys
     (order-preserving score bits << 32 | index: equal scores go to the lower index, NaN
     lowest, ±inf clamped, -0.0 = +0.0, as `formats._finite` and the stable sorts of the
     ATen path);
  3. the i-th dropped slot takes the i-th grown block (rows, cols, the map);
  4. row_order / row_ptr and col_order / col_ptr by a prefix count over the map in row-major
     and in column-major order: what `rebuild`'s sorts and searches produce, as the slots are
     unique keys.
* `_zero_slots_kernel`: zeroes the chosen slots of values and of up to three optimizer moments
  (Adam's exp_avg / exp_avg_sq / max_exp_avg_sq, SGD's momentum_buffer) in one launch.

No host synchronisation and fixed shapes for a given drop: a CUDA graph captures the three.
Under TRITON_INTERPRET=1 (tests on CPU) the same code runs on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRET, on_device

# Largest drop the one-program selection serves: its sorted candidate lists live in registers
# (2·KP int64 keys sorted per step; 8192 keys = 64 KiB over 256 threads). Larger drops take the
# ATen path, and the dispatcher says so.
MAX_DROP = 4096
_INT64_MAX = tl.constexpr(2**63 - 1)  # the key of no candidate


@triton.jit
def _order_bits(s):
    """fp32 scores → int32 whose signed order is the scores' order after `formats._finite`:
    NaN lowest (as −FLT_MAX), ±inf clamped, −0.0 equal to +0.0."""
    s = tl.where(s != s, -3.4028234663852886e38, s)
    s = tl.minimum(tl.maximum(s, -3.4028234663852886e38), 3.4028234663852886e38)
    s = tl.where(s == 0.0, 0.0, s)
    b = s.to(tl.int32, bitcast=True)
    # negative floats: flip the magnitude bits so that a larger magnitude sorts lower
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def _merge_smallest(best, key, KP: tl.constexpr, BLOCK: tl.constexpr):
    """The KP smallest of `best` (KP keys, sorted) and `key` (BLOCK keys), sorted."""
    if tl.min(key, axis=0) < tl.max(best, axis=0):  # most chunks lose outright: skip the sorts
        srt = tl.sort(key)
        # after a sort, row 0 of the (BLOCK/KP, KP) view is its elementwise minimum
        head = tl.min(tl.reshape(srt, (BLOCK // KP, KP)), axis=0)
        both = tl.sort(tl.reshape(tl.join(best, head), (2 * KP,)))
        best = tl.min(tl.reshape(both, (2, KP)), axis=0)
    return best


@triton.jit
def _slot_norms_kernel(
    v_ptr, out_ptr,  # pointers: values (C, b, b) contiguous, out (C,) fp32
    BB,  # sizes: b·b
    ACC_F64: tl.constexpr, BLOCK: tl.constexpr,
):
    slot = tl.program_id(0).to(tl.int64)
    acc_t = tl.float64 if ACC_F64 else tl.float32
    acc = tl.zeros((BLOCK,), dtype=acc_t)
    for start in range(0, BB, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(v_ptr + slot * BB + offs, mask=offs < BB, other=0.0).to(acc_t)
        acc += v * v
    tl.store(out_ptr + slot, tl.sqrt(tl.sum(acc, axis=0)).to(tl.float32))


@triton.jit
def _select_rebuild_kernel(
    rows_ptr, cols_ptr, row_ptr_ptr, row_order_ptr, col_ptr_ptr, col_order_ptr,  # layout
    drop_ptr, grow_ptr, map_ptr, slots_ptr,  # scores (C,), (R·Kb,); scratch (R·Kb,); out
    C, R, KB, DROP,  # sizes: capacity, block rows, block columns, blocks to regrow
    KP: tl.constexpr, BLOCK: tl.constexpr, SCAN: tl.constexpr,
):
    n = R * KB
    # 1. map[key] = slot of the live block at key, −1 for a dead one
    for start in range(0, n, SCAN):
        offs = start + tl.arange(0, SCAN)
        tl.store(map_ptr + offs, tl.full((SCAN,), -1, tl.int32), mask=offs < n)
    tl.debug_barrier()
    for start in range(0, C, SCAN):
        offs = start + tl.arange(0, SCAN)
        live = offs < C
        r = tl.load(rows_ptr + offs, mask=live, other=0)
        c = tl.load(cols_ptr + offs, mask=live, other=0)
        tl.store(map_ptr + r * KB + c, offs.to(tl.int32), mask=live)
    tl.debug_barrier()
    # 2. the DROP smallest drop scores (key: score bits, then slot) ...
    drop_best = tl.full((KP,), _INT64_MAX, tl.int64)
    for start in range(0, C, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        s = tl.load(drop_ptr + offs, mask=offs < C, other=0.0).to(tl.float32)
        key = (_order_bits(s).to(tl.int64) << 32) | offs.to(tl.int64)
        key = tl.where(offs < C, key, _INT64_MAX)
        drop_best = _merge_smallest(drop_best, key, KP, BLOCK)
    # ... and the DROP largest grow scores of dead blocks (key: reversed score bits, then key)
    grow_best = tl.full((KP,), _INT64_MAX, tl.int64)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < n
        s = tl.load(grow_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        dead = tl.load(map_ptr + offs, mask=inside, other=0) < 0
        key = ((~_order_bits(s)).to(tl.int64) << 32) | offs.to(tl.int64)
        key = tl.where(inside & dead, key, _INT64_MAX)
        grow_best = _merge_smallest(grow_best, key, KP, BLOCK)
    # 3. the i-th dropped slot takes the i-th grown block; old and new keys are disjoint
    #    (live vs dead), so clearing and setting the map need no barrier between them
    i = tl.arange(0, KP)
    take = i < DROP
    slot = drop_best.to(tl.int32)  # the low 32 bits: the index
    new_key = grow_best.to(tl.int32)
    tl.debug_barrier()  # every thread has read the map in step 2
    old_r = tl.load(rows_ptr + slot, mask=take, other=0)
    old_c = tl.load(cols_ptr + slot, mask=take, other=0)
    # threads holding the same lane (a KP-wide tensor over 256 threads is replicated) must all
    # read the old row / column before any of them writes the new one
    tl.debug_barrier()
    tl.store(map_ptr + old_r * KB + old_c, tl.full((KP,), -1, tl.int32), mask=take)
    tl.store(map_ptr + new_key, slot, mask=take)
    tl.store(rows_ptr + slot, new_key // KB, mask=take)
    tl.store(cols_ptr + slot, new_key % KB, mask=take)
    tl.store(slots_ptr + i, slot.to(tl.int64), mask=take)
    tl.debug_barrier()
    # 4. row-major then column-major prefix counts over the map: orders and pointers
    carry = 0
    for start in range(0, n, SCAN):
        p = start + tl.arange(0, SCAN)
        v = tl.load(map_ptr + p, mask=p < n, other=-1)
        flag = (v >= 0).to(tl.int32)
        before = carry + tl.cumsum(flag, axis=0) - flag  # live blocks before p
        tl.store(row_order_ptr + before, v, mask=flag > 0)
        tl.store(row_ptr_ptr + p // KB, before, mask=(p < n) & (p % KB == 0))
        carry += tl.sum(flag, axis=0)
    tl.store(row_ptr_ptr + R, carry)
    carry = 0
    for start in range(0, n, SCAN):
        q = start + tl.arange(0, SCAN)  # column-major position: q = c·R + r
        v = tl.load(map_ptr + (q % R) * KB + q // R, mask=q < n, other=-1)
        flag = (v >= 0).to(tl.int32)
        before = carry + tl.cumsum(flag, axis=0) - flag
        tl.store(col_order_ptr + before, v, mask=flag > 0)
        tl.store(col_ptr_ptr + q // R, before, mask=(q < n) & (q % R == 0))
        carry += tl.sum(flag, axis=0)
    tl.store(col_ptr_ptr + KB, carry)


@triton.jit
def _zero_slots_kernel(
    slots_ptr, t0_ptr, t1_ptr, t2_ptr, t3_ptr,  # pointers: slots (drop,), tensors (C, b, b)
    BB,  # sizes: b·b
    N_T: tl.constexpr, BLOCK: tl.constexpr,
):
    slot = tl.load(slots_ptr + tl.program_id(0))
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < BB
    base = slot * BB + offs
    tl.store(t0_ptr + base, tl.zeros((BLOCK,), t0_ptr.dtype.element_ty), mask=mask)
    if N_T > 1:
        tl.store(t1_ptr + base, tl.zeros((BLOCK,), t1_ptr.dtype.element_ty), mask=mask)
    if N_T > 2:
        tl.store(t2_ptr + base, tl.zeros((BLOCK,), t2_ptr.dtype.element_ty), mask=mask)
    if N_T > 3:
        tl.store(t3_ptr + base, tl.zeros((BLOCK,), t3_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def _pow2(v: int, lo: int) -> int:
    return max(lo, triton.next_power_of_2(max(v, 1)))


def slot_norms(values: torch.Tensor) -> torch.Tensor:
    """(C,) fp32 L2 norm of each slot of a contiguous (C, b, b) values tensor."""
    c, b, _ = values.shape
    out = torch.empty(c, dtype=torch.float32, device=values.device)
    if c:
        with on_device(values):
            _slot_norms_kernel[(c,)](values, out, b * b,
                                     ACC_F64=values.dtype == torch.float64,
                                     BLOCK=min(b * b, 4096))
    return out


def select_rebuild(index: tuple, grid: tuple[int, int], drop: int, drop_scores: torch.Tensor,
                   grow_scores: torch.Tensor) -> torch.Tensor:
    """Both selections and the index rebuild, in place on ``index`` (rows, cols, row_ptr,
    row_order, col_ptr, col_order; int32, contiguous); returns the (drop,) int64 slots.
    ``drop_scores`` (C,) and ``grow_scores`` (R·Kb,) contiguous, any float dtype."""
    rows, cols, row_ptr, row_order, col_ptr, col_order = index
    nbr, nbc = grid
    assert 0 < drop <= MAX_DROP and grow_scores.numel() == nbr * nbc
    dev = rows.device
    slots = torch.empty(drop, dtype=torch.int64, device=dev)
    scratch = torch.empty(nbr * nbc, dtype=torch.int32, device=dev)  # grid → slot
    kp = _pow2(drop, 16)
    # one program: chunks of ≥ 1024 scores (sorted only when one beats the kept list) and
    # scans of 1024; under the interpreter KP-sized chunks (its tl.sort is slow) and scans of
    # 4096 (its cost is per loop step)
    block = kp if INTERPRET else max(kp, 1024)
    scan = 4096 if INTERPRET else 1024
    with on_device(rows):
        _select_rebuild_kernel[(1,)](
            rows, cols, row_ptr, row_order, col_ptr, col_order,
            drop_scores, grow_scores, scratch, slots,
            rows.numel(), nbr, nbc, drop,
            KP=kp, BLOCK=block, SCAN=scan, num_warps=8)
    return slots


def zero_slots(slots: torch.Tensor, tensors: list) -> None:
    """Zero ``t[slots]`` for every contiguous (C, b, b) tensor in ``tensors``, four per launch."""
    bb = tensors[0].shape[1] * tensors[0].shape[2] if tensors else 0
    if not bb or not slots.numel():
        return
    block = min(_pow2(bb, 16), 4096)
    for i in range(0, len(tensors), 4):
        ts = tensors[i:i + 4]
        ptrs = ts + [ts[0]] * (4 - len(ts))  # unused pointers: never written (N_T)
        with on_device(slots):
            _zero_slots_kernel[(slots.numel(), triton.cdiv(bb, block))](
                slots, *ptrs, bb, N_T=len(ts), BLOCK=block)


def sm90_cases() -> list:
    """Ahead-of-time sm_90 compile checks (`morpho_kernels.triton.sm90`) at the issue's target
    (8192², b128: a 64×64 grid, 410 live blocks, drop 41) and at the largest drop served
    (`MAX_DROP`, the sort's register ceiling): no spills, shared memory within 227 KB. No MMA,
    no K loop to pipeline."""
    from .sm90 import Case

    layout = dict(rows_ptr="*i32", cols_ptr="*i32", row_ptr_ptr="*i32", row_order_ptr="*i32",
                  col_ptr_ptr="*i32", col_order_ptr="*i32", drop_ptr="*fp32",
                  grow_ptr="*fp32", map_ptr="*i32", slots_ptr="*i64")
    select = [triton.Config({"KP": kp, "BLOCK": max(kp, 1024), "SCAN": 1024}, num_warps=8)
              for kp in (64, 512, MAX_DROP)]
    return [
        Case("regrow_select_rebuild", _select_rebuild_kernel,
             dict(layout, C=410, R=64, KB=64, DROP=41), {}, configs=select, mma=False,
             pipelined=False),
        Case("regrow_slot_norms", _slot_norms_kernel, dict(v_ptr="*bf16", out_ptr="*fp32",
                                                             BB=128 * 128),
             {"ACC_F64": False}, configs=[triton.Config({"BLOCK": 4096})], mma=False,
             pipelined=False),
        Case("regrow_zero_slots", _zero_slots_kernel,
             dict(slots_ptr="*i64", t0_ptr="*bf16", t1_ptr="*fp32", t2_ptr="*fp32",
                  t3_ptr="*fp32", BB=128 * 128), {"N_T": 4},
             configs=[triton.Config({"BLOCK": 4096})], mma=False, pipelined=False),
    ]
