"""morpho::masked_linear on every backend against the reference and float64 truth."""

import math

import pytest
import torch
from conftest import TRITON_DEVICE
from tolerances import assert_matches

import morpho_kernels as mk
from morpho_kernels import reference
from morpho_kernels.ops import masked_linear as ml_mod

# (leading dims, in_features K, out_features N): ragged, non-powers of two, 1×1×1.
SHAPES = [((1,), 1, 1), ((5,), 123, 77), ((3, 17), 129, 64), ((2, 70), 40, 33)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
T = 0.7


def _device(backend):
    return TRITON_DEVICE if backend == "triton" else "cpu"


def make_inputs(lead, k, n, bias=True, seed=0):
    """float64 masters; a few logits are −inf (hard-pruned) and some are large (saturated)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) / math.sqrt(k)
    m = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    m.view(-1)[:: 7] = float("-inf")
    m.view(-1)[3:: 11] = 40.0
    b = torch.randn(n, generator=g, dtype=torch.float64) if bias else None
    return x, w, m, b


def run(fn, tensors, grad_out, dtype, device):
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() if t is not None else None
              for t in tensors]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None],
                                grad_out.to(device=device, dtype=dtype))
    return y, grads


def check_backend(backend_name, lead, k, n, dtype, bias, force, device=None):
    device = device or _device(backend_name)
    x, w, m, b = make_inputs(lead, k, n, bias)
    g = torch.randn(*lead, n, dtype=torch.float64)
    tensors = (x, w, m, b)
    op = lambda x_, w_, m_, b_: mk.masked_linear(x_, w_, m_, T, b_)
    ref = lambda x_, w_, m_, b_: reference.masked_linear(x_, w_, m_, T, b_)
    y64, g64 = run(ref, tensors, g, torch.float64, "cpu")
    y_ref, g_ref = run(ref, tensors, g, dtype, "cpu")
    force(backend_name)
    y, grads = run(op, tensors, g, dtype, device)
    assert ml_mod.DISPATCH.last == backend_name
    names = ["dx", "dW", "dM", "db"]
    assert_matches(y.cpu(), y_ref, y64, "output")
    for name, got, r, truth in zip(names, grads, g_ref, g64):
        assert_matches(got.cpu(), r, truth, name)
    # hard-pruned connections: exact zero gradient for weight and logits
    pruned = torch.isinf(m) & (m < 0)
    assert (grads[1].cpu()[pruned] == 0).all() and (grads[2].cpu()[pruned] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,k,n", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("backend_name", ["triton", "ext", "reference"])
def test_matches_reference(backend_name, lead, k, n, dtype, backend):
    if backend_name == "ext" and not mk._ext.status().loaded:
        pytest.skip(f"extension not built: {mk._ext.status().reason}")
    check_backend(backend_name, lead, k, n, dtype, True, backend)


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("fused_max", ["0", "100000"], ids=["materialized", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_both_forward_paths(fused_max, dtype, bias, backend, monkeypatch):
    monkeypatch.setenv("MORPHO_FUSED_MAX_TOKENS", fused_max)
    check_backend("triton", (3, 17), 129, 64, dtype, bias, backend)
    check_backend("triton", (70,), 40, 33, dtype, bias, backend)  # several token tiles


@pytest.mark.parametrize("backend_name", ["reference", "ext"])
def test_gradcheck_float64(backend_name, backend):
    if backend_name == "ext" and not mk._ext.status().loaded:
        pytest.skip("extension not built")
    backend(backend_name)
    x, w, m, b = (t.requires_grad_() for t in make_inputs((2, 3), 5, 4))
    with torch.no_grad():
        m[torch.isinf(m)] = -3.0  # gradcheck perturbs values: keep them finite here
    assert torch.autograd.gradcheck(lambda *a: mk.masked_linear(*a[:3], T, a[3]), (x, w, m, b))


@pytest.mark.parametrize("backend_name", ["triton", "ext", "reference"])
def test_stride0_and_noncontiguous_grads(backend_name, backend):
    if backend_name == "ext" and not mk._ext.status().loaded:
        pytest.skip("extension not built")
    device = _device(backend_name)
    x, w, m, b = make_inputs((6,), 33, 20)
    xt = x.t().contiguous().t()  # same values, transposed strides
    leaves = [t.float().to(device).requires_grad_() for t in (x, w, m, b)]
    ref_leaves = [t.float().requires_grad_() for t in (x, w, m, b)]
    backend(backend_name)
    # .sum().backward() hands the op a stride-0 expanded grad_output
    xs = xt.float().to(device).requires_grad_()
    mk.masked_linear(xs, *leaves[1:3], T, leaves[3]).sum().backward()
    reference.masked_linear(*ref_leaves[:3], T, ref_leaves[3]).sum().backward()
    for got, want in zip(leaves[1:], ref_leaves[1:]):
        torch.testing.assert_close(got.grad.cpu(), want.grad, atol=1e-4, rtol=1e-4)
    # a non-contiguous (transposed) grad_output
    xx = leaves[0].detach().clone().requires_grad_()
    y = mk.masked_linear(xx, *leaves[1:3], T, leaves[3])
    g = torch.randn(y.shape[1], y.shape[0], device=device).t()
    (dx,) = torch.autograd.grad(y, xx, g)
    torch.testing.assert_close(dx.cpu(), g.cpu() @ reference.masked_weight(w.float(), m.float(), T),
                               atol=1e-4, rtol=1e-4)


def test_only_parameters_and_input_saved(backend):
    """Nothing of the weight's size beyond the parameters is saved for backward."""
    x, w, m, b = (t.float().requires_grad_() for t in make_inputs((8,), 64, 48))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mk.masked_linear(x, w, m, T, b)
    ptrs = {t.data_ptr() for t in saved}
    assert ptrs <= {x.data_ptr(), w.data_ptr(), m.data_ptr()} | {
        t.data_ptr() for t in saved if t.numel() == 1}
    assert sum(t.numel() for t in saved) == x.numel() + w.numel() + m.numel() + 1


def test_all_neg_inf_gives_zeros_and_no_nan(backend):
    for name in ["reference", "triton"] + (["ext"] if mk._ext.status().loaded else []):
        backend(name)
        device = _device(name)
        x = torch.randn(4, 9, device=device, requires_grad=True)
        w = torch.randn(5, 9, device=device, requires_grad=True)
        m = torch.full((5, 9), float("-inf"), device=device, requires_grad=True)
        y = mk.masked_linear(x, w, m, 0.5)
        assert (y == 0).all(), name
        y.sum().backward()
        for t in (x, w, m):
            assert torch.isfinite(t.grad).all() and (t.grad == 0).all(), name


def test_opcheck_forward_and_backward(backend):
    x, w, m, b = (t.float() for t in make_inputs((3, 2), 7, 6))
    t = torch.tensor(T)
    names = ["reference"] + (["ext"] if mk._ext.status().loaded else [])
    for name in names:
        backend(name)
        args = (x.requires_grad_(), w.requires_grad_(), m.requires_grad_(), t, b.requires_grad_())
        torch.library.opcheck(torch.ops.morpho.masked_linear.default, args)
        g = torch.randn(3, 2, 6)
        torch.library.opcheck(torch.ops.morpho.masked_linear_backward.default,
                              (g, x.detach(), w.detach(), m.detach(), t, True, True, True))


def test_opcheck_triton_backend(backend):
    backend("triton")
    device = TRITON_DEVICE
    x, w, m, b = (t.float().to(device) for t in make_inputs((2,), 5, 3))
    t = torch.tensor(T, device=device)
    torch.library.opcheck(torch.ops.morpho.masked_linear.default,
                          (x.requires_grad_(), w.requires_grad_(), m.requires_grad_(), t, b))


def test_compile_fullgraph_cpu(backend):
    backend("reference" if not mk._ext.status().loaded else "ext")
    x, w, m, b = (t.float().requires_grad_() for t in make_inputs((4,), 16, 8))
    temp = torch.tensor(1.3)
    fn = lambda *a: mk.masked_linear(*a[:3], temp, a[3]).square().sum()
    compiled = torch.compile(fn, fullgraph=True)
    want = fn(x, w, m, b)
    want_g = torch.autograd.grad(want, (x, w, m, b))
    got = compiled(x, w, m, b)
    got_g = torch.autograd.grad(got, (x, w, m, b))
    torch.testing.assert_close(got, want)
    for a, c in zip(got_g, want_g):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(x=a["x"][..., :-1]), ValueError, "in_features"),
        (lambda a: a.update(mask_logits=a["mask_logits"][:-1]), ValueError, "mask_logits shape"),
        (lambda a: a.update(weight=a["weight"][0]), ValueError, "weight must be 2-D"),
        (lambda a: a.update(bias=a["bias"][:-1]), ValueError, "bias shape"),
        (lambda a: a.update(temperature=0.0), ValueError, "temperature"),
        (lambda a: a.update(temperature=-1.0), ValueError, "temperature"),
        (lambda a: a.update(temperature=float("nan")), ValueError, "temperature"),
        (lambda a: a.update(temperature=float("inf")), ValueError, "temperature"),
        (lambda a: a.update(temperature=torch.tensor(0.0)), ValueError, "temperature"),
        (lambda a: a.update(temperature=torch.ones(2)), ValueError, "temperature"),
        (lambda a: a.update(temperature="1"), TypeError, "temperature"),
        (lambda a: a.update(weight=a["weight"].double()), TypeError, "weight dtype"),
        (lambda a: a.update(mask_logits=a["mask_logits"].half()), TypeError, "mask_logits dtype"),
        (lambda a: a.update(x=a["x"].long()), TypeError, "x must be floating"),
        (lambda a: a.update(x=[1.0]), TypeError, "x must be a torch.Tensor"),
        (lambda a: a.update(weight=a["weight"].to("meta")), ValueError, "weight is on meta"),
    ],
)
def test_bad_input_raises_naming_argument(mutate, exc, match):
    x, w, m, b = (t.float() for t in make_inputs((3,), 6, 4))
    args = {"x": x, "weight": w, "mask_logits": m, "temperature": 1.0, "bias": b}
    mutate(args)
    with pytest.raises(exc, match=match):
        mk.masked_linear(**args)


