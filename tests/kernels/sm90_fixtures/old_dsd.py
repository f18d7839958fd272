"""A verbatim copy of the DSD kernel of morpho_kernels/triton/block_sparse.py as of commit
171b1cd (before the v2 rewrite of issue 22): it loads its block indices inside the K loop, so the
A and V addresses depend on loads in the loop and Triton (3.6 and 3.9) gives it two buffers and
an ``async_wait {num = 0}`` every iteration whatever num_stages says. test_sm90_compile.py runs
the sm_90 checker on it to prove the checker catches a lost pipeline."""

import triton
import triton.language as tl

from morpho_kernels.triton.sm90 import Case


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


def old_dsd_cases() -> list:
    """The forward of the old kernel at the issue's target (bf16, b128, 8192 tokens, 8192², 90%
    block sparsity), in the config the H100 record used (BLOCK_M 128, BLOCK_R 64, 8 warps, 3
    stages)."""
    args = dict(a_ptr="*bf16", v_ptr="*bf16", ptr_ptr="*i32", order_ptr="*i32",
                sidx_ptr="*i32", bias_ptr="*bf16", c_ptr="*bf16", M=8192, P=8192, NPB=64,
                CAP=410 * 16, stride_am=8192, stride_ar=1, stride_cm=8192, stride_cp=1,
                stride_vr=1, stride_vp=128)
    cst = dict(HAS_BIAS=False, B=128, UPCAST=False, IS_FP32=False, PRECISION="ieee")
    cfg = triton.Config({"BLOCK_M": 128, "BLOCK_R": 64, "GROUP_M": 1}, num_warps=8,
                        num_stages=3)
    # four programs per SM (its 64 KB of shared memory each cannot): the occupancy check fails
    return [Case("old_dsd_fwd", _bs_dsd_kernel, args, cst, configs=[cfg], ctas_per_sm=4)]
