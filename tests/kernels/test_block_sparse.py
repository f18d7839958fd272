"""BlockSparseLayout, morpho::block_sparse_linear on every backend, and BlockSparseLinear."""

import math

import pytest
import torch
from conftest import TRITON_DEVICE
from tolerances import assert_matches

import morpho_kernels as mk
from morpho_kernels import BlockSparseLayout, reference
from morpho_kernels.nn import BlockSparseLinear, GraphedRegrow
from morpho_kernels.ops import block_sparse_linear as bs_mod

BLOCKS = list(mk.BLOCK_SIZES)


def _has_ext_kernels() -> bool:
    return mk._ext.status().loaded and hasattr(torch.ops.morpho, "bs_dsd")


def _device(backend_name):
    return TRITON_DEVICE if backend_name == "triton" else "cpu"


def _skip_unavailable(backend_name):
    if backend_name == "ext" and not _has_ext_kernels():
        pytest.skip("extension not built with the block-sparse kernels")


def random_layout(grid, density, block, seed=0, empty_row=None, full_row=None, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    bm = torch.rand(grid, generator=g) < density
    if empty_row is not None:
        bm[empty_row] = False
    if full_row is not None:
        bm[full_row] = True
    return BlockSparseLayout.from_block_mask(bm.to(device), block)


# ----------------------------------------------------------------------------- layout


def _expected_indices(layout):
    rows, cols = layout.rows.tolist(), layout.cols.tolist()
    nbr, nbc = layout.grid
    by_row = sorted(range(len(rows)), key=lambda s: (rows[s], cols[s]))
    by_col = sorted(range(len(rows)), key=lambda s: (cols[s], rows[s]))
    row_ptr = [sum(r < i for r in rows) for i in range(nbr + 1)]
    col_ptr = [sum(c < i for c in cols) for i in range(nbc + 1)]
    return by_row, row_ptr, by_col, col_ptr


def assert_layout_consistent(layout):
    by_row, row_ptr, by_col, col_ptr = _expected_indices(layout)
    assert layout.row_order.tolist() == by_row
    assert layout.row_ptr.tolist() == row_ptr
    assert layout.col_order.tolist() == by_col
    assert layout.col_ptr.tolist() == col_ptr
    for t in layout.tensors():
        assert t.dtype == torch.int32


@pytest.mark.parametrize("block", BLOCKS)
def test_layout_roundtrip(block):
    layout = random_layout((3, 5), 0.5, block, empty_row=0, full_row=2)
    assert_layout_consistent(layout)
    values = torch.randn(layout.capacity, block, block)
    dense = layout.to_dense(values)
    assert dense.shape == (3 * block, 5 * block)
    assert torch.equal(layout.gather(dense), values)
    again = BlockSparseLayout.from_mask(dense, block)
    assert torch.equal(again.block_mask(), layout.block_mask())
    lay2, v2 = BlockSparseLayout.from_dense(dense, block)
    assert torch.equal(lay2.to_dense(v2), dense)
    # by magnitude: the kept blocks are the largest ones
    lay3, v3 = BlockSparseLayout.from_dense(dense, block, density=0.2)
    assert lay3.capacity == round(0.2 * 15)
    norms = dense.reshape(3, block, 5, block).square().sum((1, 3)).flatten()
    kept = norms[lay3.block_mask().flatten()]
    assert kept.min() >= norms[~lay3.block_mask().flatten()].max()


def test_layout_rejects_bad_input():
    with pytest.raises(ValueError, match="block_size"):
        BlockSparseLayout.from_mask(torch.ones(48, 48), 24)
    with pytest.raises(TypeError, match="block_size"):
        BlockSparseLayout.from_mask(torch.ones(48, 48), 16.0)
    with pytest.raises(ValueError, match="multiple of block_size"):
        BlockSparseLayout.from_mask(torch.ones(40, 48), 16)
    with pytest.raises(ValueError, match="rows must lie"):
        BlockSparseLayout(torch.tensor([0, 3]), torch.tensor([0, 0]), (48, 48), 16)
    with pytest.raises(ValueError, match="cols must lie"):
        BlockSparseLayout(torch.tensor([0, 1]), torch.tensor([0, -1]), (48, 48), 16)
    with pytest.raises(ValueError, match="duplicate"):
        BlockSparseLayout(torch.tensor([1, 1]), torch.tensor([2, 2]), (48, 48), 16)
    with pytest.raises(TypeError, match="integer"):
        BlockSparseLayout(torch.tensor([1.0]), torch.tensor([2]), (48, 48), 16)
    layout = BlockSparseLayout.from_block_mask(torch.tensor([[1, 1], [1, 0]]), 16)
    with pytest.raises(ValueError, match="values must have shape"):
        layout.to_dense(torch.randn(layout.capacity + 1, 16, 16))
    with pytest.raises(ValueError, match="live blocks"):
        layout.regrow(torch.zeros(3, 16, 16), 4, torch.rand(2, 2))
    with pytest.raises(ValueError, match="dead blocks"):
        layout.regrow(torch.zeros(3, 16, 16), 2, torch.rand(2, 2))
    with pytest.raises(ValueError, match="grow_scores"):
        layout.regrow(torch.zeros(layout.capacity, 16, 16), 1, torch.rand(3, 2))
    for bad, exc in ((-1, ValueError), (1.0, TypeError), (True, TypeError)):
        with pytest.raises(exc, match=f"drop must be a non-negative int, got {bad!r}"):
            layout.regrow(torch.zeros(layout.capacity, 16, 16), bad, torch.rand(2, 2))
    for bad, exc in ((0, ValueError), (1.5, ValueError), ("0.5", TypeError)):
        with pytest.raises(exc, match=f"density must be a finite number in \\(0, 1\\], got "
                                      f"{bad!r}"):
            BlockSparseLayout.from_dense(torch.ones(32, 32), 16, density=bad)
    for bad, exc in ((8, ValueError), (0, ValueError), (True, TypeError), (16.0, TypeError)):
        with pytest.raises(exc, match=f"block_size must be .*, got {bad!r}"):
            BlockSparseLayout.from_block_mask(torch.ones(2, 2), bad)


def test_layout_empty_and_full():
    empty = BlockSparseLayout.from_block_mask(torch.zeros(2, 3, dtype=torch.bool), 16)
    assert empty.capacity == 0 and empty.row_ptr.tolist() == [0, 0, 0]
    full = BlockSparseLayout.from_block_mask(torch.ones(2, 3, dtype=torch.bool), 16)
    assert full.density() == 1.0
    assert_layout_consistent(full)


def test_regrow_random_sequence_against_set_model():
    """Random prune/grow sequences: the layout equals a Python set model after every change,
    values of kept blocks never move, regrown blocks start at zero."""
    g = torch.Generator().manual_seed(3)
    grid = (6, 7)
    layout = random_layout(grid, 0.4, 16, seed=1)
    values = torch.randn(layout.capacity, 16, 16, generator=g)
    model = {(r, c): values[s].clone() for s, (r, c) in
             enumerate(zip(layout.rows.tolist(), layout.cols.tolist()))}
    for step in range(12):
        k = int(torch.randint(0, 4, (1,), generator=g))
        scores = torch.rand(grid, generator=g)
        if step % 3 == 0:
            scores[0, 0] = float("nan")  # NaN never wins
        norms = {key: float(v.square().sum()) for key, v in model.items()}
        dropped = sorted(norms, key=norms.get)[:k]
        dead = [(r, c) for r in range(grid[0]) for c in range(grid[1]) if (r, c) not in model]
        dead_scores = {key: float(torch.nan_to_num(scores[key], nan=-1.0)) for key in dead}
        grown = sorted(dead, key=lambda key: -dead_scores[key])[:k]
        slots = layout.regrow(values, k, scores)
        assert slots.numel() == k
        for key in dropped:
            del model[key]
        for key in grown:
            model[key] = torch.zeros(16, 16)
        got = {(r, c): values[s] for s, (r, c) in
               enumerate(zip(layout.rows.tolist(), layout.cols.tolist()))}
        assert got.keys() == model.keys(), f"step {step}"
        for key in model:
            assert torch.equal(got[key], model[key])
        assert_layout_consistent(layout)
        # "training" moves the new blocks off zero, so the next drop has no ties
        values[slots] = torch.randn(k, 16, 16, generator=g)
        for s in slots.tolist():
            model[(int(layout.rows[s]), int(layout.cols[s]))] = values[s].clone()


# ----------------------------------------------------------------------------- the op


def make_case(lead, grid, block, density, dtype_bias=True, seed=0, **layout_kw):
    layout = random_layout(grid, density, block, seed=seed, **layout_kw)
    g = torch.Generator().manual_seed(seed + 1)
    n, k = grid[0] * block, grid[1] * block
    x = torch.randn(*lead, k, generator=g, dtype=torch.float64)
    v = torch.randn(layout.capacity, block, block, generator=g, dtype=torch.float64)
    v /= math.sqrt(k * max(density, 0.1))
    b = torch.randn(n, generator=g, dtype=torch.float64) if dtype_bias else None
    grad = torch.randn(*lead, n, generator=g, dtype=torch.float64)
    return layout, x, v, b, grad


def _run(fn, tensors, grad, dtype, device):
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() if t is not None else None
              for t in tensors]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None],
                                grad.to(device=device, dtype=dtype))
    return y, grads


