"""EdgeList, insert_connections and remove_connections against a Python set model."""

import random

import pytest
import torch

import morpho_kernels as mk
from morpho_kernels import _ext, reference_graph
from morpho_kernels.formats import EdgeList
from morpho_kernels.ops import edges as edges_mod
from morpho_kernels.ops.edges import DISPATCH, insert_connections, remove_connections

BACKENDS = ["ext", "reference"]
needs_ext = pytest.mark.skipif(not _ext.status().loaded,
                               reason=f"extension not built: {_ext.status().reason}")


def _use(backend, name):
    if name == "ext" and not _ext.status().loaded:
        pytest.skip("extension not built")
    backend(name)


def model_insert(edges: set, cands, n_src, n_dst, max_in=None, max_out=None):
    """The documented policy, sequentially: duplicates, then fan-in in order, then fan-out."""
    status, seen = [], set()
    for c in cands:
        status.append(1 if c in edges or c in seen else 0)
        seen.add(c)
    indeg = [sum(1 for (_, d) in edges if d == j) for j in range(n_dst)]
    outdeg = [sum(1 for (s, _) in edges if s == i) for i in range(n_src)]
    for i, (_, d) in enumerate(cands):
        if status[i] == 0 and max_in is not None:
            if indeg[d] >= max_in:
                status[i] = 2
            else:
                indeg[d] += 1
    for i, (s, _) in enumerate(cands):
        if status[i] == 0 and max_out is not None:
            if outdeg[s] >= max_out:
                status[i] = 3
            else:
                outdeg[s] += 1
    return edges | {c for c, st in zip(cands, status) if st == 0}, status


def as_set(el: EdgeList) -> set:
    src, dst = el.to_coo()
    return set(zip(src.tolist(), dst.tolist()))


def check_invariants(el: EdgeList) -> None:
    EdgeList(el.row_ptr, el.col, el.in_features)  # validates sortedness, ranges, row_ptr
    assert (el.col[el.nnz:] == 0).all()


def values_by_edge(el: EdgeList, values: torch.Tensor) -> dict:
    src, dst = el.to_coo()
    return {(s, d): float(v) for s, d, v in zip(src.tolist(), dst.tolist(), values[:el.nnz])}


def test_from_coo_dense_roundtrip():
    m = torch.rand(7, 11) < 0.3
    el = EdgeList.from_dense(m, capacity=100)
    assert el.capacity == 100 and el.nnz == int(m.sum())
    assert torch.equal(el.to_dense().bool(), m)
    check_invariants(el)
    src, dst = el.to_coo()
    el2 = EdgeList.from_coo(torch.cat([src, src]), torch.cat([dst, dst]), 11, 7)
    assert as_set(el2) == as_set(el) and el2.capacity == el.nnz
    assert torch.equal(el.fan_in(), m.sum(1)) and torch.equal(el.fan_out(), m.sum(0))


def test_transpose_lists_edges_by_source():
    el = EdgeList.from_dense(torch.rand(6, 9) < 0.4, capacity=40)
    t_ptr, t_dst, perm = el.transpose()
    d = el.dst_index()
    for s in range(9):
        sl = perm[t_ptr[s]:t_ptr[s + 1]]
        assert (el.col[sl] == s).all() and torch.equal(t_dst[t_ptr[s]:t_ptr[s + 1]], d[sl])
    assert int(t_ptr[-1]) == el.nnz


