"""Triton kernels of masked_linear: y = x @ (W ⊙ σ(M/T))ᵀ + b and its backward.

Three kernels, each with a launcher that checks, allocates and launches (explicit strides, so
stride-0 and non-contiguous operands work without copies):

* `_masked_mm_kernel`: C = A @ op(W ⊙ σ(L/T)) with the sigmoid fused into the weight-operand
  load, computed as Cᵀ so that the operand made in registers is the MMA's left one (wgmma reads
  it from registers; A alone is staged in shared memory, multi-buffered, and the MMAs stay
  asynchronous). Serves the forward (op = transpose) and dX = dY @ (W ⊙ s) (op = identity) for
  small token counts. Every row-block of A recomputes σ for its weight tiles, so it only pays
  while there are few row-blocks (DESIGN.md: at 8192 tokens × 4096² that is ~1e9 sigmoids).
* `_masked_weight_kernel`: W ⊙ σ(L/T) materialised once, for the vendor GEMM at large token
  counts (the forward's one temporary; the backward writes it into dM's buffer).
* `_masked_weight_bwd_kernel`: the one-pass epilogue dW = G·s, dM = G·W·s(1−s)/T after the
  vendor GEMM G = dYᵀX (the large-token backward), in place: G is read from dW's buffer.
* `_masked_linear_bwd_wm_kernel`: one accumulator G = dYᵀX per (N, K) tile with an epilogue
  writing dW = G·s and dM = G·W·s(1−s)/T, so G never reaches memory.

Under TRITON_INTERPRET=1 (CPU testing) the kernels run with one large-block config and upcast
bf16/fp16 to fp32 before tl.dot (the interpreter's low-precision dot is wrong, DESIGN.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRET, LAUNCH_LOCK, dtype_flags, on_device


def _mm_configs() -> list:
    if INTERPRET:  # one config: autotune with several fails without a GPU; big blocks = few steps
        return [triton.Config({"BLOCK_M": 64, "BLOCK_P": 64, "BLOCK_R": 64}, num_warps=4)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_P": bp, "BLOCK_R": br}, num_warps=w, num_stages=s)
        for bm, bp, br, w, s in [
            (16, 64, 128, 4, 4),
            (32, 64, 64, 4, 4),
            (64, 64, 64, 4, 3),
            (64, 128, 64, 8, 4),  # 4 warps spilled 4 bytes (Triton 3.9, sm_90)
            (128, 128, 64, 8, 3),
        ]
    ]


def _wm_configs() -> list:
    if INTERPRET:
        return [triton.Config({"BLOCK_N": 64, "BLOCK_K": 64, "BLOCK_M": 64, "GROUP_N": 4})]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_M": bm, "GROUP_N": 8},
                      num_warps=w, num_stages=s)
        for bn, bk, bm, w, s in [
            # (128, 256, 64, 8) and (128, 128, 32, 4) spilled registers for sm_90: dropped
            (128, 128, 64, 8, 3),
            (64, 128, 64, 4, 4),
            (64, 64, 64, 4, 3),
        ]
    ]


@triton.jit
def _sigmoid_f32(z):
    # σ(−∞) = 1/(1+∞) = 0 exactly and σ(+∞) = 1: hard-pruned logits never give NaN.
    return 1.0 / (1.0 + tl.exp(-z))


@triton.autotune(configs=_mm_configs(), key=["M", "P", "R"])
@triton.jit
def _masked_mm_kernel(
    a_ptr, w_ptr, l_ptr, t_ptr, bias_ptr, c_ptr,  # pointers
    M, P, R,  # sizes: C is (M, P), reduction over R
    stride_am, stride_ar, stride_wr, stride_wp, stride_lr, stride_lp, stride_cm, stride_cp,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IS_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # Computed as Cᵀ = op(W ⊙ s)ᵀ · Aᵀ: the operand made in registers (W ⊙ σ(L/T)) is then the
    # MMA's left operand, which Hopper's wgmma reads from registers, and only A goes through
    # shared memory, multi-buffered by the pipeliner. Made as the right operand, it was copied
    # to shared memory inside the K loop: one buffer, each MMA waited for (sm_90 compile check,
    # tests/kernels/test_sm90_compile.py).
    pid_m = tl.program_id(0)
    pid_p = tl.program_id(1)
    # int64 offsets: row × stride passes 2^31 for big activations (e.g. 262144 × 8192).
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_p = (pid_p * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    inv_t = 1.0 / tl.load(t_ptr).to(tl.float32)
    acc = tl.zeros((BLOCK_P, BLOCK_M), dtype=tl.float32)  # Cᵀ tile
    for r0 in range(0, R, BLOCK_R):
        offs_r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
        at = tl.load(a_ptr + offs_r[:, None] * stride_ar + offs_m[None, :] * stride_am,
                     mask=(offs_r[:, None] < R) & (offs_m[None, :] < M),
                     other=0.0)  # (BLOCK_R, BLOCK_M)
        bt_mask = (offs_p[:, None] < P) & (offs_r[None, :] < R)
        w = tl.load(w_ptr + offs_p[:, None] * stride_wp + offs_r[None, :] * stride_wr,
                    mask=bt_mask, other=0.0)  # (BLOCK_P, BLOCK_R)
        lg = tl.load(l_ptr + offs_p[:, None] * stride_lp + offs_r[None, :] * stride_lr,
                     mask=bt_mask, other=0.0)
        bt = w.to(tl.float32) * _sigmoid_f32(lg.to(tl.float32) * inv_t)
        if IS_FP32:
            acc += tl.dot(bt, at, input_precision=PRECISION)
        elif UPCAST:
            acc += tl.dot(bt.to(w.dtype).to(tl.float32), at.to(tl.float32))
        else:
            acc += tl.dot(bt.to(w.dtype), at)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_p, mask=offs_p < P, other=0.0).to(tl.float32)[:, None]
    c_mask = (offs_p[:, None] < P) & (offs_m[None, :] < M)
    tl.store(c_ptr + offs_m[None, :] * stride_cm + offs_p[:, None] * stride_cp,
             acc.to(c_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _masked_weight_kernel(
    w_ptr, l_ptr, t_ptr, out_ptr,  # pointers (contiguous)
    numel,  # sizes
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    inv_t = 1.0 / tl.load(t_ptr).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    lg = tl.load(l_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (w * _sigmoid_f32(lg * inv_t)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _masked_weight_bwd_kernel(
    g_ptr, w_ptr, l_ptr, t_ptr, dw_ptr, dm_ptr,  # pointers (contiguous)
    numel,  # sizes
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    inv_t = 1.0 / tl.load(t_ptr).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    lg = tl.load(l_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = _sigmoid_f32(lg * inv_t)
    gs = g * s
    tl.store(dw_ptr + offs, gs.to(dw_ptr.dtype.element_ty), mask=mask)
    tl.store(dm_ptr + offs, (gs * w * (1.0 - s) * inv_t).to(dm_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_wm_configs(), key=["M", "N", "K"])
@triton.jit
def _masked_linear_bwd_wm_kernel(
    dy_ptr, x_ptr, w_ptr, l_ptr, t_ptr, dw_ptr, dm_ptr,  # pointers
    M, N, K,  # sizes: dY (M, N), X (M, K), W (N, K)
    stride_dym, stride_dyn, stride_xm, stride_xk, stride_wn, stride_wk,
    stride_ln, stride_lk, stride_dwn, stride_dwk, stride_dmn, stride_dmk,
    UPCAST: tl.constexpr, IS_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, GROUP_N: tl.constexpr,
):
    # Grouped tile order: GROUP_N row-tiles of W share the same X column-tiles in L2.
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    num_k = tl.cdiv(K, BLOCK_K)
    group = pid // (GROUP_N * num_k)
    first_n = group * GROUP_N
    group_size = min(num_n - first_n, GROUP_N)
    pid_n = first_n + (pid % (GROUP_N * num_k)) % group_size
    pid_k = (pid % (GROUP_N * num_k)) // group_size
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # G = dYᵀX for this tile
    for m0 in range(0, M, BLOCK_M):
        offs_m = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        dy = tl.load(dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyn,
                     mask=(offs_m[:, None] < M) & (offs_n[None, :] < N), other=0.0)  # (BM, BN)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)  # (BM, BK)
        dyt = tl.trans(dy)
        if IS_FP32:
            acc += tl.dot(dyt, x, input_precision=PRECISION)
        elif UPCAST:
            acc += tl.dot(dyt.to(tl.float32), x.to(tl.float32))
        else:
            acc += tl.dot(dyt, x)
    # Epilogue: s = σ(L/T); dW = G·s; dM = G·W·s(1−s)/T = dW·(1−s)/T·W. Ordered so that at
    # most two tile-sized values live beside the accumulator's (acc, s, then acc, W): holding
    # G, W and s at once spilled 72 bytes at 255 registers for sm_90 with Triton 3.6.
    nk_mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    inv_t = 1.0 / tl.load(t_ptr).to(tl.float32)
    lg = tl.load(l_ptr + offs_n[:, None] * stride_ln + offs_k[None, :] * stride_lk,
                 mask=nk_mask, other=0.0).to(tl.float32)
    s = _sigmoid_f32(lg * inv_t)
    acc = acc * s  # dW
    tl.store(dw_ptr + offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk,
             acc.to(dw_ptr.dtype.element_ty), mask=nk_mask)
    acc = acc * ((1.0 - s) * inv_t)
    w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                mask=nk_mask, other=0.0).to(tl.float32)
    tl.store(dm_ptr + offs_n[:, None] * stride_dmn + offs_k[None, :] * stride_dmk,
             (acc * w).to(dm_ptr.dtype.element_ty), mask=nk_mask)


# ----------------------------------------------------------------------------- launchers


def masked_mm(a: torch.Tensor, weight: torch.Tensor, mask_logits: torch.Tensor,
              temperature: torch.Tensor, bias: torch.Tensor | None,
              transpose: bool) -> torch.Tensor:
    """C = a @ op(W ⊙ σ(L/T)) (+ bias), op = transpose (forward) or identity (dX).

    a: (M, R); weight, mask_logits: (N, K); transpose -> R = K, C is (M, N); else R = N, C (M, K).
    """
    assert a.dim() == 2 and weight.shape == mask_logits.shape
    m, r = a.shape
    n, k = weight.shape
    if transpose:  # B[r, p] = W[p, r]
        assert r == k
        p, swr, swp, slr, slp = n, weight.stride(1), weight.stride(0), mask_logits.stride(1), \
            mask_logits.stride(0)
    else:  # B[r, p] = W[r, p]
        assert r == n
        p, swr, swp, slr, slp = k, weight.stride(0), weight.stride(1), mask_logits.stride(0), \
            mask_logits.stride(1)
    c = torch.empty((m, p), device=a.device, dtype=a.dtype)
    if m == 0 or p == 0:
        return c
    if r == 0:
        return c.zero_() if bias is None else c.copy_(bias.expand(m, p))
    bias = bias.contiguous() if bias is not None else None  # the kernel reads it with stride 1
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(p, meta["BLOCK_P"]))
    with on_device(a), LAUNCH_LOCK:
        _masked_mm_kernel[grid](
            a, weight, mask_logits, temperature, bias if bias is not None else c, c,
            m, p, r,
            a.stride(0), a.stride(1), swr, swp, slr, slp, c.stride(0), c.stride(1),
            HAS_BIAS=bias is not None, **dtype_flags(a.dtype),
        )
    return c


def masked_weight(weight: torch.Tensor, mask_logits: torch.Tensor,
                  temperature: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """W ⊙ σ(L/T) in one pass, into ``out`` (contiguous, W's shape) when given: the backward
    writes it into dM's buffer, so it is no extra (N, K) tensor."""
    w = weight.contiguous()
    lg = mask_logits.contiguous()
    if out is None:
        out = torch.empty_like(w)
    assert out.is_contiguous() and out.shape == w.shape
    numel = w.numel()
    if numel:
        block = 4096 if INTERPRET else 1024
        with on_device(w):
            _masked_weight_kernel[(triton.cdiv(numel, block),)](w, lg, temperature, out, numel,
                                                                BLOCK=block)
    return out


def masked_weight_backward(grad: torch.Tensor, weight: torch.Tensor, mask_logits: torch.Tensor,
                           temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dW, dM) = (G·s, G·W·s(1−s)/T) with s = σ(L/T), from G = dL/d(W ⊙ s), in one pass."""
    g, w, lg = grad.contiguous(), weight.contiguous(), mask_logits.contiguous()
    dw, dm = torch.empty_like(w), torch.empty_like(lg)
    _epilogue(g, w, lg, temperature, dw, dm)
    return dw, dm


def masked_weight_backward_(g_dw: torch.Tensor, weight: torch.Tensor, mask_logits: torch.Tensor,
                            temperature: torch.Tensor, dm: torch.Tensor) -> None:
    """The same epilogue in place: reads G from ``g_dw`` and overwrites it with dW, writes dM
    into ``dm`` (both contiguous, W's shape). Each element is read and written by the same
    thread, so the aliasing is safe; it saves the (N, K) G a separate dW would need."""
    assert g_dw.is_contiguous() and dm.is_contiguous() and g_dw.shape == dm.shape
    _epilogue(g_dw, weight.contiguous(), mask_logits.contiguous(), temperature, g_dw, dm)


def _epilogue(g, w, lg, temperature, dw, dm) -> None:
    numel = w.numel()
    if numel:
        block = 4096 if INTERPRET else 1024
        with on_device(w):
            _masked_weight_bwd_kernel[(triton.cdiv(numel, block),)](
                g, w, lg, temperature, dw, dm, numel, BLOCK=block)


def masked_linear_bwd_wm(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         mask_logits: torch.Tensor, temperature: torch.Tensor):
    """(dW, dM) from dY (M, N) and X (M, K) with G = dYᵀX kept in registers."""
    m, n = grad_out.shape
    k = x.shape[1]
    # contiguous whatever the parameters' strides: the op's fake kernel promises that
    dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    dm = torch.empty(weight.shape, dtype=mask_logits.dtype, device=weight.device)
    if n == 0 or k == 0:
        return dw, dm
    if m == 0:
        return dw.zero_(), dm.zero_()
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(k, meta["BLOCK_K"]),)
    with on_device(x), LAUNCH_LOCK:
        _masked_linear_bwd_wm_kernel[grid](
            grad_out, x, weight, mask_logits, temperature, dw, dm,
            m, n, k,
            grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1),
            weight.stride(0), weight.stride(1), mask_logits.stride(0), mask_logits.stride(1),
            dw.stride(0), dw.stride(1), dm.stride(0), dm.stride(1),
            **dtype_flags(x.dtype),
        )
    return dw, dm
