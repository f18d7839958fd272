"""Item 5 of issue 20: after every change the optimizer holds exactly the live parameters,
surviving moments are kept, new ones start at zero, and new parameters train (the seed's
stale-optimizer defect)."""

import pytest
import torch
from evo_data import toy_split

import morphonet.evolution as evo
from morphonet.evolution.trainer import prepare_optimizer


def _trained_context(activation="relu", seed=0, epochs=1):
    (xt, yt), (xv, yv) = toy_split(seed)
    net = evo.create_standard_network([6, 10, 8, 3], sparsity=0.3, activation=activation,
                                      seed=seed)
    ctx = evo.NetworkContext(net, (xt, yt), val_data=(xv, yv), seed=seed)
    evo.StandardNetworkTrainer(epochs=epochs, learning_rate=0.01).train(ctx)
    return ctx


def _edge_moments(layer, state):
    """{(src, dst): (exp_avg, exp_avg_sq)} of the layer's live edges."""
    src, dst = layer.edges.to_coo()
    m, v = state["exp_avg"], state["exp_avg_sq"]
    return {(int(s), int(d)): (float(m[i]), float(v[i]))
            for i, (s, d) in enumerate(zip(src, dst))}


def test_widen_keeps_surviving_moments_and_starts_new_ones_at_zero():
    ctx = _trained_context()
    net, opt = ctx.network, ctx.optimizer
    lay0, lay1, lay2 = (st.layer for st in net.stages)
    before0 = _edge_moments(lay0, opt.state[lay0.values])
    before1 = _edge_moments(lay1, opt.state[lay1.values])
    bias0 = opt.state[lay0.bias]["exp_avg"].clone()
    untouched = {k: v.clone() for k, v in opt.state[lay2.values].items()}
    net.widen(0, 3, opt)
    evo.sync_optimizer(opt, net.parameter_groups())
    assert evo.optimizer_report(opt, net) == {"missing": 0, "stale": 0}
    new0, new1 = net.stages[0].layer, net.stages[1].layer
    after0 = _edge_moments(new0, opt.state[new0.values])
    after1 = _edge_moments(new1, opt.state[new1.values])
    for k, mv in before0.items():  # every old edge keeps its moments exactly
        assert after0[k] == mv
    for k, mv in before1.items():
        assert after1[k] == mv
    assert all(after0[k] == (0.0, 0.0) for k in set(after0) - set(before0))
    assert all(after1[k] == (0.0, 0.0) for k in set(after1) - set(before1))
    assert len(after0) > len(before0) and len(after1) > len(before1)
    b = opt.state[new0.bias]["exp_avg"]
    assert torch.equal(b[:10], bias0) and torch.equal(b[10:], torch.zeros(3))
    for k, v in untouched.items():  # a layer the edit did not touch: its state as it was
        assert torch.equal(opt.state[lay2.values][k], v)


def test_new_parameters_train_after_every_kind_of_change():
    ctx = _trained_context("tanh")
    net, opt = ctx.network, ctx.optimizer
    new_neurons = net.widen(0, 2, opt)
    s_new = net.insert_layer(0, opt)
    block = net.add_residual_block(1)
    inserted = net.stages[s_new]
    # the new parameters, as they are now (zero-valued edges, zero block output)
    out_edges = net.stages[1].layer  # the inserted stage: it consumes the widened stage 0
    ins_vals = inserted.layer.values.detach().clone()
    blk_vals = block.second.values.detach().clone()
    assert not blk_vals.any() and not ins_vals.any()
    w0 = net.stages[0].layer.edges.to_dense(net.stages[0].layer.values.detach())
    ctx.new_iteration()
    evo.StandardNetworkTrainer(epochs=1, learning_rate=0.01).train(ctx)
    assert evo.optimizer_report(ctx.optimizer, net) == {"missing": 0, "stale": 0}
    assert ctx.optimizer is opt  # the same optimizer, kept true (never rebuilt)
    nnz = inserted.layer.nnz
    assert (inserted.layer.values.detach()[:nnz] != 0).float().mean() > 0.5
    assert (block.second.values.detach()[:block.second.nnz] != 0).float().mean() > 0.5
    w1 = net.stages[0].layer.edges.to_dense(net.stages[0].layer.values.detach())
    assert not torch.equal(w1[new_neurons], w0[new_neurons])  # new neurons' incoming moved
    assert out_edges.in_features == 12


def test_stale_optimizer_is_impossible_through_the_system():
    """Every iteration grows (blocks, layers, edges beyond the capacity); the optimizer the
    trainer built first trains every live parameter afterwards."""
    (xt, yt), (xv, yv) = toy_split(1)
    net = evo.create_standard_network([6, 10, 3], sparsity=0.2, seed=1)
    ctx = evo.NetworkContext(net, (xt, yt), val_data=(xv, yv))
    system = evo.ComposableEvolutionSystem(strict=True)
    system.add_component(evo.StandardExtremaAnalyzer(max_batches=2))
    system.add_component(evo.HybridGrowthStrategy([
        evo.ExtremaGrowthStrategy(add_layer_on_extrema=True, extrema_threshold=0.0),
        evo.ResidualBlockGrowthStrategy(max_blocks=3)]))
    system.add_component(evo.StandardNetworkTrainer(epochs=1))
    ctx = system.evolve_network(ctx, num_iterations=3)
    opt = ctx.optimizer
    assert evo.optimizer_report(opt, ctx.network) == {"missing": 0, "stale": 0}
    names = [g["name"] for g in opt.param_groups]
    assert names == [n for n, _ in ctx.network.parameter_groups()]
    assert len(ctx.network.stages) > 2 and ctx.network.get_network_stats()["residual_blocks"]
    # every parameter with live entries has optimizer state (it was stepped)
    for p in ctx.network.parameters():
        assert p in opt.state and int(opt.state[p]["step"]) >= 1


