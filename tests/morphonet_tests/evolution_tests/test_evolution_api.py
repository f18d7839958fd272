"""Item 1 of issue 20: the seed's interfaces and entry points, under its import names."""

import importlib

import pytest
import torch
from evo_data import toy_split
from torch.utils.data import DataLoader, TensorDataset

import morphonet.evolution as evo
from morphonet.loop import evaluate


def test_seed_import_names_are_morphonet_evolution():
    sn = importlib.import_module("structure_net")
    comps = importlib.import_module("structure_net.evolution.components")
    ifaces = importlib.import_module("structure_net.evolution.interfaces")
    assert comps is importlib.import_module("morphonet.evolution.components")
    assert ifaces is importlib.import_module("morphonet.evolution.interfaces")
    for n in ("ComposableEvolutionSystem", "NetworkContext", "StandardExtremaAnalyzer",
              "ExtremaGrowthStrategy", "StandardNetworkTrainer",
              "create_standard_evolution_system"):
        assert getattr(comps, n) is getattr(evo, n)
    assert ifaces.Analyzer is evo.Analyzer and ifaces.GrowthStrategy is evo.GrowthStrategy
    assert sn.create_standard_network is evo.create_standard_network
    # the first generation's names stay
    assert sn.create_multi_scale_network is importlib.import_module(
        "morphonet.growth").create_multi_scale_network


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_standard_network_matches_dense_reference(activation):
    net = evo.create_standard_network([7, 9, 5, 3], sparsity=0.4, activation=activation,
                                      seed=3)
    assert net.architecture() == [7, 9, 5, 3]
    for st, (a, b) in zip(net.stages, [(7, 9), (9, 5), (5, 3)]):
        assert isinstance(st.layer, evo.StandardSparseLayer)
        assert st.layer.nnz == round(0.4 * a * b)  # sparsity is the connected fraction
    x = torch.randn(11, 7, dtype=torch.float64)
    net = net.double()
    h = x
    act = torch.relu if activation == "relu" else torch.tanh
    for i, st in enumerate(net.stages):
        w = st.layer.edges.to_dense(st.layer.values.detach())
        h = h @ w.T + st.layer.bias.detach()
        h = act(h) if i < 2 else h
    torch.testing.assert_close(net(x), h, rtol=1e-12, atol=1e-12)
    stats = net.get_network_stats()
    assert stats["total_connections"] == sum(s.layer.nnz for s in net.stages)
    assert stats["architecture"] == [7, 9, 5, 3] and stats["depth"] == 3


def test_network_rejects_bad_arguments():
    with pytest.raises(ValueError, match="architecture"):
        evo.create_standard_network([4], 0.1)
    with pytest.raises(ValueError, match="activation"):
        evo.create_standard_network([4, 2], 0.1, activation="sigmoid")
    with pytest.raises(ValueError, match="sparsity"):
        evo.create_standard_network([4, 2], 1.5)
    net = evo.create_standard_network([4, 3, 2], 0.5)
    with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
        net(torch.randn(2, 5))
    with pytest.raises(ValueError, match="y_train"):
        net.check_inputs(torch.randn(3, 4), torch.tensor([0, 1, 2]))


def test_add_component_dispatches_by_interface():
    s = evo.ComposableEvolutionSystem()
    a, g, t = evo.NetworkStatsAnalyzer(), evo.ExtremaGrowthStrategy(), \
        evo.StandardNetworkTrainer(epochs=1)
    assert s.add_component(a).add_component(g).add_component(t) is s
    assert (s.analyzers, s.strategies, s.trainers) == ([a], [g], [t])
    with pytest.raises(TypeError, match="Analyzer, GrowthStrategy or NetworkTrainer"):
        s.add_component(object())


