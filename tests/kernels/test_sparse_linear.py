"""sparse_linear and SparseLinear: outputs and every gradient against float64 truth, structural
edits keeping function and optimizer state, the dense gradient at candidates, convergence."""

import pytest
import torch
from tolerances import assert_matches

from morpho_kernels import BackendUnavailableError, _ext, reference_graph
from morpho_kernels.formats import EdgeList
from morpho_kernels.nn import SparseLinear
from morpho_kernels.ops.sparse_linear import DISPATCH, dense_grad_at, sparse_linear

BACKENDS = ["ext", "reference"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
needs_ext = pytest.mark.skipif(not _ext.status().loaded,
                               reason=f"extension not built: {_ext.status().reason}")


def _use(backend, name):
    if name == "ext" and not _ext.status().loaded:
        pytest.skip("extension not built")
    backend(name)


def _case(tokens, n, k, density, dtype, device="cpu", spare=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, k, generator=g) < density
    el = EdgeList.from_dense(m, capacity=int(m.sum()) + spare)
    v64 = torch.randn(el.capacity, generator=g, dtype=torch.float64)
    x64 = torch.randn(*tokens, k, generator=g, dtype=torch.float64)
    b64 = torch.randn(n, generator=g, dtype=torch.float64)
    gy64 = torch.randn(*tokens, n, generator=g, dtype=torch.float64)
    return el.to(device), [t.to(device) for t in (x64, v64, b64, gy64)]


def _run(x, el, v, b, gy):
    x, v = x.detach().requires_grad_(), v.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = sparse_linear(x, el, v, b)
    grads = torch.autograd.grad(y, [x, v] + ([b] if b is not None else []), gy)
    return [y, *grads]


def _reference(x, el, v, b, gy):
    x, v = x.detach().requires_grad_(), v.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = reference_graph.sparse_linear(x, el.row_ptr, el.col, v, b)
    grads = torch.autograd.grad(y, [x, v] + ([b] if b is not None else []), gy)
    return [y, *grads]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,n,k,density", [((1,), 1, 1, 1.0), ((5,), 123, 129, 0.05),
                                                ((2, 65), 37, 300, 0.1), ((200,), 129, 64, 0.3),
                                                ((129,), 50, 70, 0.0)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_truth(name, dtype, tokens, n, k, density, bias, backend):
    _use(backend, name)
    el, (x64, v64, b64, gy64) = _case(tokens, n, k, density, dtype)
    b64 = b64 if bias else None
    truth = _reference(x64, el, v64, b64, gy64)
    cast = [t.to(dtype) if t is not None else None for t in (x64, v64, b64, gy64)]
    ref = _reference(*cast[:1], el, *cast[1:])
    out = _run(cast[0], el, *cast[1:])
    assert DISPATCH.last == name
    for o, r, t, what in zip(out, ref, truth, ["y", "dx", "dvalues", "dbias"]):
        assert_matches(o, r, t, what)
    assert (out[2][el.nnz:] == 0).all(), "spare slots get gradient 0"


def test_values_only_gradient_needs_no_transpose():
    el, (x, v, b, gy) = _case((9,), 20, 30, 0.2, torch.float32)
    v = v.float().requires_grad_()
    y = sparse_linear(x.float(), el, v)
    assert el._transpose is None
    (dv,) = torch.autograd.grad(y, v, gy.float())
    assert dv.shape == v.shape


@needs_ext
def test_opcheck():
    el, (x, v, b, gy) = _case((6,), 9, 11, 0.3, torch.float32)
    x, v, b = x.float(), v.float(), b.float()
    sparse_linear(x, el, v)  # registers the extension's fake kernels
    t = el.transpose()
    torch.library.opcheck(torch.ops.morpho.sparse_linear.default,
                          (x.requires_grad_(), el.row_ptr, el.col, v.requires_grad_(), b, *t))
    torch.library.opcheck(torch.ops.morpho.sparse_linear_t.default,
                          (x.detach().t().contiguous(), el.row_ptr, el.col, v.detach(), None))
    torch.library.opcheck(torch.ops.morpho.dense_grad_at.default,
                          (x.detach(), gy.float(), torch.tensor([1, 3]), torch.tensor([0, 8])))


def test_errors(backend):
    el, (x, v, b, gy) = _case((4,), 6, 5, 0.5, torch.float32)
    x, v = x.float(), v.float()
    with pytest.raises(ValueError, match="x's last dim"):
        sparse_linear(torch.randn(3, 4), el, v)
    with pytest.raises(ValueError, match="values shape"):
        sparse_linear(x, el, v[:-1])
    with pytest.raises(TypeError, match="values dtype"):
        sparse_linear(x, el, v.double())
    with pytest.raises(ValueError, match="bias shape"):
        sparse_linear(x, el, v, torch.zeros(3))
    with pytest.raises(TypeError, match="edges must be an EdgeList"):
        sparse_linear(x, (el.row_ptr, el.col), v)
    with pytest.raises(TypeError, match="x must be floating"):
        sparse_linear(x.long(), el, v)
    backend("triton")
    with pytest.raises(BackendUnavailableError, match="cannot serve morpho::sparse_linear"):
        sparse_linear(x, el, v)


@pytest.mark.parametrize("name", BACKENDS)
def test_dense_grad_at_matches_dense_gradient(name, backend):
    _use(backend, name)
    lin = torch.nn.Linear(40, 30)
    x = torch.randn(3, 17, 40)
    layer = SparseLinear.from_linear(lin, density=0.1)
    layer.keep_for_growth = True
    layer(x).square().sum().backward()
    lin.weight.grad = None
    dense = SparseLinear.from_linear(lin, density=0.1).to_linear()
    dense(x).square().sum().backward()
    src, dst = torch.randint(0, 40, (200,)), torch.randint(0, 30, (200,))
    torch.testing.assert_close(layer.dense_grad_at(src, dst), dense.weight.grad[dst, src],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="same leading"):
        dense_grad_at(x, torch.randn(2, 30), src, dst)


def test_module_checks_its_arguments():
    for name, bad, exc in (("in_features", -1, ValueError), ("in_features", 4.0, TypeError),
                           ("out_features", True, TypeError)):
        args = {"in_features": 4, "out_features": 3, name: bad}
        with pytest.raises(exc, match=f"{name} must be a non-negative int, got {bad!r}"):
            SparseLinear(**args)
    for bad, exc in ((1.5, ValueError), (float("nan"), ValueError), ("0.1", TypeError),
                     (True, TypeError)):
        with pytest.raises(exc, match=f"density must be a finite number in \\[0, 1\\], got "
                                      f"{bad!r}"):
            SparseLinear(4, 3, density=bad)
        with pytest.raises(exc, match="density must be a finite number in \\[0, 1\\]"):
            SparseLinear.from_linear(torch.nn.Linear(4, 3), density=bad)
    assert SparseLinear(4, 3, density=1).nnz == 12  # an int density is a number


def test_from_linear_to_linear_same_outputs():
    lin = torch.nn.Linear(64, 48)
    layer = SparseLinear.from_linear(lin, density=0.25, capacity=1000)
    assert layer.nnz == round(0.25 * 64 * 48) and layer.values.numel() == 1000
    kept = layer.to_linear().weight != 0
    assert kept.sum() == layer.nnz
    thresh = lin.weight.abs()[kept].min()
    assert (lin.weight.abs()[~kept] <= thresh).all(), "magnitude pruning keeps the largest"
    x = torch.randn(10, 64)
    torch.testing.assert_close(layer(x), layer.to_linear()(x), rtol=1e-5, atol=1e-5)
    full = SparseLinear.from_linear(lin, density=1.0)
    torch.testing.assert_close(full(x), lin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opt_name", ["adam", "adamw", "sgd"])
def test_grow_prune_keep_function_and_optimizer_state(opt_name):
    torch.manual_seed(1)
    layer = SparseLinear(30, 20, density=0.1, capacity=70)
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=1e-2),
           "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
           "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)}[opt_name](
        layer.parameters())
    x = torch.randn(8, 30)
    for _ in range(2):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    key = "momentum_buffer" if opt_name == "sgd" else "exp_avg"

    def by_edge():
        src, dst = layer.edges.to_coo()
        st = opt.state[layer.values][key]
        return {(s, d): (float(v), float(m)) for s, d, v, m in
                zip(src.tolist(), dst.tolist(), layer.values.detach()[:layer.nnz],
                    st[:layer.nnz])}

    before, w_before = by_edge(), layer.to_linear().weight.detach().clone()
    src, dst = torch.randint(0, 30, (40,)), torch.randint(0, 20, (40,))
    report = layer.grow(src, dst, 0.0, max_fan_in=5, optimizer=opt)
    after = by_edge()
    assert report.inserted > 0 and layer.values.numel() >= 70
    for e, vm in before.items():
        assert after[e] == vm, "old edges keep value and moment"
    for e in set(after) - set(before):
        assert after[e] == (0.0, 0.0), "new edges start at init with zero moments"
    torch.testing.assert_close(layer.to_linear().weight, w_before)
    removed = layer.prune(torch.arange(0, layer.nnz, 3), optimizer=opt)
    after_prune = by_edge()
    assert removed == len(after) - len(after_prune)
    assert all(after[e] == vm for e, vm in after_prune.items())
    opt.zero_grad()
    layer(x).square().mean().backward()  # still trains with the same optimizer
    opt.step()


