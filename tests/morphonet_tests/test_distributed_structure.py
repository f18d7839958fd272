"""Structure decisions under data parallelism (torch.distributed, gloo, 2 CPU processes):
MorphoTrainer's pruning, Structure Net's growth and SparseLinear.grow / grow_top with group=
keep every replica's structure, weights and optimizer state bit-identical while each rank
trains on its own data; the same decisions taken rank-locally on per-rank data make the
replicas diverge (the hazard group= prevents); the default refuses to guess under more than
one rank."""

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from morpho_kernels.nn import SparseLinear
from morphonet import make_blobs
from morphonet.growth.extrema import ExtremaConfig, ExtremaDetector
from morphonet.growth.router import RouterConfig
from morphonet.growth.scheduler import SchedulerConfig
from morphonet.growth.trainer import create_multi_scale_network
from morphonet.loop import DataParallel, TrainLoop, rank_shard, shuffled_batches
from morphonet.masks import MorphoConfig, MorphoNetMLP, MorphoTrainer

WORLD = 2
TIMING = ("seconds", "bookkeeping_s")  # wall-clock figures: never equal across processes


def _mlp():
    cfg = MorphoConfig(input_dim=20, n_classes=5, hidden_dims=[24, 12], epochs=5,
                       warmup_epochs=1, target_sparsity=0.6, batch_size=20, seed=0,
                       device="cpu")
    return MorphoNetMLP(cfg)


def _opt_state(opt):
    return {f"{i}.{k}": v.clone() for i, st in opt.state_dict()["state"].items()
            for k, v in st.items() if isinstance(v, torch.Tensor)}


def _morpho(rank, out):
    x, y = make_blobs(n_samples=240, n_features=20, n_classes=5, spread=2.0, seed=0)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    torch.manual_seed(rank)  # replicas start apart: DataParallel broadcasts rank 0's
    model = _mlp()
    tr = MorphoTrainer(model, log=lambda s: None)
    try:  # the default under 2 ranks: refused before anything changes
        tr.train(x[:200], y[:200], x[200:], y[200:], verbose=False)
        out["morpho_auto"] = None
    except RuntimeError as e:
        out["morpho_auto"] = str(e)
    out["morpho_untouched"] = model.sparsity() == 0.0 and not tr.weight_opt.state
    stats = tr.train(x[:200], y[:200], x[200:], y[200:], verbose=False,
                     group=dist.group.WORLD)
    out["morpho"] = {"model": copy.deepcopy(model.state_dict()),
                     "weight_opt": _opt_state(tr.weight_opt),
                     "mask_opt": _opt_state(tr.mask_opt)}
    out["morpho_stats"] = {k: stats[k] for k in ("loss_history", "sparsity_history",
                                                  "val_acc_history", "best_epoch")}
    out["morpho_shard"] = rank_shard(x[:200], y[:200], dist.group.WORLD)[1].clone()
    # the hazard: the same recipe with rank-local decisions on each rank's own data
    torch.manual_seed(0)
    local = _mlp()
    xs, ys = rank_shard(x[:200], y[:200], dist.group.WORLD)
    MorphoTrainer(local, log=lambda s: None).train(xs, ys, x[200:], y[200:], verbose=False,
                                                   group=None)
    out["morpho_local"] = [m.pruned_units().clone() for m in local.masked_layers()]


def _growth_net(group):
    sched = SchedulerConfig(window_steps=2, spike_threshold=1e-6, credits_per_spike=10,
                            growth_threshold=10, cooldown_steps=3)
    return create_multi_scale_network(
        12, [16, 10], 3, sparsity=0.08, scheduler=sched,
        extrema=ExtremaConfig(rule="saturation", input_high=1.0, window_batches=2,
                              stride_steps=1, min_share=0.3),
        router=RouterConfig(bundle=(2, 2, 2)), seed=0, group=group)


