"""BlockSparseLinear under torch.distributed (gloo, 2 CPU processes): a regrow with group= keeps
every data-parallel replica's layout, values and optimizer state identical, equal to a
single-process regrow with the ranks' mean scores; a rank-local regrow makes them diverge (the
hazard the group averaging prevents); the default refuses to guess once distributed is
initialised, before changing anything."""

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from morpho_kernels import BlockSparseLayout
from morpho_kernels.nn import BlockSparseLinear

WORLD = 2
DROP = 3


def _state(layer, opt):
    st = opt.state[layer.values]
    return {"rows": layer.rows.clone(), "cols": layer.cols.clone(),
            "values": layer.values.detach().clone(),
            "exp_avg": st["exp_avg"].clone(), "exp_avg_sq": st["exp_avg_sq"].clone()}


def _train_steps(model, opt, gen, steps):
    for _ in range(steps):
        x = torch.randn(24, 64, generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        torch.manual_seed(rank)  # replicas start apart: DDP must broadcast rank 0's state
        layer = BlockSparseLinear.from_linear(torch.nn.Linear(64, 64), density=0.5,
                                              block_size=16)
        model = DDP(layer)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        _train_steps(model, opt, gen, 3)
        scores = torch.rand(layer.layout.grid, generator=gen)  # rank-local grow scores
        out = {"before": _state(layer, opt), "scores": scores}

        try:  # the default, once distributed is initialised: an error, nothing changed
            layer.regrow(DROP, scores, optimizer=opt)
            out["auto_error"] = None
        except RuntimeError as e:
            out["auto_error"] = str(e)
        out["after_auto"] = _state(layer, opt)

        sub = dist.new_group([0])  # (every rank takes part in creating a group)
        try:  # rank 1 is not in it: refused; rank 0 alone: a rank-local regrow
            copy.deepcopy(layer).regrow(DROP, scores, group=sub)
            out["sub_error"] = None
        except ValueError as e:
            out["sub_error"] = str(e)

        local = copy.deepcopy(layer)
        local.regrow(DROP, scores, group=None)  # rank-local: no collective
        out["local"] = {"rows": local.rows.clone(), "cols": local.cols.clone()}

        slots = layer.regrow(DROP, scores, optimizer=opt, group=dist.group.WORLD)
        out["slots"] = slots.clone()
        out["after"] = _state(layer, opt)
        _train_steps(model, opt, gen, 2)  # training goes on in step
        out["trained"] = _state(layer, opt)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    d = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(d / "init"), str(d)), nprocs=WORLD, join=True)
    return [torch.load(d / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _assert_same(a, b):
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_group_regrow_keeps_replicas_identical(ranks):
    r0, r1 = ranks
    _assert_same(r0["before"], r1["before"])  # DDP kept them in step before the regrow
    assert not torch.equal(r0["scores"], r1["scores"])
    _assert_same(r0["after"], r1["after"])
    torch.testing.assert_close(r0["slots"], r1["slots"], rtol=0, atol=0)
    _assert_same(r0["trained"], r1["trained"])


def test_group_regrow_equals_single_process_regrow_with_mean_scores(ranks):
    r0, r1 = ranks
    b = r0["before"]
    layout = BlockSparseLayout(b["rows"].clone(), b["cols"].clone(), (64, 64), 16)
    values = b["values"].clone()
    mean = (r0["scores"] + r1["scores"]) / 2
    slots = layout.regrow(values, DROP, mean)
    assert torch.equal(slots, r0["slots"])
    assert torch.equal(layout.rows, r0["after"]["rows"])
    assert torch.equal(layout.cols, r0["after"]["cols"])
    torch.testing.assert_close(values, r0["after"]["values"], rtol=0, atol=0)
    for key in ("exp_avg", "exp_avg_sq"):  # moments of the regrown slots reset, others kept
        expect = b[key].clone()
        expect[slots] = 0
        torch.testing.assert_close(r0["after"][key], expect, rtol=0, atol=0)


def test_rank_local_regrow_diverges(ranks):
    """What group= prevents: with each rank's own scores the replicas grow different blocks."""
    r0, r1 = ranks
    keys = [set((r["local"]["rows"] * 4 + r["local"]["cols"]).tolist()) for r in ranks]
    assert keys[0] != keys[1]


def test_default_refuses_under_distributed_and_changes_nothing(ranks):
    for r in ranks:
        assert r["auto_error"] is not None and "group=" in r["auto_error"]
        _assert_same(r["before"], r["after_auto"])


def test_regrow_refuses_a_group_this_rank_is_not_in(ranks):
    assert ranks[0]["sub_error"] is None
    assert ranks[1]["sub_error"] is not None and "not a member" in ranks[1]["sub_error"]


def test_group_checks_without_distributed():
    layer = BlockSparseLinear(32, 32, block_size=16, density=0.5)
    with pytest.raises(RuntimeError, match="not initialised"):
        layer.regrow(1, torch.rand(2, 2), group=object())
    with pytest.raises(ValueError, match="group must be"):
        layer.regrow(1, torch.rand(2, 2), group="world")

    def live():
        return set((layer.rows * 2 + layer.cols).tolist())

    for group in ("auto", None):  # without distributed: both rank-local regrows
        before = live()
        layer.regrow(1, torch.rand(2, 2), group=group)
        assert len(before ^ live()) == 2  # one block dropped, one grown