def check_backend(backend_name, lead, grid, block, density, dtype, force, bias=True,
                  **layout_kw):
    device = _device(backend_name)
    layout, x, v, b, grad = make_case(lead, grid, block, density, bias, **layout_kw)
    n = grid[0] * block
    ref = lambda x_, v_, b_=None: reference.block_sparse_linear(x_, v_, layout.rows,  # noqa: E731
                                                                layout.cols, n, b_)
    tensors = (x, v, b) if bias else (x, v)
    truth_y, truth_g = _run(ref, tensors, grad, torch.float64, "cpu")
    ref_y, ref_g = _run(ref, tensors, grad, dtype, "cpu")
    dev_layout = BlockSparseLayout.from_block_mask(layout.block_mask().to(device), block)
    assert torch.equal(dev_layout.rows.cpu(), layout.rows)
    force(backend_name)
    op = lambda x_, v_, b_=None: mk.block_sparse_linear(x_, v_, dev_layout, b_)  # noqa: E731
    y, grads = _run(op, tensors, grad, dtype, device)
    assert bs_mod.DISPATCH.last == backend_name
    assert_matches(y.cpu(), ref_y, truth_y, "y")
    for name, got, r, t in zip(("dx", "dvalues", "dbias"), grads, ref_g, truth_g):
        assert_matches(got.cpu(), r, t, name)