def test_forced_backend_that_cannot_serve_raises_with_reasons(backend, monkeypatch):
    from morpho_kernels import _ext

    monkeypatch.setattr(ml_mod._tk, "INTERPRET", False)
    monkeypatch.setattr(_ext, "_status", _ext.ExtStatus(None, "pretend-missing", None, False))
    x, w, m, b = (t.float() for t in make_inputs((3,), 6, 4))
    for name, why in [("triton", "TRITON_INTERPRET"), ("ext", "pretend-missing")]:
        backend(name)
        with pytest.raises(mk.BackendUnavailableError, match=why) as info:
            mk.masked_linear(x, w, m, 1.0, b)
        assert "reference" in str(info.value)  # every backend's state is listed
    backend("nonsense")
    with pytest.raises(ValueError, match="MORPHO_BACKEND"):
        mk.masked_linear(x, w, m, 1.0, b)
    # auto: with triton and ext out, the reference serves CPU calls
    monkeypatch.delenv("MORPHO_BACKEND")
    mk.masked_linear(x, w, m, 1.0, b)
    assert ml_mod.DISPATCH.last == "reference"


def test_bad_crossover_env_raises(monkeypatch, backend):
    backend("triton")
    monkeypatch.setenv("MORPHO_FUSED_MAX_TOKENS", "many")
    x, w, m, b = (t.float().to(TRITON_DEVICE) for t in make_inputs((3,), 6, 4))
    with pytest.raises(ValueError, match="MORPHO_FUSED_MAX_TOKENS"):
        mk.masked_linear(x, w, m, 1.0, b)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [64, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gpu_large_shapes(tokens, dtype, backend):
    """Real Triton kernels with autotuning, both forward paths, against float64."""
    check_backend("triton", (tokens,), 1024, 768, dtype, True, backend)
    if mk._ext.status().with_cuda:
        check_backend("ext", (tokens,), 1024, 768, dtype, True, backend, device="cuda")


@pytest.mark.parametrize("backend_name", ["triton", "ext", "reference"])
def test_noncontiguous_weight_and_bias_compiled(backend_name, backend):
    """Transposed (tied) weights and strided biases: right values, and gradients whose strides
    match the fake kernels under torch.compile."""
    if backend_name == "ext" and not mk._ext.status().loaded:
        pytest.skip("extension not built")
    device = _device(backend_name)
    backend(backend_name)
    x, w, m, b = (t.float().to(device) for t in make_inputs((5,), 24, 40))
    wt = w.t().contiguous().requires_grad_()  # (K, N) storage; the op sees wt.t()
    mt = m.t().contiguous().requires_grad_()
    bb = torch.stack([b, b], 1).requires_grad_()  # bias = bb[:, 0] has stride 2
    fn = lambda: mk.masked_linear(x, wt.t(), mt.t(), T, bb[:, 0]).square().sum()
    want_fn = lambda: reference.masked_linear(x, wt.t(), mt.t(), T, bb[:, 0]).square().sum()
    want = want_fn()
    want_g = torch.autograd.grad(want, (wt, mt, bb))
    torch._dynamo.reset()
    for f in (fn, torch.compile(fn, fullgraph=True)):
        got = f()
        got_g = torch.autograd.grad(got, (wt, mt, bb))
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
        for a, c in zip(got_g, want_g):
            torch.testing.assert_close(a, c, atol=1e-3, rtol=1e-4)


# ----------------------------------------------------------------------------- memory and host path


class _NewStorages(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op output that owns a new storage (none of the op's inputs' storages):
    (op, bytes). An ``out=`` op writing into a buffer allocated earlier is not new."""

    def __init__(self):
        super().__init__()
        self.new = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves((args, kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.new.append((str(func), t.untyped_storage().nbytes()))
        return out


@pytest.mark.parametrize("need_x", [True, False])
def test_triton_backward_allocates_no_nk_transient(need_x, backend):
    """The Triton backward (materialised path) allocates exactly two (N, K) tensors, dW and dM:
    W ⊙ s lives in dM's buffer, G = dYᵀX is written into dW, the epilogue works in place (the
    earlier backward allocated four: G, dW, dM and W ⊙ s)."""
    backend("triton")
    tokens, n, k = 8, 64, 48  # tokens·K and tokens·N well below N·K
    x, w, m, b = (t.float().to(TRITON_DEVICE) for t in make_inputs((tokens,), k, n))
    x.requires_grad_(need_x)
    w.requires_grad_()
    m.requires_grad_()
    y = mk.masked_linear(x, w, m, T, b)
    assert type(y.grad_fn).__name__ == "_MaskedLinearFunctionBackward"  # the lean eager path
    g = torch.randn_like(y)
    nk = n * k * 4
    t = torch.tensor(T, device=TRITON_DEVICE)
    rec = _NewStorages()  # the backward's body, as both the eager and the compiled path run it
    with rec:
        ml_mod._backward_triton(g, x.detach(), w.detach(), m.detach(), t, need_x, True)
    assert len([1 for _, nbytes in rec.new if nbytes >= nk]) == 2, rec.new
    rec = _NewStorages()  # and through autograd (the eager Function: its ops are visible)
    with rec:
        grads = torch.autograd.grad(y, [x, w, m] if need_x else [w, m], g)
    assert len([1 for _, nbytes in rec.new if nbytes >= nk]) == 2, rec.new
    ref = run(lambda *a: reference.masked_linear(*a[:3], T, a[3]), (x, w, m, b), g,
              torch.float32, TRITON_DEVICE)[1]
    for got, want in zip(grads, ref[: 3] if need_x else ref[1:3]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the forward: one (N, K) temporary, W ⊙ s for the GEMM
    rec = _NewStorages()
    with rec, torch.no_grad():
        mk.masked_linear(x, w, m, T, b)
    assert len([1 for _, nbytes in rec.new if nbytes >= nk]) == 1, rec.new
    # W ⊙ s, y, the 0-dim temperature (the interpreter's argument copies have 0 bytes)
    assert len([1 for _, nbytes in rec.new if nbytes]) <= 3, rec.new


@pytest.mark.gpu
def test_gpu_peak_memory_two_nk_below_eager(backend):
    """fwd+bwd peak of the Triton path at least two (N, K) below eager PyTorch's (issue 22)."""
    n = k = 2048
    x = torch.randn(1024, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    m = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    peaks = {}
    for name, fn in (("eager", reference.masked_linear), ("morpho", mk.masked_linear)):
        backend("reference" if name == "eager" else "triton")
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(x, w, m, T).sum().backward()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
        x.grad = w.grad = m.grad = None
    assert peaks["morpho"] <= peaks["eager"] - 2 * n * k * 2, peaks


def test_compile_traces_the_custom_op_eager_takes_the_function(backend):
    """Under torch.compile the graph holds morpho::masked_linear (one node, fake kernel); an
    eager call builds the plain autograd.Function's node instead."""
    backend("reference")
    x, w, m, b = (t.float().requires_grad_() for t in make_inputs((4,), 16, 8))
    targets = []

    def record(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    fn = lambda *a: mk.masked_linear(*a[:3], T, a[3])  # noqa: E731
    y = torch.compile(fn, backend=record, fullgraph=True)(x, w, m, b)
    assert "morpho.masked_linear.default" in targets, targets
    torch.testing.assert_close(y, reference.masked_linear(x, w, m, T, b))
    assert type(fn(x, w, m, b).grad_fn).__name__ == "_MaskedLinearFunctionBackward"