def test_quick_start_grows_and_validates_on_held_out_data():
    """The seed's quick start: create_standard_network → NetworkContext(network,
    train_loader, device) → create_standard_evolution_system().evolve_network."""
    torch.manual_seed(0)
    (xt, yt), (xv, yv) = toy_split()
    loader = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    network = evo.create_standard_network([6, 12, 8, 3], sparsity=0.15, seed=0)
    context = evo.NetworkContext(network, loader, "cpu", val_data=(xv, yv))
    before = network.get_network_stats()["total_connections"]
    system = evo.create_standard_evolution_system(epochs=2, learning_rate=0.01)
    evolved = system.evolve_network(context, num_iterations=2)
    after = evolved.network.get_network_stats()["total_connections"]
    log = evolved.evolution_log
    assert len(log) == 2 and len(evolved.history) == 4
    assert after == log[-1]["connections"] > before
    # the given context still holds the network as it was (the seed prints both counts)
    assert context.network.get_network_stats()["total_connections"] == before
    assert context.history == [] and context.optimizer is None
    assert all(e["output_change"] <= 1e-5 for r in log for e in r["events"])
    # validation is the held-out split: the last record equals an evaluation on it
    assert evolved.history[-1]["val_acc"] == pytest.approx(
        evaluate(evolved.network, xv, yv)[1])
    assert evolved.history[-1]["val_acc"] > 0.5
    assert {"dead_neurons", "saturated_neurons", "total_connections"} <= set(log[0]["analysis"])


def test_custom_analyzer_and_strategy_subclasses_as_the_seed_writes_them():
    class MyCustomAnalyzer(evo.Analyzer):
        def analyze(self, context):
            return {"my_metric": context.network.get_network_stats()["total_connections"]}

    class MyGrowthStrategy(evo.GrowthStrategy):
        def __init__(self):
            self.threshold, self.seen = 0, []

        def should_grow(self, context, analysis):
            self.seen.append(analysis["my_metric"])
            return analysis.get("my_metric", 0) > self.threshold

        def grow(self, context, analysis):
            context.network.add_residual_block(0)
            return context

    (xt, yt), (xv, yv) = toy_split()
    net = evo.create_standard_network([6, 8, 3], sparsity=0.3, seed=1)
    ctx = evo.NetworkContext(net, (xt, yt), val_data=(xv, yv))
    strat = MyGrowthStrategy()
    system = evo.ComposableEvolutionSystem(strict=True)
    system.add_component(MyCustomAnalyzer())
    system.add_component(strat)
    system.add_component(evo.StandardNetworkTrainer(epochs=1))
    system.evolve_network(ctx, num_iterations=2, in_place=True)
    assert strat.seen[0] == round(0.3 * 48) + round(0.3 * 24)
    assert strat.seen[1] > strat.seen[0]  # the first block's edges count
    assert net.get_network_stats()["residual_blocks"] == 2


def test_context_checks_its_arguments():
    net = evo.create_standard_network([4, 2], 0.5)
    with pytest.raises(TypeError, match="network"):
        evo.NetworkContext("net", [])
    with pytest.raises(TypeError, match="train_loader"):
        evo.NetworkContext(net, None)
    with pytest.raises(TypeError, match="val_data"):
        evo.NetworkContext(net, [], val_data=3)
    ctx = evo.NetworkContext(net, [], val_data=[(torch.zeros(2, 4), torch.zeros(2).long())] * 2)
    assert ctx.val_data[0].shape == (4, 4)
    with pytest.raises(ValueError, match="no batch"):
        ctx.analysis_batches(2)


def test_erk_allocation_splits_the_same_total_as_the_peers():
    from morphonet.growth.peers import erk_densities

    sizes = [64, 160, 80, 10]
    net = evo.create_standard_network(sizes, 0.04, "tanh", seed=0, allocation="erk")
    total = round(0.04 * (64 * 160 + 160 * 80 + 80 * 10))
    for st, d, (a, b) in zip(net.stages, erk_densities(sizes, total), zip(sizes, sizes[1:])):
        assert st.layer.nnz == max(1, round(d * a * b))
    assert net.stages[-1].layer.nnz > round(0.04 * 800)  # the logit layer is denser
    assert abs(net.get_network_stats()["total_connections"] - total) <= 3