BACKENDS = ["triton", "ext", "reference"]


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_matches_reference_every_block(backend_name, block, backend):
    _skip_unavailable(backend_name)
    # ragged token count, an empty block row and a full one
    check_backend(backend_name, (5,), (3, 4), block, 0.5, torch.float32, backend,
                  empty_row=0, full_row=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_low_precision(backend_name, dtype, backend):
    _skip_unavailable(backend_name)
    check_backend(backend_name, (2, 37), (4, 3), 32, 0.6, dtype, backend, bias=False)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_single_token_and_all_dead_rows(backend_name, backend):
    _skip_unavailable(backend_name)
    check_backend(backend_name, (1,), (2, 2), 16, 0.0, torch.float32, backend, full_row=1)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("block", BLOCKS)
def test_ext_full_tiles_row_chunks_and_threads(block, threads, backend):
    # 133 tokens: full register tiles of every block size, three row chunks (64 rows each, the
    # last ragged), single-row tails; 3 threads split the tasks unevenly (1 thread: in order),
    # so a race or a wrong task split shows as a mismatch in y, dx or dvalues.
    _skip_unavailable("ext")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_backend("ext", (133,), (5, 3), block, 0.6, torch.float32, backend, empty_row=1,
                      full_row=3)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("walk", [{"GROUP_M": 0}, {"GROUP_M": 1}, {"GROUP_M": 8},
                                  {"BY_ROW": 0, "SPLIT_M": 1}, {"BY_ROW": 1, "SPLIT_M": 1},
                                  {"BY_ROW": 1, "SPLIT_M": 4}, {"BY_ROW": 1, "SPLIT_M": 0}],
                         ids=str)
def test_triton_every_program_order_and_token_split(walk, dtype, backend, monkeypatch):
    """Each tuned walk of the kernels (dsd tile order on the persistent grid; sdd slot order
    and token split with fp32 atomics, SPLIT_M=0 the launch's own choice) against the
    reference, on a layout whose slots are out of row order (after regrows) and 600 tokens: 10
    tiles of 64 over 3 persistent programs, so GROUP_M=8 leaves a ragged last group, SPLIT_M=4
    a ragged last chunk."""
    from morpho_kernels.triton import block_sparse as tbs
    # 3 programs on the GPU too (its 132 SMs would give each tile its own program)
    monkeypatch.setattr(tbs, "num_sms", lambda device: 3)
    g = torch.Generator().manual_seed(5)
    block, grid = 16, (5, 6)
    layout = random_layout(grid, 0.5, block, seed=2, empty_row=1, full_row=3)
    vals = torch.randn(layout.capacity, block, block, generator=g, dtype=torch.float64)
    for _ in range(3):
        layout.regrow(vals, 3, torch.rand(grid, generator=g))
        vals += torch.randn(vals.shape, generator=g, dtype=torch.float64)
    assert layout.row_order.tolist() != sorted(layout.row_order.tolist())
    n, k = grid[0] * block, grid[1] * block
    x = torch.randn(600, k, generator=g, dtype=torch.float64) / math.sqrt(k)
    bias = torch.randn(n, generator=g, dtype=torch.float64)
    grad = torch.randn(600, n, generator=g, dtype=torch.float64)
    ref = lambda x_, v_, b_: reference.block_sparse_linear(x_, v_, layout.rows,  # noqa: E731
                                                           layout.cols, n, b_)
    truth_y, truth_g = _run(ref, (x, vals, bias), grad, torch.float64, "cpu")
    ref_y, ref_g = _run(ref, (x, vals, bias), grad, dtype, "cpu")
    dev_layout = BlockSparseLayout(layout.rows.to(TRITON_DEVICE), layout.cols.to(TRITON_DEVICE),
                                   layout.shape, block)  # the same shuffled slots
    backend("triton")
    kernel = "dsd" if "GROUP_M" in walk else "sdd"
    op = lambda x_, v_, b_: mk.block_sparse_linear(x_, v_, dev_layout, b_)  # noqa: E731
    with tbs.forced_config(kernel, **walk):
        y, grads = _run(op, (x, vals, bias), grad, dtype, TRITON_DEVICE)
        chosen = (tbs._bs_dsd_kernel if kernel == "dsd" else tbs._bs_sdd_kernel).best_config
    assert all(chosen.kwargs[name] == v for name, v in walk.items())
    assert bs_mod.DISPATCH.last == "triton"
    assert_matches(y.cpu(), ref_y, truth_y, "y")
    for name, got, r, t in zip(("dx", "dvalues", "dbias"), grads, ref_g, truth_g):
        assert_matches(got.cpu(), r, t, name)


def test_forced_config_rejects_unknown_kernel_and_names():
    from morpho_kernels.triton import block_sparse as tbs
    with pytest.raises(ValueError, match="kernel must be one of"):
        with tbs.forced_config("gemm", GROUP_M=1):
            pass
    with pytest.raises(ValueError, match=r"sdd configs have no \['SPLITM'\]"):
        with tbs.forced_config("sdd", SPLITM=4):
            pass
    with pytest.raises(ValueError, match=r"dsd configs have no \['BLOCK_N'\]"):
        with tbs.candidate_configs("dsd", {"GROUP_M": 1}, {"BLOCK_N": 64}):
            pass
    assert tbs._FORCED == {}
    # candidate_configs keeps the configs matching any of its dicts (the GPU script's 2-3)
    keep = tbs._PRUNERS["dsd"]
    with tbs.candidate_configs("dsd", {"GROUP_M": 1}, {"GROUP_M": 0}):
        assert keep(tbs._bs_dsd_kernel.configs, {}, B=16)[0].kwargs["GROUP_M"] in (0, 1)
        assert tbs._FORCED["dsd"] == [{"GROUP_M": 1}, {"GROUP_M": 0}]
    assert tbs._FORCED == {}


def test_deterministic_mode_leaves_out_the_atomic_token_split(backend, monkeypatch):
    """Under torch.use_deterministic_algorithms the dW kernel never splits the tokens (its fp32
    atomics sum in a varying order): asking for a split finds no config, and the launch's own
    choice (SPLIT_M=0), which splits these 600 tokens in two on 40 SMs, keeps one chunk."""
    from morpho_kernels.triton import block_sparse as tbs
    monkeypatch.setattr(tbs, "num_sms", lambda device: 40)  # on the GPU too
    backend("triton")
    layout, x, v, _, grad = make_case((600,), (2, 2), 16, 0.75, False, full_row=0)
    assert tbs.auto_split(layout.capacity, 600, 64, 40, False) == 2
    x, v = (t.float().to(TRITON_DEVICE).requires_grad_() for t in (x, v))
    dev = BlockSparseLayout.from_block_mask(layout.block_mask().to(TRITON_DEVICE), 16)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with tbs.forced_config("sdd", SPLIT_M=4), pytest.raises(ValueError, match="no sdd"):
            mk.block_sparse_linear(x, v, dev).backward(grad.float().to(TRITON_DEVICE))
        with tbs.forced_config("sdd", BY_ROW=1):
            mk.block_sparse_linear(x, v, dev).backward(grad.float().to(TRITON_DEVICE))
            assert tbs._bs_sdd_kernel.best_config.kwargs["SPLIT_M"] == 0
            assert tbs.last_sdd_split == 1
    finally:
        torch.use_deterministic_algorithms(prev)


@pytest.mark.parametrize("tma", ["1", "0"])
def test_triton_tma_and_pointer_paths(tma, backend, monkeypatch):
    """bf16 runs through TMA descriptors (A, V of dsd; dY, x of sdd) unless MORPHO_TMA=0, which
    keeps the pointer path; both match the reference. fp32 always takes the pointer path."""
    from morpho_kernels.triton import block_sparse as tbs
    monkeypatch.setenv("MORPHO_TMA", tma)
    made = []
    real = tbs._descriptor
    monkeypatch.setattr(tbs, "_descriptor", lambda t, b: made.append(t.shape) or real(t, b))
    check_backend("triton", (70,), (3, 4), 32, 0.5, torch.bfloat16, backend, empty_row=0,
                  full_row=2)
    # forward (x, V), dX (dY, V), dW (dY, x): two descriptors per launch
    assert len(made) == (6 if tma == "1" else 0)
    # what the benchmarks record: each kernel's latest path
    assert tbs.last_tma == dict.fromkeys(("dsd fwd", "dsd dX", "sdd"), tma == "1")
    made.clear()
    check_backend("triton", (5,), (2, 2), 16, 0.5, torch.float32, backend, full_row=0)
    assert made == []
    assert tbs.last_tma == dict.fromkeys(("dsd fwd", "dsd dX", "sdd"), False)


def test_triton_block_lists_longer_than_maxnnz_and_one_program(backend, monkeypatch):
    """Output blocks whose block list exceeds MAXNNZ are walked in chunks (here MAXNNZ = 2 and
    a full row / column of 5 / 4 blocks: three and two chunks), and one persistent program
    walks every tile; both directions and dW against the reference."""
    from morpho_kernels.triton import block_sparse as tbs
    monkeypatch.setattr(tbs, "_MAXNNZ_CAP", 2)
    asked = []  # one program on the GPU too, not its SM count
    monkeypatch.setattr(tbs, "num_sms", lambda device: asked.append(device) or 1)
    assert tbs.maxnnz(5, 100) == 2
    for dtype in (torch.float32, torch.bfloat16):
        check_backend("triton", (130,), (4, 5), 16, 0.6, dtype, backend, empty_row=1,
                      full_row=2)
    assert asked  # every launch sized its grid through num_sms


def test_maxnnz_bound_needs_no_device_read():
    from morpho_kernels.triton import block_sparse as tbs
    assert tbs.maxnnz(64, 410) == 32  # 8192² b128: every block column, capped at one warp
    assert tbs.maxnnz(5, 100) == 8 and tbs.maxnnz(64, 3) == 4 and tbs.maxnnz(1, 1) == 2
    assert tbs.maxnnz(4, 0) == 2


def test_triton_bias_gradient_without_values_gradient_and_no_live_block(backend):
    """dbias comes from dW's launch when dW is computed; frozen values take torch's column
    sum, and a layout with no live block still gets its bias gradient (db programs only)."""
    backend("triton")
    layout, x, v, b, grad = make_case((37,), (3, 2), 16, 0.5, full_row=0)
    dev = BlockSparseLayout.from_block_mask(layout.block_mask(), 16)
    xs, bs = x.float().requires_grad_(), b.float().requires_grad_()
    mk.block_sparse_linear(xs, v.float(), dev, bs).backward(grad.float())
    torch.testing.assert_close(bs.grad, grad.float().sum(0), atol=1e-5, rtol=1e-5)
    empty = BlockSparseLayout.from_block_mask(torch.zeros(3, 2, dtype=torch.bool), 16)
    ve = torch.zeros(0, 16, 16, requires_grad=True)
    xs, bs = x.float().requires_grad_(), b.float().requires_grad_()
    y = mk.block_sparse_linear(xs, ve, empty, bs)
    torch.testing.assert_close(y, b.float().expand(37, 48))
    y.backward(grad.float())
    assert bs_mod.DISPATCH.last == "triton"
    torch.testing.assert_close(bs.grad, grad.float().sum(0), atol=1e-5, rtol=1e-5)
    assert torch.equal(xs.grad, torch.zeros_like(xs))


def test_fp32_workspace_only_when_a_token_split_may_run():
    """bf16 / fp16 dW allocates its fp32 workspace only when the autotuner may pick a split
    (the same pruning as the launch; the default SPLIT_M=0 may split): never under
    deterministic mode, nor for an unsplit walk."""
    from morpho_kernels.triton import block_sparse as tbs
    assert tbs.workspace_needed(16, 0)  # the interpreter keeps the launch-chosen split
    assert not tbs.workspace_needed(16, 1)
    with tbs.forced_config("sdd", SPLIT_M=4):
        assert tbs.workspace_needed(16, 0)
        with pytest.raises(ValueError, match="no sdd"):
            tbs.workspace_needed(16, 1)
    with tbs.forced_config("sdd", SPLIT_M=1):
        assert not tbs.workspace_needed(32, 0)
    with tbs.forced_config("sdd", BY_ROW=1):
        assert not tbs.workspace_needed(32, 1)


def test_fp32_workspace_decision_on_the_tuned_path(monkeypatch):
    """The pruning a GPU launch sees (all configs, autotuning on): split configs are
    candidates, so bf16 allocates the workspace, except under deterministic mode; with
    MORPHO_AUTOTUNE=0 the first config (SPLIT_M=0, the launch's choice) may split too."""
    from morpho_kernels.triton import block_sparse as tbs
    monkeypatch.setattr(tbs, "INTERPRET", False)
    monkeypatch.setenv("MORPHO_AUTOTUNE", "1")
    assert tbs.workspace_needed(16, 0) and tbs.workspace_needed(128, 0)
    assert not tbs.workspace_needed(16, 1)
    monkeypatch.setenv("MORPHO_AUTOTUNE", "0")
    assert tbs.workspace_needed(16, 0) and not tbs.workspace_needed(16, 1)
    # a split chosen by an earlier tuning is launched from the cache: the workspace is needed
    with tbs.forced_config("sdd", SPLIT_M=1):
        assert not tbs.workspace_needed(16, 0)
        split = next(c for c in tbs._bs_sdd_kernel.configs if c.kwargs["SPLIT_M"] > 1)
        monkeypatch.setitem(tbs._bs_sdd_kernel.cache, ("an earlier key",), split)
        assert tbs.workspace_needed(16, 0)


def test_auto_split_fills_the_waves():
    """SPLIT_M=0's choice: the issue's 410 dW tiles on 132 SMs fill 78% of four waves unsplit,
    93% of ten split in three; enough tiles need no split; chunks stay ≥ 4 steps; never under
    deterministic mode."""
    from morpho_kernels.triton.block_sparse import auto_split
    assert auto_split(410, 8192, 64, 132, False) == 3
    assert auto_split(2048, 8192, 64, 132, False) == 1  # 50%: 97% of 16 waves
    assert auto_split(410, 8192, 64, 132, True) == 1
    assert auto_split(10, 300, 64, 132, False) == 1  # 150-token chunks would be < 4 steps
    assert auto_split(10, 8192, 64, 132, False) == 8  # the best filling within 8


@pytest.mark.parametrize("backend_name", ["reference", "ext"])
def test_gradcheck_float64(backend_name, backend):
    _skip_unavailable(backend_name)
    backend(backend_name)
    layout, x, v, b, _ = make_case((3,), (2, 3), 16, 0.5, full_row=0)
    x, v, b = (t.requires_grad_() for t in (x, v, b))
    assert torch.autograd.gradcheck(lambda *a: mk.block_sparse_linear(a[0], a[1], layout, a[2]),
                                    (x, v, b))


def test_stride0_grad_output(backend):
    """`.sum().backward()` hands the backward a stride-0 expanded gradient."""
    backend("triton")
    device = TRITON_DEVICE
    layout, x, v, b, _ = make_case((4,), (2, 2), 32, 0.75, full_row=1)
    dev_layout = BlockSparseLayout.from_block_mask(layout.block_mask().to(device), 32)
    xs, vs = (t.float().to(device).requires_grad_() for t in (x, v))
    mk.block_sparse_linear(xs, vs, dev_layout).sum().backward()
    xr, vr = (t.float().requires_grad_() for t in (x, v))
    reference.block_sparse_linear(xr, vr, layout.rows, layout.cols, 64).sum().backward()
    torch.testing.assert_close(xs.grad.cpu(), xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vs.grad.cpu(), vr.grad, atol=1e-4, rtol=1e-4)


def test_public_function_rejects_bad_input():
    layout = random_layout((2, 2), 0.5, 16, full_row=0)
    v = torch.randn(layout.capacity, 16, 16)
    x = torch.randn(3, 32)
    with pytest.raises(TypeError, match="layout"):
        mk.block_sparse_linear(x, v, "layout")
    with pytest.raises(ValueError, match="values shape"):
        mk.block_sparse_linear(x, v[:, :8], layout)
    with pytest.raises(ValueError, match="last dim"):
        mk.block_sparse_linear(torch.randn(3, 31), v, layout)
    with pytest.raises(ValueError, match="bias shape"):
        mk.block_sparse_linear(x, v, layout, torch.randn(31))
    with pytest.raises(TypeError, match="values dtype"):
        mk.block_sparse_linear(x, v.double(), layout)


def test_forced_unavailable_backend_raises(monkeypatch):
    monkeypatch.setenv("MORPHO_BACKEND", "triton")
    if TRITON_DEVICE == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layout = random_layout((2, 2), 0.5, 16, full_row=0)
    v = torch.randn(layout.capacity, 16, 16, dtype=torch.float64)
    with pytest.raises(mk.BackendUnavailableError, match="block_sparse_linear"):
        mk.block_sparse_linear(torch.randn(3, 32, dtype=torch.float64), v, layout)


@pytest.mark.parametrize("backend_name", ["reference", "ext"])
def test_opcheck(backend_name, backend):
    _skip_unavailable(backend_name)
    backend(backend_name)
    layout, x, v, b, grad = make_case((3,), (2, 3), 16, 0.5, full_row=0)
    x, v, b, grad = (t.float() for t in (x, v, b, grad))
    idx = layout.tensors()
    torch.library.opcheck(torch.ops.morpho.block_sparse_linear.default,
                          (x.requires_grad_(), v.requires_grad_(), *idx, 32, b))
    torch.library.opcheck(torch.ops.morpho.block_sparse_linear_backward.default,
                          (grad, x.detach(), v.detach(), *idx, True, True, True))


# ----------------------------------------------------------------------------- the module


def test_module_from_linear_to_linear_and_padding():
    torch.manual_seed(0)
    lin = torch.nn.Linear(100, 70)
    with pytest.raises(ValueError, match="pad=True"):
        BlockSparseLinear.from_linear(lin, density=0.5, block_size=16)
    with pytest.raises(ValueError, match="exactly one"):
        BlockSparseLinear.from_linear(lin, block_size=16, pad=True)
    full = BlockSparseLinear.from_linear(lin, mask=torch.ones(70, 100), block_size=16, pad=True)
    x = torch.randn(4, 100)
    torch.testing.assert_close(full(x), lin(x))
    half = BlockSparseLinear.from_linear(lin, density=0.5, block_size=16, pad=True)
    torch.testing.assert_close(half(x), half.to_linear()(x))
    assert abs(half.density() - 0.5) < 0.06
    # an element mask: blocks with any live element kept, masked elements zeroed
    mask = torch.zeros(70, 100)
    mask[:16, :16] = 1
    mask[40, 90] = 1
    part = BlockSparseLinear.from_linear(lin, mask=mask, block_size=16, pad=True)
    assert part.values.shape[0] == 2
    torch.testing.assert_close(part.to_linear().weight, lin.weight * mask)


def test_module_checks_its_arguments():
    cases = [({"in_features": 0}, ValueError, "in_features must be a positive int, got 0"),
             ({"out_features": 32.0}, TypeError, "out_features must be a positive int"),
             ({"density": 0}, ValueError, "density must be a finite number in \\(0, 1\\]"),
             ({"density": True}, TypeError, "density must be a finite number"),
             ({"block_size": 24}, ValueError, "block_size must be one of \\(16, 32, 64, 128\\)"),
             ({"block_size": 0}, ValueError, "block_size must be one of"),
             ({"block_size": 16.0}, TypeError, "block_size must be an int, got 16.0")]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            BlockSparseLinear(**{"in_features": 64, "out_features": 32, **kwargs})
    with pytest.raises(ValueError, match="block_size must be one of"):
        BlockSparseLinear.from_linear(torch.nn.Linear(64, 32), density=0.5, block_size=0)
    np = pytest.importorskip("numpy")
    m = BlockSparseLinear(np.int64(64), np.int32(32), block_size=np.int64(16),
                          density=np.float32(0.5))
    assert (m.in_features, m.out_features, m.block_size) == (64, 32, 16)
    assert all(type(v) is int for v in (m.in_features, m.out_features, m.block_size))
    assert m.regrow(np.int64(1), torch.rand(m.layout.grid)).shape == (1,)


def test_module_rejects_wrong_input_width():
    for pad, n_in in ((False, 64), (True, 60)):
        m = BlockSparseLinear(n_in, 32, block_size=16, density=0.5, pad=pad)
        with pytest.raises(ValueError, match="in_features"):
            m(torch.randn(3, n_in - 4))


def test_module_state_dict_roundtrip():
    m = BlockSparseLinear(64, 32, block_size=16, density=0.5)
    m.regrow(1, torch.rand(m.layout.grid))
    m2 = BlockSparseLinear(64, 32, block_size=16, density=0.5)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(3, 64)
    torch.testing.assert_close(m2(x), m(x))
    assert torch.equal(m2.layout.block_mask(), m.layout.block_mask())


@pytest.mark.parametrize("opt_name", ["adam", "adamw", "sgd"])
def test_regrow_resets_optimizer_state(opt_name):
    torch.manual_seed(0)
    m = BlockSparseLinear(64, 64, block_size=16, density=0.5)
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=1e-2),
           "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
           "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)}[opt_name](m.parameters())
    x = torch.randn(8, 64)
    for _ in range(2):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    state = opt.state[m.values]
    keys = [k for k, v in state.items() if torch.is_tensor(v) and v.shape == m.values.shape]
    assert keys, "optimizer keeps per-value state"
    before = {k: state[k].clone() for k in keys}
    scores = torch.rand(m.layout.grid)
    slots = m.regrow(3, scores, optimizer=opt)
    kept = torch.ones(m.values.shape[0], dtype=torch.bool)
    kept[slots] = False
    for k in keys:
        assert (state[k][slots] == 0).all()
        assert torch.equal(state[k][kept], before[k][kept])
    assert (m.values[slots] == 0).all()
    # training continues through the new layout, and matches the dense equivalent
    opt.zero_grad()
    m(x).square().mean().backward()
    opt.step()
    torch.testing.assert_close(m(x), m.to_linear()(x))


