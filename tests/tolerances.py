"""The one tolerance table of the suite (DESIGN.md convention 5).

A kernel is compared with float64 truth, and its error may be at most ERR_RATIO times the error
of the PyTorch reference run in the same dtype (also against float64), plus a floor of a few
units in the last place of the result's scale, for results the reference happens to get exact.
"""

import torch

ERR_RATIO = 2.0
# floor = FLOOR_ULPS * eps(dtype) * (max |truth| + 1)
FLOOR_ULPS = {torch.float64: 64, torch.float32: 64, torch.bfloat16: 4, torch.float16: 8}


def max_err(a: torch.Tensor, truth: torch.Tensor) -> float:
    return float((a.double() - truth.double()).abs().max()) if truth.numel() else 0.0


def assert_matches(out: torch.Tensor, ref_same_dtype: torch.Tensor, truth: torch.Tensor,
                   name: str) -> None:
    """out (kernel) vs truth (float64), allowed ERR_RATIO x the reference's own error."""
    assert out.shape == truth.shape, f"{name}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert out.dtype == ref_same_dtype.dtype, f"{name}: dtype {out.dtype} != {ref_same_dtype.dtype}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    if not truth.numel():
        return
    eps = torch.finfo(out.dtype).eps
    floor = FLOOR_ULPS[out.dtype] * eps * (float(truth.detach().abs().max()) + 1.0)
    out, ref_same_dtype, truth = out.detach(), ref_same_dtype.detach(), truth.detach()
    err, ref_err = max_err(out, truth), max_err(ref_same_dtype, truth)
    assert err <= ERR_RATIO * ref_err + floor, (
        f"{name}: error {err:.3g} > {ERR_RATIO} x reference error {ref_err:.3g} + floor {floor:.3g}"
    )