def _growth_data(rank):
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    x = torch.randn(96, 12, generator=g) * 1.5
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _growth_state(model, opt):
    net = model.network
    return {"model": copy.deepcopy(net.state_dict()), "opt": _opt_state(opt),
            "log": [{k: v for k, v in g.items()} for g in model.growth_log],
            "history": [{k: v for k, v in h.items() if k not in TIMING}
                        for h in model.history]}


def _growth(rank, out):
    x, y = _growth_data(rank)
    try:
        _growth_net("auto")
        out["grow_auto"] = None
    except RuntimeError as e:
        out["grow_auto"] = str(e)
    for name, group in (("grow", dist.group.WORLD), ("grow_local", None)):
        torch.manual_seed(0)
        model = _growth_net(group)
        with torch.no_grad():  # replicas start apart: the first epoch broadcasts rank 0's
            for p in model.parameters():
                p.add_(0.01 * rank)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(7)
        crit = torch.nn.CrossEntropyLoss()
        for ep in range(3):
            batches = shuffled_batches(x, y, 16, gen)
            if group is not None:
                model.train_epoch(batches, opt, crit, ep)
            elif not model.growth_log:  # gradients averaged, growth on each rank's own data:
                # stop at the first growth event (replicas of different shapes could not
                # average their gradients any more)
                TrainLoop(model, opt, loss_fn=crit, select=None,
                          hooks=[DataParallel(dist.group.WORLD), model.growth_hook]
                          ).run_epoch(_until_growth(model, batches), ep)
        out[name] = _growth_state(model, opt)


def _until_growth(model, batches):
    for b in batches:
        if model.growth_log:
            return
        yield b


def _sparse(rank, out):
    torch.manual_seed(0)
    layer = SparseLinear(16, 12, density=0.2)
    start = copy.deepcopy(layer)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(200 + rank)
    x = torch.randn(10, 16, generator=g)
    layer.keep_for_growth = True
    loss = layer(x).square().mean()
    loss.backward()
    for p in layer.parameters():  # ordinary data parallelism: the step on the mean gradient
        dist.all_reduce(p.grad)
        p.grad.div_(WORLD)
    opt.step()
    out["sparse_start"] = start.state_dict()
    out["sparse_x"], out["sparse_dy"] = layer._x.clone(), layer._dy.clone()
    try:
        layer.grow_top(5)
        out["sparse_auto"] = None
    except RuntimeError as e:
        out["sparse_auto"] = str(e)
    local = copy.deepcopy(layer)
    local.grow_top(5, group=None)  # rank-local ranking of rank-local gradients
    out["sparse_local"] = local.edges.to_dense().clone()
    rep = layer.grow_top(5, optimizer=opt, group=dist.group.WORLD)
    out["sparse_inserted"] = rep.inserted
    out["sparse"] = {"state": copy.deepcopy(layer.state_dict()), "opt": _opt_state(opt)}
    try:  # explicit edges that differ between ranks: refused on every rank, nothing changed
        layer.grow(torch.tensor([rank]), torch.tensor([0]), group=dist.group.WORLD)
        out["sparse_differ"] = None
    except RuntimeError as e:
        out["sparse_differ"] = str(e)
    out["sparse_after_differ"] = layer.edges.to_dense().clone()


