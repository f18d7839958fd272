"""sm_90 compile-check cases of morpho_kernels/triton/masked_linear.py (bf16, 8192 tokens ×
4096², the issue's masked_linear target), for tests/kernels/test_sm90_compile.py.

masked_linear.py is owned (and being rewritten) elsewhere, so its cases live here and adapt to
its signatures: the arguments a kernel has are filled from `KNOWN` (what its launchers pass for
contiguous operands) or, for a name not listed, by rule (a ``*_ptr`` is a bf16 pointer, of a
``stride_`` pair the first is the row stride 4096 and the second 1, any other int 4096). Every
`triton.jit` kernel of the module gets a case: the ones with a K loop (their autotuner's
configs) must pipeline on warp-group MMAs, the elementwise ones only fit registers and shared
memory."""

import re

import triton

from morpho_kernels.triton.sm90 import Case

TOKENS, N, K = 8192, 4096, 4096

# argument values per kernel as the launchers pass them (forward: W read transposed)
KNOWN = {
    "_masked_mm_kernel": dict(
        M=TOKENS, P=N, R=K, stride_am=K, stride_ar=1, stride_wr=1, stride_wp=K, stride_lr=1,
        stride_lp=K, stride_cm=N, stride_cp=1, t_ptr="*fp32",
        HAS_BIAS=True, UPCAST=False, IS_FP32=False, PRECISION="ieee"),
    "_masked_linear_bwd_wm_kernel": dict(
        M=TOKENS, N=N, K=K, stride_dym=N, stride_dyn=1, stride_xm=K, stride_xk=1, stride_wn=K,
        stride_wk=1, stride_ln=K, stride_lk=1, stride_dwn=K, stride_dwk=1, stride_dmn=K,
        stride_dmk=1, t_ptr="*fp32", UPCAST=False, IS_FP32=False, PRECISION="ieee"),
    "_masked_weight_kernel": dict(numel=N * K, t_ptr="*fp32", BLOCK=1024),
    "_masked_weight_bwd_kernel": dict(numel=N * K, t_ptr="*fp32", BLOCK=1024),
}


def _jit(obj):
    fn = obj
    while not hasattr(fn, "arg_names") or not hasattr(fn, "src"):
        fn = getattr(fn, "fn", None)
        if fn is None:
            return None
    return fn


def _guess(name: str, names: list) -> object:
    if name.endswith("_ptr"):
        return "*bf16"
    if name.startswith("stride_"):
        stem = name[:-1]
        pair = [n for n in names if n.startswith("stride_") and n[:-1] == stem]
        return K if pair and pair[0] == name else 1
    return TOKENS if name == "M" else K


def masked_linear_cases() -> list:
    """One case per @triton.jit kernel of masked_linear.py (the module as it is now)."""
    from morpho_kernels.triton import masked_linear as ml

    cases = []
    for attr in sorted(vars(ml)):
        obj = getattr(ml, attr)
        fn = _jit(obj)
        if fn is None or not attr.startswith("_") or not attr.endswith("_kernel"):
            continue
        names = list(fn.arg_names)
        constexpr = {p.name for p in fn.params if p.is_constexpr}
        configs = list(getattr(obj, "configs", [])) or None
        tuned = set().union(*(c.kwargs for c in configs)) if configs else set()
        known = KNOWN.get(attr, {})
        args, cst = {}, {}
        for n in names:
            if n in tuned:
                continue
            v = known[n] if n in known else _guess(n, names)
            (cst if n in constexpr else args)[n] = v
        has_loop = bool(re.search(r"\bfor\b", fn.src)) and "tl.dot" in fn.src
        if configs is None:
            configs = [triton.Config({}, num_warps=4, num_stages=3)]
        cases.append(Case(f"masked_linear {attr}", obj, args, cst, configs=configs,
                          mma=has_loop, pipelined=has_loop))
    return cases
