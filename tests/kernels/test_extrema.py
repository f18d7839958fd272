"""extrema_stats: every backend against float64 truth, running state, NaN / empty, errors."""

import numpy as np
import pytest
import torch
from tolerances import assert_matches

from morpho_kernels import BackendUnavailableError, _ext, reference_graph
from morpho_kernels.ops.extrema import DISPATCH, ExtremaStats, extrema_stats

needs_ext = pytest.mark.skipif(not _ext.status().loaded,
                               reason=f"extension not built: {_ext.status().reason}")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SHAPES = [(1, 1), (5, 3), (123, 129), (2, 7, 65), (3, 5, 4, 7), (0, 6)]


def _truth(x: torch.Tensor, low: float, high: float, dims) -> dict:
    xd = x.double()
    return {"below": (xd < low).sum(dims), "above": (xd > high).sum(dims),
            "mean": xd.mean(dims), "min": xd.amin(dims) if xd.numel() else None,
            "max": xd.amax(dims) if xd.numel() else None}


def _check(out: ExtremaStats, x: torch.Tensor, low: float, high: float) -> None:
    dims = (0, 2, 3) if x.dim() == 4 else tuple(range(x.dim() - 1))
    t = _truth(x, low, high, dims)
    assert torch.equal(out.below, t["below"]) and torch.equal(out.above, t["above"])
    assert out.below.dtype == torch.int64 and out.mean.dtype == torch.float32
    assert int(out.count) == x.numel() // max(x.shape[1 if x.dim() == 4 else -1], 1)
    if not x.numel():
        assert out.mean.isnan().all() and (out.min == float("inf")).all()
        return
    assert torch.equal(out.min, t["min"].float()) and torch.equal(out.max, t["max"].float())
    c = x.shape[1] if x.dim() == 4 else x.shape[-1]
    ref = reference_graph.extrema_stats(x.reshape(-1, c, 1) if x.dim() != 4 else
                                        x.reshape(x.shape[0], c, -1), low, high)
    assert_matches(out.mean, ref[2], t["mean"].float(), "mean")


@pytest.mark.parametrize("name", ["ext", "reference"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_truth(name, dtype, shape, backend):
    if name == "ext" and not _ext.status().loaded:
        pytest.skip("extension not built")
    backend(name)
    x = (torch.randn(shape, dtype=torch.float64) * 2).to(dtype)
    out = extrema_stats(x, -0.3, 1.1)
    assert DISPATCH.last == name
    _check(out, x, -0.3, 1.1)


def test_running_state_equals_one_call():
    x = torch.randn(300, 40)
    parts = [x[:1], x[1:120], x[120:120], x[120:]]
    state = None
    for p in parts:
        state = extrema_stats(p, -0.5, 0.5, state=state)
    full = extrema_stats(x, -0.5, 0.5)
    for a, b, name in zip(state, full, ExtremaStats._fields):
        if name == "mean":
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, b), name


def test_thresholds_are_exact_and_strict():
    x = torch.tensor([[-1.0], [0.0], [1.0], [0.3]]).bfloat16()
    out = extrema_stats(x, 0.0, 1.0)
    assert out.below.tolist() == [1] and out.above.tolist() == [0]
    # 0.3 is not a bf16 value: the bf16 nearest 0.3 must compare as in float64
    v = float(torch.tensor(0.3).bfloat16())
    out = extrema_stats(x, 0.3, 0.3)
    assert out.above.tolist() == [int(v > 0.3) + 1] and out.below.tolist() == [2 + int(v < 0.3)]


def test_nan_propagates_to_mean_min_max():
    x = torch.randn(9, 3)
    x[4, 1] = float("nan")
    out = extrema_stats(x, -1.0, 1.0)
    assert out.mean[1].isnan() and out.min[1].isnan() and out.max[1].isnan()
    assert not out.mean[0].isnan() and not out.min[2].isnan()


def test_infinite_and_numpy_thresholds():
    """±inf thresholds count nothing (a layer whose extremes are not watched); NumPy scalars
    are numbers like any other."""
    x = torch.randn(7, 3)
    out = extrema_stats(x, float("-inf"), float("inf"))
    assert out.below.tolist() == [0, 0, 0] and out.above.tolist() == [0, 0, 0]
    want = extrema_stats(x, -0.5, 0.5)
    got = extrema_stats(x, np.float32(-0.5), np.int64(0) + 0.5)
    assert torch.equal(got.below, want.below) and torch.equal(got.above, want.above)


def test_channel_dim_override():
    x = torch.randn(4, 6, 5)
    out = extrema_stats(x, -1, 1, channel_dim=1)
    assert torch.equal(out.max, x.amax((0, 2)))


def test_errors():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="low .* must be <= high"):
        extrema_stats(x, 1.0, 0.0)
    state = extrema_stats(torch.randn(3, 5), 0, 1)
    with pytest.raises(ValueError, match="state has width"):
        extrema_stats(x, 0, 1, state=state)
    with pytest.raises(TypeError, match="state must be"):
        extrema_stats(x, 0, 1, state=[1, 2])
    with pytest.raises(TypeError, match="activations must be floating"):
        extrema_stats(torch.ones(3, 3, dtype=torch.int64), 0, 1)
    with pytest.raises(TypeError, match="activations must be a torch.Tensor"):
        extrema_stats([1.0], 0, 1)
    with pytest.raises(ValueError, match="low must be a number \\(not NaN\\), got nan"):
        extrema_stats(x, float("nan"), 1)
    for bad in ("0", True, None, torch.tensor(0.0)):
        with pytest.raises(TypeError, match="high must be a number"):
            extrema_stats(x, 0, bad)
    with pytest.raises(ValueError, match="channel_dim must be an int in \\[-2, 1\\], got 5"):
        extrema_stats(x, 0, 1, channel_dim=5)
    with pytest.raises(TypeError, match="channel_dim must be an int"):
        extrema_stats(x, 0, 1, channel_dim=1.0)