def test_sync_optimizer_groups_and_hyperparameters():
    net = evo.create_standard_network([4, 5, 2], 0.5, seed=0)
    ctx = evo.NetworkContext(net, (torch.randn(8, 4), torch.zeros(8).long()))
    prepare_optimizer(ctx)
    opt = ctx.optimizer
    opt.param_groups[0]["lr"] = 0.123  # e.g. set by a learning-rate rule
    net.add_residual_block(0)
    counts = evo.sync_optimizer(opt, net.parameter_groups())
    assert counts == {"added": 4, "removed": 0, "kept": 4}
    g = {g["name"]: g for g in opt.param_groups}
    assert g["block2"]["lr"] == 0.123  # a new group takes the group before it
    assert g["stage1"]["lr"] == 0.01
    removed = net.stages[0].blocks[0]
    del net.stages[0].blocks[0]
    for p in removed.parameters():
        opt.state[p]["exp_avg"] = torch.zeros_like(p)
    assert evo.sync_optimizer(opt, net.parameter_groups())["removed"] == 4
    assert not any(p in opt.state for p in removed.parameters())


def test_replace_parameter_pads_state():
    old = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([old], lr=0.1, momentum=0.9)
    opt.state[old]["momentum_buffer"] = torch.tensor([1.0, 2.0, 3.0])
    new = torch.nn.Parameter(torch.ones(5))
    evo.replace_parameter(opt, old, new)
    assert opt.param_groups[0]["params"] == [new] and old not in opt.state
    assert opt.state[new]["momentum_buffer"].tolist() == [1, 2, 3, 0, 0]


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_trainer_optimizer_choices(name):
    ctx = _trained_context()
    assert ctx.optimizer is not None
    net = evo.create_standard_network([6, 4, 3], 0.5, seed=0)
    ctx2 = evo.NetworkContext(net, ctx.train_loader)
    evo.StandardNetworkTrainer(epochs=1, optimizer=name).train(ctx2)
    assert type(ctx2.optimizer).__name__.lower() == name
    with pytest.raises(ValueError, match="optimizer"):
        evo.StandardNetworkTrainer(optimizer="rmsprop")


def test_a_users_optimizer_is_adopted_with_its_state():
    """An optimizer built by the user (one unnamed group) becomes named groups; the state of
    every parameter is kept; the trainer's learning rate applies (`prepare_optimizer`)."""
    (xt, yt), _ = toy_split()
    net = evo.create_standard_network([6, 8, 3], 0.4, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=0.003)
    ctx = evo.NetworkContext(net, (xt, yt), optimizer=opt)
    evo.StandardNetworkTrainer(epochs=1).train(ctx)  # syncs first, then trains
    assert ctx.optimizer is opt
    assert [g["name"] for g in opt.param_groups] == ["stage0", "stage1"]
    assert all(g["lr"] == 0.01 for g in opt.param_groups)  # the trainer's setting
    moments = {p: s["exp_avg"].clone() for p, s in opt.state.items()}
    evo.sync_optimizer(opt, net.parameter_groups())
    assert all(torch.equal(opt.state[p]["exp_avg"], m) for p, m in moments.items())


def test_a_later_trainers_settings_apply():
    """The seed's coarse → medium → fine phases: a second trainer's learning rate and weight
    decay reach the shared optimizer (its moments kept); another optimizer type raises."""
    (xt, yt), _ = toy_split()
    net = evo.create_standard_network([6, 8, 3], 0.4, seed=0)
    ctx = evo.NetworkContext(net, (xt, yt))
    evo.StandardNetworkTrainer(epochs=1, learning_rate=0.05).train(ctx)
    opt = ctx.optimizer
    assert all(g["lr"] == 0.05 for g in opt.param_groups)
    moments = {p: s["exp_avg"].clone() for p, s in opt.state.items()}
    fine = evo.StandardNetworkTrainer(epochs=1, learning_rate=0.001, weight_decay=1e-4)
    from morphonet.evolution.trainer import prepare_optimizer

    prepare_optimizer(ctx, fine.config)  # what train() does first
    assert ctx.optimizer is opt
    assert all(g["lr"] == 0.001 and g["initial_lr"] == 0.001 and g["weight_decay"] == 1e-4
               for g in opt.param_groups)
    assert all(torch.equal(opt.state[p]["exp_avg"], m) for p, m in moments.items())
    # the step really uses the new rate: Adam's first steps move a weight by about lr
    w0 = net.stages[0].layer.values.detach().clone()
    fine.train(ctx)
    step = (net.stages[0].layer.values.detach() - w0).abs().max()
    assert 0 < float(step) < 0.001 * 8 * 4  # ≤ lr per step (8 steps of 32) × slack, not 0.05
    with pytest.raises(ValueError, match="optimizer"):
        evo.StandardNetworkTrainer(epochs=1, optimizer="sgd").train(ctx)
