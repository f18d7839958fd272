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


# ----------------------------------------------------------------------------- CUDA (issue 22)
# The one-kernel CUDA path (csrc/cuda/extrema_kernels.cuh): every path the launcher picks
# (16-byte vectors at C % 8 == 0 for bf16 / fp16, pairs at even C, scalar at odd C or a
# misaligned pointer, channels where inner > 1: whole rows per block, or rows cut into spans at
# 1 x 2 x 300 x 300), rows that no split divides, more column tiles than resident blocks
# (3 x 200000), and the last block merging many splits (4099 x 4096).
# Its SASS and its per-thread code on the host: test_sass.py.

CUDA_SHAPES = [(1, 1), (7, 5), (1001, 123), (1001, 129), (77, 130), (4099, 64), (4099, 4096),
               (3, 200_000), (3, 5, 4, 7), (2, 64, 33, 9), (1, 2, 300, 300), (0, 5)]


def _poison(x: torch.Tensor) -> torch.Tensor:
    flat = x.view(-1)
    for i, v in ((3, float("nan")), (7, float("inf")), (11, float("-inf")), (12, -0.0)):
        if i < flat.numel():
            flat[i] = v
    return x


def _assert_same(out: ExtremaStats, ref, name: str = "") -> None:
    """Counts, min and max equal (NaN where NaN), mean within fp32 accumulation error."""
    out = ExtremaStats(*(t.cpu() for t in out))
    assert torch.equal(out.below, ref[0]) and torch.equal(out.above, ref[1]), name
    assert int(out.count) == int(ref[5]), name
    for got, want, what in ((out.min, ref[3], "min"), (out.max, ref[4], "max")):
        assert torch.equal(got.isnan(), want.isnan()), (name, what)
        assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0)), (name, what)
    torch.testing.assert_close(out.mean, ref[2], rtol=2e-6, atol=2e-6, equal_nan=True,
                               msg=f"{name} mean")


def _x3(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1] if x.dim() == 4 else x.shape[-1]
    return x.reshape(x.shape[0], c, -1) if x.dim() == 4 else x.reshape(-1, c, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
def test_cuda_matches_truth(dtype, shape, backend):
    backend("ext")
    x = (torch.randn(shape, dtype=torch.float64) * 2).to(dtype)
    out = extrema_stats(x.cuda(), -0.3, 1.1)
    assert out.mean.is_cuda and DISPATCH.last == "ext"
    _check(ExtremaStats(*(t.cpu() for t in out)), x, -0.3, 1.1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [s for s in CUDA_SHAPES if 0 not in s], ids=str)
def test_cuda_nan_inf_and_running_state(dtype, shape, backend):
    """NaN makes mean / min / max NaN and counts nowhere; ±inf count and bound; a state carried
    across three calls equals the reference on the three batches at once."""
    backend("ext")
    batches = [_poison((torch.randn(shape, dtype=torch.float64) * 2).to(dtype)),
               (torch.randn(shape, dtype=torch.float64) * 3).to(dtype),
               (torch.randn(shape, dtype=torch.float64) + 1).to(dtype)]
    out = extrema_stats(batches[0].cuda(), -1.0, 1.0)
    _assert_same(out, reference_graph.extrema_stats(_x3(batches[0]), -1.0, 1.0), "one call")
    state = None
    for b in batches:
        state = extrema_stats(b.cuda(), -1.0, 1.0, state=state)
    _assert_same(state, reference_graph.extrema_stats(_x3(torch.cat(batches)), -1.0, 1.0),
                 "state")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_cuda_misaligned_pointer(dtype, backend):
    """A view one element into its storage cannot take 16-byte loads: the scalar path."""
    backend("ext")
    flat = _poison((torch.randn(1 + 1001 * 64, dtype=torch.float64) * 2).to(dtype))
    x = flat[1:].view(1001, 64)
    xc = flat.cuda()[1:].view(1001, 64)
    assert xc.data_ptr() % 16 != 0
    _assert_same(extrema_stats(xc, -0.3, 1.1), reference_graph.extrema_stats(_x3(x), -0.3, 1.1))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4099, 4096), (1001, 129), (2, 64, 33, 9)], ids=str)
def test_cuda_one_kernel_per_call(shape, backend):
    """No follow-up reduction kernels: one kernel (plus the tickets' memset) per call."""
    backend("ext")
    x = torch.randn(shape, device="cuda").bfloat16()
    extrema_stats(x, -0.3, 1.1)  # first call: occupancy query, fake registration
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        extrema_stats(x, -0.3, 1.1)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()
             if e.device_type == torch.autograd.DeviceType.CUDA
             and not any(k in e.name.lower() for k in ("memset", "memcpy"))]
    assert len(names) == 1 and "extrema" in names[0], names


@pytest.mark.gpu
def test_cuda_opcheck():
    extrema_stats(torch.randn(2, 2, device="cuda"), 0, 1)  # registers the fake kernel
    torch.library.opcheck(_ext.ops().extrema_reduce.default,
                          (torch.randn(7, 5, 3, device="cuda"), -0.2, 0.4))
    torch.library.opcheck(_ext.ops().extrema_reduce.default,
                          (torch.randn(70, 64, 1, device="cuda").bfloat16(), -0.2, 0.4))