def test_forced_triton_raises(backend):
    backend("triton")
    with pytest.raises(BackendUnavailableError, match="cannot serve morpho::extrema_stats"):
        extrema_stats(torch.randn(3, 3), 0, 1)


@needs_ext
def test_ext_checks_and_opcheck():
    ops = _ext.ops()
    with pytest.raises(RuntimeError, match="low .* must be <= high"):
        ops.extrema_reduce(torch.randn(2, 3, 1), 1.0, 0.0)
    with pytest.raises(RuntimeError, match="expects x viewed as"):
        ops.extrema_reduce(torch.randn(2, 3), 0.0, 1.0)
    extrema_stats(torch.randn(2, 2), 0, 1)  # registers the fake kernel
    torch.library.opcheck(ops.extrema_reduce.default, (torch.randn(7, 5, 3), -0.2, 0.4))
    torch.library.opcheck(torch.ops.morpho.extrema_stats.default, (torch.randn(7, 5, 1), 0.0, 0.1))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (123, 129), (1000, 4096), (3, 5, 4, 7), (2, 64, 33, 9)],
                         ids=str)
def test_cuda_matches_truth(dtype, shape, backend):
    backend("ext")
    x = (torch.randn(shape, dtype=torch.float64) * 2).to(dtype)
    out = extrema_stats(x.cuda(), -0.3, 1.1)
    assert out.mean.is_cuda
    _check(ExtremaStats(*(t.cpu() for t in out)), x, -0.3, 1.1)
    state = extrema_stats(x.cuda(), -0.3, 1.1, state=out)
    assert torch.equal(state.below.cpu(), 2 * out.below.cpu())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(300, 256), (2, 5, 7, 3)], ids=str)
def test_cuda_nan_and_inf(dtype, shape, backend):
    backend("ext")
    x = torch.randn(shape).to(dtype)
    flat = x.view(-1)
    flat[3], flat[7], flat[11] = float("nan"), float("inf"), float("-inf")
    out = extrema_stats(x.cuda(), -1.0, 1.0)
    ref = extrema_stats(x, -1.0, 1.0)
    for a, b, name in zip(out, ref, ExtremaStats._fields):
        torch.testing.assert_close(a.cpu(), b, equal_nan=True, rtol=1e-5, atol=1e-5, msg=name)
