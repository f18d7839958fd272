"""MinimalNetwork: skip connections carry signal and gradient, exact connectivity figures,
sparsity-scaled init, function-preserving vertical cloning, an optimizer surviving growth."""

import pytest
import torch

from morphonet.growth import MinimalNetwork, create_multi_scale_network


def _empty(sizes, **kw):
    return MinimalNetwork(sizes, sparsity=0.0, min_edges_per_layer=0, seed=0, **kw)


def test_skip_connection_changes_output_and_gets_gradient():
    torch.manual_seed(0)
    net = _empty([4, 3, 3, 2])
    net.add_connections(0, 1, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([.5, -.4]))
    net.add_connections(1, 2, torch.tensor([0]), torch.tensor([2]), 0.7)
    net.add_connections(2, 3, torch.tensor([2]), torch.tensor([1]), 0.9)
    x = torch.randn(6, 4)
    before = net(x).detach()
    # a skip edge input 3 → logit 0 (three layers ahead): logit 0 gains exactly 1.25 * x[:, 3]
    assert net.add_connections(0, 3, torch.tensor([3]), torch.tensor([0]), 1.25) == 1
    after = net(x)
    torch.testing.assert_close(after[:, 0] - before[:, 0], 1.25 * x[:, 3], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[:, 1], before[:, 1], rtol=0, atol=0)
    # its weight gets dL/dW = Σ_b dL/dlogit0 · x3 (here L = Σ logit0 → Σ_b x3)
    lay = net.layer(0, 3)
    (g,) = torch.autograd.grad(after[:, 0].sum(), lay.values)
    assert g[0].item() == pytest.approx(x[:, 3].sum().item(), abs=1e-5)
    # and a skip edge 1 → 3 carries hidden signal: dlogit/dvalue = h1
    net.add_connections(1, 3, torch.tensor([0]), torch.tensor([1]), 0.3)
    out = net(x)
    h1 = torch.tanh(0.5 * x[:, 0])  # neuron 0 of layer 1 (bias 0)
    torch.testing.assert_close(out[:, 1] - after[:, 1].detach(), 0.3 * h1, rtol=0, atol=1e-6)


def test_connectivity_stats_exact():
    net = _empty([4, 3, 2])
    net.add_connections(0, 1, torch.tensor([0, 3]), torch.tensor([1, 2]), 1.0)
    net.add_connections(1, 2, torch.tensor([2]), torch.tensor([0]), 1.0)
    net.add_connections(0, 2, torch.tensor([1]), torch.tensor([1]), 1.0)
    s = net.get_connectivity_stats()
    assert s["total_active_connections"] == 4
    assert s["total_possible_connections"] == 4 * 3 + 3 * 2
    assert s["connectivity_ratio"] == pytest.approx(4 / 18)
    assert s["skip_connections"] == 1
    assert s["per_layer"]["0_1"] == {"active": 2, "possible": 12, "density": 2 / 12}
    assert s["per_layer"]["0_2"]["active"] == 1 and s["layer_sizes"] == [4, 3, 2]


def test_sparsity_is_connected_fraction():
    net = MinimalNetwork([100, 100, 10], sparsity=0.01, seed=1)
    per = net.get_connectivity_stats()["per_layer"]
    assert per["0_1"]["active"] == 100 and per["1_2"]["active"] == 10
    tiny = MinimalNetwork([64, 128, 64, 10], sparsity=1e-4, seed=0)
    assert tiny.get_connectivity_stats()["connectivity_ratio"] <= 1e-3


def test_init_scaled_for_actual_fan_in():
    torch.manual_seed(0)
    net = MinimalNetwork([400, 300, 10], sparsity=0.01, seed=3)  # ~4 inputs per neuron
    x = torch.randn(4000, 400)
    z = net.layer(0, 1)(x)[:, :300]
    has_input = net.layer(0, 1).edges.fan_in()[:300] > 0
    var = z[:, has_input].var(0).mean().item()
    assert 0.85 < var < 1.15, var  # N(0, 1/fan_in) per edge: unit pre-activation variance


def test_clone_preserves_function_and_splits_outgoing():
    torch.manual_seed(0)
    net = MinimalNetwork([6, 5, 4, 3], sparsity=0.6, seed=0, neuron_capacity=0.5)
    net.add_connections(1, 3, torch.tensor([2, 2]), torch.tensor([0, 2]), torch.tensor([.8, -.6]))
    x = torch.randn(9, 6)
    before = net(x).detach()
    w_before = net.layer(1, 2).to_linear().weight.detach()[:, 2].clone()
    k = net.clone_neuron(1, 2, scale=0.7)
    assert k == 5 and net.widths() == [6, 6, 4, 3]
    torch.testing.assert_close(net(x), before, rtol=0, atol=2e-6)
    w = net.layer(1, 2).to_linear().weight.detach()
    torch.testing.assert_close(w[:, k], 0.7 * w_before)
    torch.testing.assert_close(w[:, 2], 0.3 * w_before)
    w_in = net.layer(0, 1).to_linear().weight.detach()
    assert torch.equal(w_in[k], w_in[2])  # exact copy of incoming edges
    assert net.get_connectivity_stats()["neurons_added"] == 1
    with pytest.raises(ValueError, match="parent"):
        net.clone_neuron(1, 7)


def test_optimizer_created_once_survives_growth():
    torch.manual_seed(0)
    model = create_multi_scale_network(8, [6, 5], 3, sparsity=0.2, seed=0)
    net = model.network
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    crit = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = crit(net(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(5):
        step()
    net.add_connections(0, 3, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), 0.0,
                        optimizer=opt)
    k = net.clone_neuron(1, int(net.active(1).nonzero()[0]), optimizer=opt)
    lay = net.layer(0, 3)
    st = opt.state[lay.values]
    assert st == {} or st["exp_avg"].shape == lay.values.shape
    first = [step() for _ in range(40)][0]
    assert lay.values.detach()[:3].abs().min() > 0  # the new skip edges were trained
    for p in net.parameters():
        for t in opt.state[p].values():
            if t.dim():
                assert t.shape == p.shape
    assert step() < first and net.active(1)[k]


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="layer_sizes"):
        MinimalNetwork([5])
    with pytest.raises(ValueError, match="sparsity"):
        MinimalNetwork([3, 2], sparsity=2.0)
    with pytest.raises(ValueError, match="activation"):
        MinimalNetwork([3, 2], activation="gelu")
    with pytest.raises(ValueError, match="max_skip"):
        MinimalNetwork([3, 2], max_skip=0)
    net = MinimalNetwork([3, 4, 2])
    with pytest.raises(ValueError, match="x must be"):
        net(torch.randn(2, 5))
    with pytest.raises(ValueError, match="no edge list"):
        net.layer(0, 5)


def test_create_multi_scale_network_uses_the_configs_it_is_given():
    """An ExtremaDetector with an empty window has len() 0, so ``detector or default``
    replaced the caller's detector (and its ExtremaConfig) with a default one."""
    from morphonet.growth import ExtremaConfig, RouterConfig, SchedulerConfig

    net = create_multi_scale_network(6, [5], 3, extrema=ExtremaConfig(window_batches=5),
                                     router=RouterConfig(max_incoming=2),
                                     scheduler=SchedulerConfig(window_steps=7))
    assert net.detector.config.window_batches == 5 and net.detector.window.maxlen == 5
    assert net.router.config.max_incoming == 2 and net.scheduler.config.window_steps == 7