def test_module_autocast_and_compile():
    torch.manual_seed(0)
    m = BlockSparseLinear(64, 32, block_size=16, density=0.5)
    x = torch.randn(5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), m(x), atol=5e-2, rtol=5e-2)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), m(x))
    m.regrow(2, torch.rand(m.layout.grid))  # in-place layout change: same graph stays valid
    torch.testing.assert_close(compiled(x), m(x))


def test_graphed_regrow_rejects_what_it_cannot_capture():
    m = BlockSparseLinear(64, 64, block_size=16, density=0.5)  # 8 live of 16 blocks
    with pytest.raises(ValueError, match="needs a CUDA layer"):
        GraphedRegrow(m, 2)
    with pytest.raises(TypeError, match="BlockSparseLinear"):
        GraphedRegrow(torch.nn.Linear(4, 4), 2)
    for bad, exc in ((0, ValueError), (9, ValueError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(exc, match=f"drop must be an int in \\[1, 8\\], got {bad}"):
            GraphedRegrow(m, bad)
    with pytest.raises(ValueError, match="does not hold layer.values"):
        GraphedRegrow(m, 2, optimizer=torch.optim.Adam([torch.nn.Parameter(torch.ones(1))]))
    with pytest.raises(ValueError, match="no state for layer.values"):
        GraphedRegrow(m, 2, optimizer=torch.optim.Adam(m.parameters()))
    # plain SGD keeps no state: accepted up to the device check
    with pytest.raises(ValueError, match="needs a CUDA layer"):
        GraphedRegrow(m, 2, optimizer=torch.optim.SGD(m.parameters(), lr=0.1))


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("block", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_gpu_large_shapes(block, dtype, backend):
    check_backend("triton", (1000,), (8, 6), block, 0.4, dtype, backend, empty_row=1,
                  full_row=3)


@pytest.mark.gpu
def test_gpu_regrow_no_host_sync():
    layout = random_layout((16, 16), 0.3, 64, device="cuda")
    values = torch.randn(layout.capacity, 64, 64, device="cuda")
    scores = torch.rand(16, 16, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        layout.regrow(values, 5, scores)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_layout_consistent(layout)


@pytest.mark.gpu
@pytest.mark.parametrize("opt_name", ["adamw", "sgd"])
def test_gpu_graphed_regrow_equals_eager(opt_name):
    """Replays of the captured regrow change the layout, the values and the optimizer state
    exactly as eager regrows with the same scores do, and capture itself changes nothing."""
    torch.manual_seed(0)
    make_opt = {"adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
                "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)}[opt_name]
    eager = BlockSparseLinear(512, 256, block_size=32, density=0.3, device="cuda")
    graphed = BlockSparseLinear(512, 256, block_size=32, density=0.3, device="cuda")
    opts = [make_opt(m.parameters()) for m in (eager, graphed)]
    x = torch.randn(16, 256, device="cuda")

    def train_eager_and_mirror():
        # the graphed layer receives eager's tensors in place (the graph keeps its addresses),
        # so the comparison never depends on two backward passes agreeing bit for bit
        for m, o in zip((eager, graphed), opts):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
        sd = graphed.state_dict()
        for k, v in eager.state_dict().items():
            sd[k].copy_(v)
        st0, st1 = opts[0].state[eager.values], opts[1].state[graphed.values]
        for k, v in st0.items():
            if torch.is_tensor(v):
                st1[k].copy_(v)

    train_eager_and_mirror()
    before = {k: v.clone() for k, v in graphed.state_dict().items()}
    regrow = GraphedRegrow(graphed, 7, optimizer=opts[1])
    for k, v in graphed.state_dict().items():
        assert torch.equal(v, before[k]), f"capture changed {k}"
    for step in range(4):
        scores = torch.rand(eager.layout.grid, device="cuda")
        s_eager = eager.regrow(7, scores, optimizer=opts[0])
        s_graph = regrow(scores)
        assert torch.equal(s_eager, s_graph)
        for k, v in eager.state_dict().items():
            assert torch.equal(v, graphed.state_dict()[k]), f"step {step}: {k} differs"
        st0, st1 = opts[0].state[eager.values], opts[1].state[graphed.values]
        for k, v in st0.items():
            if torch.is_tensor(v) and v.shape == eager.values.shape:
                assert torch.equal(v, st1[k]), f"step {step}: optimizer {k} differs"
        assert_layout_consistent(graphed.layout)
        train_eager_and_mirror()
    torch.testing.assert_close(graphed(x), graphed.to_linear()(x))