@pytest.mark.parametrize("name", BACKENDS)
def test_insert_into_empty_layer(name, backend):
    _use(backend, name)
    el = EdgeList.empty(5, 4)
    upd = insert_connections(el, torch.tensor([3, 1, 3, 0]), torch.tensor([2, 2, 2, 0]),
                             torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert DISPATCH.last == name
    assert as_set(upd.edges) == {(3, 2), (1, 2), (0, 0)}
    assert upd.report.inserted == 3 and upd.report.rejected_duplicate == 1
    assert values_by_edge(upd.edges, upd.values) == {(3, 2): 1.0, (1, 2): 2.0, (0, 0): 4.0}
    assert upd.positions.tolist()[2] == -1
    check_invariants(upd.edges)
    empty = insert_connections(el, torch.zeros(0, dtype=torch.long),
                               torch.zeros(0, dtype=torch.long))
    assert empty.edges.nnz == 0 and empty.report.inserted == 0


@pytest.mark.parametrize("name", BACKENDS)
def test_caps_reached_exactly(name, backend):
    _use(backend, name)
    # dst 0 already has 2 inputs (cap 3: one more fits); src 4 already feeds 1 (cap 2: one more)
    el = EdgeList.from_coo(torch.tensor([1, 2, 4]), torch.tensor([0, 0, 1]), 6, 3)
    src = torch.tensor([3, 5, 1, 4, 4, 0])
    dst = torch.tensor([0, 0, 0, 2, 0, 1])
    upd = insert_connections(el, src, dst, 1.0, max_fan_in=3, max_fan_out=2,
                             values=torch.tensor([7.0, 8.0, 9.0]))
    # (3,0) fills dst 0; (5,0) fan-in; (1,0) duplicate; (4,2) fills src 4; (4,0) fan-in
    # (dst 0 is full, checked first); (0,1) inserted
    assert upd.report.status.tolist() == [0, 2, 1, 0, 2, 0]
    assert (upd.report.inserted, upd.report.rejected_duplicate, upd.report.rejected_fan_in,
            upd.report.rejected_fan_out) == (3, 1, 2, 0)
    assert int(upd.edges.fan_in()[0]) == 3 and int(upd.edges.fan_out()[4]) == 2
    vals = values_by_edge(upd.edges, upd.values)
    assert vals[(1, 0)] == 7.0 and vals[(2, 0)] == 8.0 and vals[(4, 1)] == 9.0
    assert vals[(3, 0)] == 1.0 and vals[(0, 1)] == 1.0
    out = insert_connections(el, torch.tensor([4, 4]), torch.tensor([2, 0]), max_fan_out=2)
    assert out.report.status.tolist() == [0, 3]
    zero = insert_connections(el, torch.tensor([0]), torch.tensor([2]), max_fan_in=0)
    assert zero.report.rejected_fan_in == 1


@pytest.mark.parametrize("name", BACKENDS)
def test_random_sequences_match_set_model(name, backend):
    _use(backend, name)
    rng = random.Random(0)
    n_src, n_dst = 13, 9
    el, values = EdgeList.empty(n_src, n_dst, capacity=4), torch.zeros(4)
    model, model_vals = set(), {}
    for step in range(30):
        if rng.random() < 0.65 or not model:
            c = rng.randint(0, 25)
            cands = [(rng.randrange(n_src), rng.randrange(n_dst)) for _ in range(c)]
            caps = rng.choice([(None, None), (3, None), (None, 2), (4, 3)])
            init = torch.arange(c, dtype=torch.float32) + 100 * step
            upd = insert_connections(el, torch.tensor([s for s, _ in cands], dtype=torch.long),
                                     torch.tensor([d for _, d in cands], dtype=torch.long),
                                     init, *caps, values=values)
            model_new, status = model_insert(model, cands, n_src, n_dst, *caps)
            assert upd.report.status.tolist() == status
            for i, (c_, st) in enumerate(zip(cands, status)):
                if st == 0:
                    model_vals[c_] = float(init[i])
            model = model_new
        else:
            nnz = el.nnz
            drop = torch.rand(nnz) < 0.3
            src, dst = el.to_coo()
            removed = {(s, d) for s, d, k in zip(src.tolist(), dst.tolist(), drop.tolist()) if k}
            arg = drop if rng.random() < 0.5 else drop.nonzero().squeeze(1)
            upd = remove_connections(el, arg, values=values)
            assert upd.removed == len(removed)
            model -= removed
        el, values = upd.edges, upd.values
        check_invariants(el)
        assert as_set(el) == model
        assert values_by_edge(el, values) == {k: model_vals[k] for k in model}


@needs_ext
def test_ext_matches_reference_at_scale():
    g = torch.Generator().manual_seed(3)
    n = 300
    keys = torch.randperm(n * n, generator=g)[:20000]
    el = EdgeList.from_coo(keys % n, keys // n, n, n, capacity=25000)
    src = torch.randint(0, n, (5000,), generator=g)
    dst = torch.randint(0, n, (5000,), generator=g)
    for caps in [(-1, -1), (80, -1), (-1, 70), (75, 75)]:
        a = _ext.ops().edges_insert(el.row_ptr, el.col, src, dst, n, *caps)
        b = reference_graph.insert_connections(el.row_ptr, el.col, src, dst, n,
                                               *(None if c < 0 else c for c in caps))
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_remove_keeps_capacity_and_order():
    el = EdgeList.from_dense(torch.rand(5, 8) < 0.5, capacity=50)
    vals = torch.randn(50)
    full = torch.zeros(50, dtype=torch.bool)
    full[:3] = True
    upd = remove_connections(el, full, values=vals)
    assert upd.edges.capacity == 50 and upd.removed == 3
    assert torch.equal(upd.values[:el.nnz - 3], vals[3:el.nnz])
    assert upd.old_to_new[:3].tolist() == [-1, -1, -1]
    all_gone = remove_connections(el, torch.arange(el.nnz))
    assert all_gone.edges.nnz == 0


def test_errors():
    el = EdgeList.from_dense(torch.rand(4, 5) < 0.5, capacity=30)
    with pytest.raises(ValueError, match="src entries must be in"):
        insert_connections(el, torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="dst entries must be in"):
        insert_connections(el, torch.tensor([0]), torch.tensor([-1]))
    with pytest.raises(ValueError, match="must match"):
        insert_connections(el, torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(TypeError, match="src must be an integer"):
        insert_connections(el, torch.tensor([0.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="max_fan_in must be None or a non-negative"):
        insert_connections(el, torch.tensor([0]), torch.tensor([0]), max_fan_in=-2)
    with pytest.raises(ValueError, match="values shape"):
        insert_connections(el, torch.tensor([0]), torch.tensor([0]), values=torch.zeros(3))
    with pytest.raises(ValueError, match="init_values shape"):
        insert_connections(el, torch.tensor([0]), torch.tensor([0]), torch.zeros(2))
    with pytest.raises(TypeError, match="edges must be an EdgeList"):
        insert_connections("x", torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="as a mask must have shape"):
        remove_connections(el, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_or_indices entries must be in"):
        remove_connections(el, torch.tensor([el.nnz]))
    with pytest.raises(ValueError, match="strictly increasing"):
        EdgeList(torch.tensor([0, 2]), torch.tensor([1, 1]), 3)
    with pytest.raises(ValueError, match="col entries"):
        EdgeList(torch.tensor([0, 1]), torch.tensor([3]), 3)
    with pytest.raises(TypeError, match="int64"):
        EdgeList(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0]), 3)


def test_scalar_arguments_checked_with_one_message_form():
    """Wrong type: TypeError; right type, wrong value: ValueError; both name the argument and
    show the value."""
    el = EdgeList.from_dense(torch.rand(4, 5) < 0.5, capacity=30)
    one = (torch.tensor([0]), torch.tensor([0]))
    for bad, exc in ((-2, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError)):
        with pytest.raises(exc, match=f"max_fan_in must be None or a non-negative int, got "
                                      f"{bad!r}"):
            insert_connections(el, *one, max_fan_in=bad)
        with pytest.raises(exc, match="max_fan_out must be None or a non-negative int"):
            insert_connections(el, *one, max_fan_out=bad)
    for bad, exc in ((float("nan"), ValueError), (float("inf"), ValueError),
                     ("0", TypeError), (True, TypeError), (None, TypeError)):
        with pytest.raises(exc, match="init_values must be a finite number, got"):
            insert_connections(el, *one, bad)
    rp, col = torch.tensor([0, 1]), torch.tensor([0])
    for bad, exc in ((-1, ValueError), (3.0, TypeError), (True, TypeError)):
        with pytest.raises(exc, match=f"in_features must be a non-negative int, got {bad!r}"):
            EdgeList(rp, col, bad)
    with pytest.raises(ValueError, match="out_features must be a non-negative int, got -1"):
        EdgeList.empty(3, -1)
    with pytest.raises(TypeError, match="capacity must be a non-negative int, got 2.0"):
        EdgeList.empty(3, 2, 2.0)
    with pytest.raises(ValueError, match="capacity must be None or a non-negative int"):
        EdgeList.from_coo(*one, 3, 2, capacity=-1)
    # NumPy integers are ints, NumPy floats numbers: accepted and normalised
    np = pytest.importorskip("numpy")
    el2 = EdgeList.from_coo(*one, np.int64(3), np.int32(2), capacity=np.int64(4))
    assert type(el2.in_features) is int and el2.capacity == 4
    upd = insert_connections(el2, torch.tensor([1]), torch.tensor([1]), np.float32(0.5),
                             max_fan_in=np.int64(3))
    assert upd.report.inserted == 1 and float(upd.values[upd.positions[0]]) == 0.5


def test_edgelist_lives_in_formats_and_keeps_its_old_import_paths():
    assert EdgeList.__module__ == "morpho_kernels.formats"
    assert mk.EdgeList is EdgeList and edges_mod.EdgeList is EdgeList


@needs_ext
def test_ext_op_errors_and_opcheck():
    ops = _ext.ops()
    el = EdgeList.from_dense(torch.rand(4, 5) < 0.5, capacity=30)
    with pytest.raises(RuntimeError, match="out of range"):
        ops.edges_insert(el.row_ptr, el.col, torch.tensor([7]), torch.tensor([0]), 5, -1, -1)
    with pytest.raises(RuntimeError, match="must be int64"):
        ops.edges_insert(el.row_ptr.int(), el.col, torch.tensor([0]), torch.tensor([0]), 5, -1,
                         -1)
    insert_connections(el, torch.tensor([0]), torch.tensor([0]))  # registers the fake kernel
    args = (el.row_ptr, el.col, torch.tensor([0, 4, 1]), torch.tensor([3, 0, 0]), 5, 2, -1)
    torch.library.opcheck(torch.ops.morpho.insert_connections.default, args,
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("caps", [(-1, -1), (40, -1), (-1, 30), (35, 35)])
def test_cuda_matches_reference(caps, backend):
    backend("ext")
    g = torch.Generator().manual_seed(5)
    n = 200
    keys = torch.randperm(n * n, generator=g)[:6000]
    el = EdgeList.from_coo(keys % n, keys // n, n, n, capacity=6500)
    src = torch.randint(0, n, (3000,), generator=g)
    dst = torch.randint(0, n, (3000,), generator=g)
    a = _ext.ops().edges_insert(el.row_ptr.cuda(), el.col.cuda(), src.cuda(), dst.cuda(), n,
                                *caps)
    b = reference_graph.insert_connections(el.row_ptr, el.col, src, dst, n,
                                           *(None if c < 0 else c for c in caps))
    for x, y in zip(a, b):
        assert torch.equal(x.cpu(), y)
    empty = EdgeList.empty(n, n).to("cuda")
    upd = insert_connections(empty, src.cuda(), dst.cuda(), 1.0)
    assert upd.edges.nnz == len(set(zip(src.tolist(), dst.tolist())))
