"""The C++ extension: build/load reporting, its ops against the reference, its errors."""

import pytest
import torch
from tolerances import assert_matches

from morpho_kernels import _ext, reference

needs_ext = pytest.mark.skipif(not _ext.status().loaded,
                               reason=f"extension not built: {_ext.status().reason}")


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=str)
def test_masked_weight_ops_match_reference(dtype):
    g = torch.Generator().manual_seed(1)
    w, m, gr = (torch.randn(37, 129, generator=g, dtype=torch.float64) for _ in range(3))
    m = m * 4
    m.view(-1)[::5] = float("-inf")
    m.view(-1)[1::9] = float("inf")
    t64 = torch.tensor(0.6, dtype=torch.float64)
    truth = reference.masked_weight(w, m, t64)
    truth_dw, truth_dm = reference.masked_weight_backward(gr, w, m, t64)
    wd, md, gd = w.to(dtype), m.to(dtype), gr.to(dtype)
    t = torch.tensor(0.6, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    ops = _ext.ops()
    assert_matches(ops.masked_weight(wd, md, t), reference.masked_weight(wd, md, t), truth, "weff")
    dw, dm = ops.masked_weight_backward(gd, wd, md, t)
    rdw, rdm = reference.masked_weight_backward(gd, wd, md, t)
    assert_matches(dw, rdw, truth_dw, "dW")
    assert_matches(dm, rdm, truth_dm, "dM")
    pruned = torch.isinf(m) & (m < 0)
    assert (ops.masked_weight(wd, md, t)[pruned] == 0).all()


@needs_ext
def test_ext_checks_report_clear_errors():
    ops = _ext.ops()
    w = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="mask_logits shape"):
        ops.masked_weight(w, torch.randn(5, 4), torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="temperature must be finite and > 0"):
        ops.masked_weight(w, w, torch.tensor(0.0))
    with pytest.raises(RuntimeError, match="must be 2-D"):
        ops.masked_weight(torch.randn(4), torch.randn(4), torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="grad shape"):
        ops.masked_weight_backward(torch.randn(3, 5), w, w, torch.tensor(1.0))


@needs_ext
def test_ext_opcheck():
    w, m = torch.randn(6, 7), torch.randn(6, 7)
    t = torch.tensor(0.9)
    torch.library.opcheck(torch.ops.morpho.masked_weight.default, (w, m, t))
    torch.library.opcheck(torch.ops.morpho.masked_weight_backward.default,
                          (torch.randn(6, 7), w, m, t))


@needs_ext
def test_cpu_kernels_are_compiled_with_openmp():
    # at::parallel_for's `#pragma omp parallel` is compiled into the extension; a build without
    # -fopenmp silently ran every CPU kernel on one thread (as every build did before 2026-11-23).
    assert _ext.status().openmp, "extension built without OpenMP: CPU kernels run on one thread"


def test_mismatched_build_is_reported_not_loaded(monkeypatch):
    monkeypatch.setattr(_ext, "_read_build_info", lambda: {"torch": "1.0.0+fake"})
    st = _ext._load()
    assert not st.loaded
    assert "1.0.0+fake" in st.reason and torch.__version__ in st.reason


def test_disabled_extension_is_reported(monkeypatch):
    monkeypatch.setenv("MORPHO_DISABLE_EXT", "1")
    st = _ext._load()
    assert not st.loaded and "MORPHO_DISABLE_EXT" in st.reason


@pytest.mark.gpu
def test_cuda_kernels_built_on_a_cuda_machine():
    st = _ext.status()
    assert st.loaded, st.reason
    assert st.with_cuda, "torch has CUDA here, so setup.py must have compiled csrc/cuda"
    w = torch.randn(300, 257, device="cuda")
    m = torch.randn(300, 257, device="cuda")
    t = torch.tensor(0.8, device="cuda")
    torch.testing.assert_close(_ext.ops().masked_weight(w, m, t), reference.masked_weight(w, m, t))