def test_state_dict_roundtrip():
    a = SparseLinear(12, 9, density=0.3)
    b = SparseLinear(12, 9, density=0.3)
    b.grow(torch.tensor([0]), torch.tensor([0]))  # different capacity/structure
    a.load_state_dict(b.state_dict())
    x = torch.randn(4, 12)
    torch.testing.assert_close(a(x), b(x))


@needs_ext
def test_convergence_ext_vs_reference(backend):
    """A tiny sparse MLP trained through each backend gives the same loss curve."""
    def train(name):
        backend(name)
        torch.manual_seed(0)
        net = torch.nn.Sequential(SparseLinear(16, 32, density=0.3), torch.nn.ReLU(),
                                  SparseLinear(32, 4, density=0.3))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        x, y = torch.randn(64, 16), torch.randn(64, 4)
        losses = []
        for _ in range(25):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    ext, ref = train("ext"), train("reference")
    assert ext[-1] < 0.9 * ext[0]
    torch.testing.assert_close(torch.tensor(ext), torch.tensor(ref), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,n,k,density", [((1,), 1, 1, 1.0), ((5,), 123, 129, 0.05),
                                                ((300,), 257, 300, 0.02)], ids=str)
def test_cuda_matches_truth(dtype, tokens, n, k, density, backend):
    backend("ext")
    el, (x64, v64, b64, gy64) = _case(tokens, n, k, density, dtype)
    truth = _reference(x64, el, v64, b64, gy64)
    ref = _reference(x64.to(dtype), el, v64.to(dtype), b64.to(dtype), gy64.to(dtype))
    out = _run(*(t.to(dtype).cuda() for t in (x64,)), el.to("cuda"),
               *(t.to(dtype).cuda() for t in (v64, b64, gy64)))
    for o, r, t, what in zip(out, ref, truth, ["y", "dx", "dvalues", "dbias"]):
        assert_matches(o.cpu(), r, t, what)
    g = dense_grad_at(x64.to(dtype).cuda(), gy64.to(dtype).cuda(), torch.tensor([0, k - 1]).cuda(),
                      torch.tensor([n - 1, 0]).cuda())
    want = reference_graph.dense_grad_at(x64, gy64, torch.tensor([0, k - 1]),
                                         torch.tensor([n - 1, 0]))
    torch.testing.assert_close(g.cpu().double(), want, rtol=3e-2,
                               atol=3e-2 * float(want.abs().max()))