def _extrema(rank, out):
    g = torch.Generator().manual_seed(300 + rank)
    acts = [[torch.randn(8, 5, generator=g), torch.tanh(2 * torch.randn(8, 6, generator=g)),
             torch.randn(8, 3, generator=g)] for _ in range(2)]
    det = ExtremaDetector("tanh", ExtremaConfig(input_high=1.0))
    for a in acts:
        det.update(a)
    out["extrema_acts"] = acts
    out["extrema_merged"] = [tuple(t.clone() for t in st) for st in det.combined(dist.group.WORLD)]


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    out = {}
    try:
        for part in (_morpho, _growth, _sparse, _extrema):
            part(rank, out)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    d = tmp_path_factory.mktemp("dist_structure")
    mp.spawn(_worker, args=(str(d / "init"), str(d)), nprocs=WORLD, join=True)
    return [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _same(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs between ranks"


# ---------------------------------------------------------------------------- MorphoTrainer


def test_morpho_trainer_replicas_stay_bit_identical(ranks):
    r0, r1 = ranks
    assert not torch.equal(r0["morpho_shard"], r1["morpho_shard"])  # each rank its own rows
    for key in ("model", "weight_opt", "mask_opt"):
        _same(r0["morpho"][key], r1["morpho"][key], key)
    assert r0["morpho_stats"] == r1["morpho_stats"]  # losses averaged, validation equal
    assert r0["morpho_stats"]["sparsity_history"][-1] >= 0.58  # pruning happened
    assert len(set(r0["morpho_stats"]["sparsity_history"])) > 2  # over several epochs


def test_morpho_trainer_rank_local_pruning_diverges(ranks):
    """What group= prevents: rank-local training and pruning on per-rank data."""
    a, b = (r["morpho_local"] for r in ranks)
    assert any(not torch.equal(p, q) for p, q in zip(a, b))


def test_morpho_trainer_refuses_to_guess_under_distributed(ranks):
    for r in ranks:
        assert r["morpho_auto"] is not None and "group=" in r["morpho_auto"]
        assert r["morpho_untouched"]


# ---------------------------------------------------------------------------- Structure Net


def test_growth_replicas_stay_bit_identical(ranks):
    r0, r1 = ranks
    g0, g1 = r0["grow"], r1["grow"]
    assert len(g0["log"]) >= 1 and sum(e["connections_added"] for e in g0["log"]) > 0
    _same(g0["model"], g1["model"], "network")
    _same(g0["opt"], g1["opt"], "optimizer")
    assert g0["log"] == g1["log"]
    assert g0["history"] == g1["history"]


def test_rank_local_growth_diverges(ranks):
    """Gradients averaged but growth decided on each rank's own extrema and gradients: the
    replicas grow different edges."""
    a, b = (r["grow_local"] for r in ranks)
    assert len(a["log"]) >= 1
    keys = [k for k in a["model"] if k.endswith(".col") or k.endswith(".row_ptr")]
    assert any(a["model"][k].shape != b["model"][k].shape
               or not torch.equal(a["model"][k], b["model"][k]) for k in keys)


def test_growth_refuses_to_guess_under_distributed(ranks):
    for r in ranks:
        assert r["grow_auto"] is not None and "group=" in r["grow_auto"]


def test_extrema_merge_over_ranks_equals_one_window_of_all_batches(ranks):
    det = ExtremaDetector("tanh", ExtremaConfig(input_high=1.0))
    for r in ranks:
        for a in r["extrema_acts"]:
            det.update(a)
    want = det.combined()
    for r in ranks:
        for st, w in zip(r["extrema_merged"], want):
            for name, got, exp in zip(w._fields, st, w):
                if name == "mean":  # a sum of per-rank sums: the same up to rounding
                    torch.testing.assert_close(got, exp, rtol=1e-6, atol=1e-7)
                else:
                    assert torch.equal(got, exp), name


# ---------------------------------------------------------------------------- SparseLinear


def test_grow_top_keeps_replicas_identical(ranks):
    r0, r1 = ranks
    assert r0["sparse_inserted"] == 5
    _same(r0["sparse"]["state"], r1["sparse"]["state"], "layer")
    _same(r0["sparse"]["opt"], r1["sparse"]["opt"], "optimizer")


def test_grow_top_with_group_equals_one_process_with_the_mean_gradient(ranks):
    """The group's choice is a single process's choice on the mean (global-batch) gradient."""
    layer = SparseLinear(16, 12, density=0.2)
    layer.load_state_dict(ranks[0]["sparse_start"])
    g = sum(r["sparse_dy"].t() @ r["sparse_x"] for r in ranks) / WORLD  # (out, in)
    layer.grow_top(5, scores=g.abs(), group=None)
    got = SparseLinear(16, 12, density=0.2)
    got.load_state_dict(ranks[0]["sparse"]["state"])
    assert torch.equal(layer.edges.to_dense(), got.edges.to_dense())


def test_rank_local_grow_top_diverges(ranks):
    assert not torch.equal(ranks[0]["sparse_local"], ranks[1]["sparse_local"])


def test_grow_refuses_differing_edges_and_guessing(ranks):
    for r in ranks:
        assert r["sparse_auto"] is not None and "group=" in r["sparse_auto"]
        assert r["sparse_differ"] is not None and "different src" in r["sparse_differ"]
        layer = SparseLinear(16, 12, density=0.2)
        layer.load_state_dict(r["sparse"]["state"])
        assert torch.equal(r["sparse_after_differ"], layer.edges.to_dense())


def test_group_arguments_without_distributed():
    layer = SparseLinear(8, 6, density=0.3)
    with pytest.raises(RuntimeError, match="not initialised"):
        layer.grow_top(1, torch.rand(6, 8), group=object())
    with pytest.raises(ValueError, match="group must be"):
        layer.grow(torch.tensor([0]), torch.tensor([0]), group="world")
    with pytest.raises(ValueError, match="scores must be"):
        layer.grow_top(1, torch.rand(8, 6), group=None)
    with pytest.raises(RuntimeError, match="keep_for_growth"):
        layer.grow_top(1, group=None)
    before = int(layer.nnz)
    scores = torch.zeros(6, 8)
    scores[5, 7] = 1.0
    absent = layer.edges.to_dense()[5, 7] == 0
    layer.grow_top(1, scores)  # "auto" without distributed: rank-local
    assert int(layer.nnz) == before + 1
    if absent:
        assert layer.edges.to_dense()[5, 7] == 1
    assert DataParallel(None).group is None
    x, y = torch.arange(5.0), torch.arange(5)
    assert rank_shard(x, y, None)[0] is x
    assert rank_shard(x, y, "auto")[0] is x  # no torch.distributed: rank-local
    with pytest.raises(ValueError, match="same number of rows"):
        rank_shard(x, y[:3], None)
    with pytest.raises(RuntimeError, match="not initialised"):
        rank_shard(x, y, object())


def test_collective_inputs_live_on_the_models_device(monkeypatch):
    """NCCL reduces CUDA tensors only: what DataParallel and SparseLinear.grow(group=) reduce
    lives on the model's device (here 'meta' stands in for CUDA; no collective runs)."""
    import morpho_kernels.nn.sparse as sparse_mod

    class Reduced(Exception):
        pass

    seen = []

    def record(self, ts, op):  # as if reduced: the first reduction's inputs, then stop
        seen.extend(t.device.type for t in ts)
        raise Reduced

    dp = DataParallel(None)
    dp.group = object()  # as if a process group
    monkeypatch.setattr(DataParallel, "_flat", record)
    model = torch.nn.Linear(3, 2, device="meta")
    with pytest.raises(Reduced):
        dp.on_train_end(TrainLoop(model, torch.optim.SGD(model.parameters(), lr=0.1)),
                        {"loss": 1.0, "train_acc": 0.5})
    assert seen == ["meta"]
    seen.clear()
    monkeypatch.setattr(sparse_mod, "group_all_equal",
                        lambda t, group: seen.append(t.device.type) or True)
    sparse_mod._check_same_growth(torch.tensor([0]), [1], 0.5, object(),
                                  torch.device("meta"))
    assert seen == ["meta"] * 3


def test_group_of_the_wrong_type_is_refused_once_initialised(tmp_path):
    from morpho_kernels.distributed import resolve_group

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        with pytest.raises(TypeError, match="group must be a process group"):
            resolve_group(5, "prune", "units")
        assert resolve_group(dist.group.WORLD, "prune", "units") is None  # one rank: local
    finally:
        dist.destroy_process_group()
