"""RigL / SET / static keep the number of connections constant (RigL grows where the dense
gradient is largest), ERK allocation, the CLI parser, and a small growth run on digits."""

import argparse

import pytest
import torch

from morphonet.data import load_dataset
from morphonet.growth import (
    SchedulerConfig,
    SparsePeer,
    create_multi_scale_network,
    erk_densities,
    make_peer_network,
    train_peer_epoch,
)
from morphonet.growth.cli import add_grow_parser


def test_erk_densities_hit_total_and_scale():
    sizes = [64, 160, 80, 10]
    d = erk_densities(sizes, 900)
    n = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    assert sum(x * m for x, m in zip(d, n)) == pytest.approx(900)
    raw = [(a + b) / (a * b) for a, b in zip(sizes[:-1], sizes[1:])]
    assert d[0] / d[1] == pytest.approx(raw[0] / raw[1])
    assert erk_densities([4, 4, 2], 20)[1] == 1.0  # capped layer, excess redistributed
    with pytest.raises(ValueError, match="total"):
        erk_densities(sizes, 10**9)


@pytest.mark.parametrize("method", ["rigl", "set", "static"])
def test_peers_keep_connection_count(method):
    torch.manual_seed(0)
    net = make_peer_network([20, 30, 5], 120, seed=0)
    counts = [lay.nnz for lay in (net.layer(0, 1), net.layer(1, 2))]
    peer = SparsePeer(net, method, update_every=2, end_step=100, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    before = net.layer(0, 1).edges.to_dense().clone()
    moved = sum(train_peer_epoch(net, peer, loader, opt, torch.nn.CrossEntropyLoss())["moved"]
                for _ in range(3))
    assert [lay.nnz for lay in (net.layer(0, 1), net.layer(1, 2))] == counts
    changed = int((net.layer(0, 1).edges.to_dense() != before).sum())
    if method == "static":
        assert moved == 0 and changed == 0
    else:
        assert moved > 0 and changed > 0


def test_rigl_grows_largest_gradient_and_drops_smallest_weight():
    torch.manual_seed(0)
    net = make_peer_network([10, 8, 3], 30, seed=1)
    peer = SparsePeer(net, "rigl", update_every=1, end_step=10, alpha=0.3, seed=0)
    lay = net.layer(0, 1)
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    w = lay.to_linear().weight.detach()
    mask = w != 0
    g = torch.zeros_like(w)
    absent = (~mask).nonzero()
    g[absent[:, 0], absent[:, 1]] = lay.dense_grad_at(absent[:, 1], absent[:, 0]).abs()
    k = int(peer.alpha / 2 * (1 + torch.cos(torch.tensor(torch.pi / 10))) * lay.nnz)
    want_grow = set(map(tuple, absent[torch.topk(g[~mask], k).indices].tolist()))
    want_drop = set(map(tuple, mask.nonzero()[torch.topk(w[mask].abs(), k,
                                                         largest=False).indices].tolist()))
    peer.after_step()
    new = lay.to_linear().weight.detach() != 0
    new_mask = lay.edges.to_dense() > 0
    assert {tuple(p) for p in (new_mask & ~mask).nonzero().tolist()} == want_grow
    assert {tuple(p) for p in (mask & ~new_mask).nonzero().tolist()} == want_drop
    assert not (new & ~mask).any()  # RigL's new weights start at 0


def test_grow_parser_registers_subcommand():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_grow_parser(sub)
    args = parser.parse_args(["grow", "--quick", "--seeds", "3", "--datasets", "digits"])
    assert args.quick and args.seeds == 3 and args.datasets == ["digits"] and callable(args.func)
    with pytest.raises(TypeError, match="subparsers"):
        add_grow_parser(parser)


@pytest.fixture
def one_thread():
    """One torch thread for the test, the previous count given back after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_small_growth_run_on_digits_grows_and_learns(tmp_path, one_thread):
    torch.manual_seed(0)
    ds = load_dataset("digits", 0)
    model = create_multi_scale_network(
        64, [48, 24], 10, sparsity=5e-4, seed=0, snapshot_dir=str(tmp_path),
        scheduler=SchedulerConfig(window_steps=5, growth_threshold=30, cooldown_steps=10,
                                  phase_epochs=(1, 3)),
        val_data=(ds.val.x, ds.val.y))
    start = model.network.get_connectivity_stats()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    recs = []
    for ep in range(8):
        perm = torch.randperm(len(ds.train.y), generator=g)
        loader = [(ds.train.x[perm[i:i + 32]], ds.train.y[perm[i:i + 32]])
                  for i in range(0, len(perm), 32)]
        recs.append(model.train_epoch(loader, opt, torch.nn.CrossEntropyLoss(), ep))
    end = model.network.get_connectivity_stats()
    events = sum(r["growth_events"] for r in recs)
    assert start["connectivity_ratio"] <= 1e-3 and events >= 3
    assert end["total_active_connections"] - start["total_active_connections"] == sum(
        r["connections_added"] for r in recs) > 0
    assert end["skip_connections"] > 0
    assert recs[-1]["val_acc"] > 0.5 and model.snapshots.index  # learned; snapshots saved
    assert all(r["snapshot"] is None or isinstance(r["snapshot"], int) for r in recs)


def test_grow_experiment_gives_the_callers_thread_count_back(tmp_path):
    from morphonet.growth.experiment import METHODS, GrowExperimentConfig, run_grow_experiment

    threads = torch.get_num_threads()
    other = 3 if threads != 3 else 2
    torch.set_num_threads(other)
    try:
        cfg = GrowExperimentConfig(datasets=("digits",), seeds=1, epochs={"digits": 1},
                                   hidden=(8,), methods=METHODS[:1], out_dir=str(tmp_path))
        res = run_grow_experiment(cfg, progress=False, log=None)
        assert len(res["runs"]) == 1 and torch.get_num_threads() == other
        with pytest.raises(ValueError, match="no-such-dataset"):  # a failure gives them back too
            run_grow_experiment(GrowExperimentConfig(datasets=("no-such-dataset",), seeds=1,
                                                     out_dir=str(tmp_path)), False, None)
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(threads)


def test_grow_seed_loop_runs_the_documented_loop_and_checks_its_promises(tmp_path, one_thread):
    """`morpho grow --seed-loop` runs the seed's loop as written (a short version here) for
    [0, 1] and standardised digits and writes the figures with the promises checked."""
    from morphonet.cli import main

    assert main(["grow", "--seed-loop", "--seeds", "1", "--epochs", "7", "--out",
                 str(tmp_path)]) == 0
    import json

    res = json.loads((tmp_path / "seed_loop.json").read_text())
    assert [r["scaling"] for r in res["runs"]] == ["unit", "standardised"]
    for r in res["runs"]:
        assert r["epochs"] == 7 and r["batch_size"] == 32 and r["growth_events"] >= 1
        assert r["connections_added"] > 0 and r["connectivity"] > r["start_connectivity"]
    md = (tmp_path / "seed_loop.md").read_text()
    assert "≥ 5 growth events" in md and "≥ 95% test accuracy (mean)" in md


def test_grow_accepts_the_seeds_flags_and_refuses_a_gpu_by_name():
    from morphonet.growth.cli import add_grow_parser
    from morphonet.growth.experiment import GrowExperimentConfig

    parser = argparse.ArgumentParser()
    add_grow_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["grow", "--batch-size", "64", "--learning-rate", "0.002",
                              "--sparsity", "0.001", "--activation", "relu", "--hidden-sizes",
                              "256", "128", "--device", "auto"])
    assert (args.batch_size, args.lr, args.sparsity, args.activation, args.hidden,
            args.device) == (64, 0.002, 0.001, "relu", [256, 128], "auto")
    assert parser.parse_args(["grow", "--lr", "0.01"]).lr == 0.01
    assert GrowExperimentConfig(device="auto").device == "cpu"
    with pytest.raises(ValueError, match="runs on the CPU"):
        GrowExperimentConfig(device="cuda")