def test_growth_beyond_capacity_is_safe_in_a_loop_that_holds_the_last_loss():
    """Many loops keep the previous step's ``loss`` alive while the structure changes. Growth
    beyond the capacity gives ``values`` a new, longer Parameter (amortised: at least twice
    the capacity), swaps it into the optimizer with its moments moved; the held graph stays on
    the old Parameter, so the next backward works (it failed one step later with a shape
    mismatch when the Parameter's .data was swapped)."""
    torch.manual_seed(0)
    layer = SparseLinear(8, 6, density=0.25)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(5, 8)
    loss = layer(x).square().sum()
    loss.backward()
    opt.step()
    old, cap = layer.values, layer.values.numel()
    assert layer.edges.nnz == cap  # no spare slot yet
    state = {k: v.clone() for k, v in opt.state[old].items()
             if torch.is_tensor(v) and v.shape == old.shape}
    before = dict(zip(zip(*[t.tolist() for t in layer.edges.to_coo()]), range(cap)))
    rep = layer.grow(torch.arange(8).repeat(2), torch.arange(16) % 6, 0.0, optimizer=opt)
    assert rep.inserted > 0 and layer.edges.nnz > cap  # it outgrew the capacity
    assert layer.values is not old and layer.values.numel() >= 2 * cap
    held = [p for g in opt.param_groups for p in g["params"]]
    assert any(p is layer.values for p in held) and not any(p is old for p in held)
    after = list(zip(*[t.tolist() for t in layer.edges.to_coo()]))
    for key, moment in state.items():  # moments moved with their edges, new ones start at 0
        new_m = opt.state[layer.values][key]
        for slot, edge in enumerate(after):
            expect = moment[before[edge]] if edge in before else 0.0
            assert float(new_m[slot]) == float(expect), (key, edge)
    prev_loss = loss  # noqa: F841  (held on purpose, as a loop would)
    loss = layer(x).square().sum()
    opt.zero_grad()
    loss.backward()  # the held graph does not break it
    w0 = layer.values.detach().clone()
    opt.step()
    assert not torch.equal(layer.values.detach(), w0)  # the optimizer trains the new tensor
    # within the (grown) capacity nothing is reallocated
    keep = layer.values
    free = [(s, d) for s in range(8) for d in range(6)
            if (s, d) not in set(zip(*[t.tolist() for t in layer.edges.to_coo()]))]
    layer.grow(torch.tensor([free[0][0]]), torch.tensor([free[0][1]]), optimizer=opt)
    assert layer.values is keep
