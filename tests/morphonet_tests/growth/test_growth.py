"""Extrema detection against a hand count, the scheduler's credit / spike / cooldown / phase
logic, and the router's limits (fan-out, new incoming per neuron, radius, reciprocal,
quiet fallback)."""

import math

import pytest
import torch

from morphonet.growth import (
    ConnectionRouter,
    ExtremaConfig,
    ExtremaDetector,
    GrowthScheduler,
    LayerExtrema,
    MinimalNetwork,
    RouterConfig,
    SchedulerConfig,
)


def test_tanh_extrema_match_hand_count():
    det = ExtremaDetector("tanh", ExtremaConfig(rule="saturation", input_high=1.0,
                                                 min_share=0.5, quiet_quantile=0.0,
                                                 window_batches=5, stride_steps=1))
    x = torch.zeros(4, 2)  # input layer: nothing above 1 std
    # hidden: n0 > 0.9 on 3 of 4 samples (high), n1 < -0.9 on 2 of 4 (low), n2 constant
    # (quiet), n3 varies (neither)
    h1 = torch.tensor([[0.95, -0.95, 0.1, 0.5], [0.99, -0.91, 0.1, -0.5],
                       [0.92, 0.0, 0.1, 0.0], [0.3, 0.5, 0.1, 0.2]])
    out = torch.randn(4, 3)
    det.update([x, h1[:2], out[:2]])
    det.update([x, h1[2:], out[2:]])  # two batches, combined
    rep = det.report()
    e = rep[1]
    assert e.high.tolist() == [True, False, False, False]
    assert e.low.tolist() == [False, True, False, False]
    assert e.quiet.tolist() == [False, False, True, False]
    torch.testing.assert_close(e.high_share, torch.tensor([0.75, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(e.low_share, torch.tensor([0.0, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(e.range, torch.tensor([0.69, 1.45, 0.0, 1.0]))
    assert not rep[2].high.any() and not rep[2].low.any()  # logits are never extrema
    assert ExtremaConfig().thresholds("tanh") == pytest.approx((-0.9, 0.9))
    assert ExtremaConfig().thresholds("sigmoid") == pytest.approx((0.05, 0.95))


def test_relu_dead_and_high_and_input_rule():
    det = ExtremaDetector("relu", ExtremaConfig(input_high=1.0, window_batches=3,
                                                 stride_steps=1))
    x = torch.tensor([[2.0, 0.0], [1.5, 0.0], [-3.0, 0.0], [0.0, 0.0]])
    h = torch.tensor([[0.0, 1.0, 5.0, 0.2], [0.0, 2.0, 6.0, 0.1],
                      [0.0, 0.0, 7.0, 0.0], [0.0, 1.0, 8.0, 0.3]])
    det.update([x, h, torch.zeros(4, 2)])
    e = det.report()
    assert e[1].low.tolist() == [True, False, False, False]  # never positive
    assert e[1].high.tolist() == [False, False, True, False]  # mean ≥ q90 of means
    assert e[0].high.tolist() == [True, False]  # > 1 std on 2/4 ≥ 10% of samples
    active = [torch.ones(2, dtype=torch.bool), torch.tensor([True, True, False, True]),
              torch.ones(2, dtype=torch.bool)]
    assert not det.report(active)[1].high[2]  # inactive slots are never extrema


def test_detector_window_and_stride():
    det = ExtremaDetector("tanh", ExtremaConfig(rule="saturation", window_batches=2,
                                                 stride_steps=3))
    assert [det.step() for _ in range(7)] == [True, False, False, True, False, False, True]
    for v in (0.95, -0.95, 0.0):
        det.update([torch.zeros(2, 1), torch.full((2, 1), v), torch.zeros(2, 1)])
    e = det.report()[1]  # only the last two batches remain
    assert e.low.item() and e.low_share.item() == 0.5
    with pytest.raises(ValueError, match="min_share"):
        ExtremaConfig(min_share=1.5)


def test_quantile_rule_on_mean_activations_and_scale_free_inputs():
    """The default rules: a hidden tanh neuron is high when its window mean is above both the
    layer's 85% quantile of means and 0.2 (low: below the 15% quantile and −0.2); an input
    feature is high when ≥ 10% of its samples are above the 85% quantile of the batch's
    pooled inputs, so [0, 1]-scaled and standardised inputs give the same features."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 20, generator=g) * torch.linspace(0.05, 1.0, 20)  # brighter to the right
    means = torch.linspace(-0.6, 0.6, 20)  # hidden neuron j's mean activation
    h = means + 0.01 * torch.randn(64, 20, generator=g)
    for scale in ("unit", "standardised"):
        xs = x if scale == "unit" else (x - x.mean(0)) / x.std(0) * x.std(0).mean()
        det = ExtremaDetector("tanh", ExtremaConfig(window_batches=1, stride_steps=1))
        det.update([xs, h, torch.zeros(64, 3)])
        e = det.report()
        mu = e[1].mean
        q_hi, q_lo = torch.quantile(mu, 0.85), torch.quantile(mu, 0.15)
        assert e[1].high.tolist() == (mu > max(float(q_hi), 0.2)).tolist()
        assert e[1].low.tolist() == (mu < min(float(q_lo), -0.2)).tolist()
        assert 0 < int(e[1].high.sum()) < 20 and 0 < int(e[1].low.sum()) < 20
        hi = torch.quantile(xs.flatten(), 0.85)
        ref = (xs > hi).float().mean(0) >= 0.1
        assert e[0].high.tolist() == ref.tolist()
        if scale == "unit":
            unit_high = e[0].high.clone()
            assert unit_high[-5:].all() and not unit_high[:5].any()
    # a fixed threshold of 1 std finds nothing in [0, 1] inputs (the old rule's failure)
    det = ExtremaDetector("tanh", ExtremaConfig(input_high=1.0, window_batches=1))
    det.update([x, h, torch.zeros(64, 3)])
    assert not det.report()[0].high.any()


def _feed(s, values):
    return [s.observe(v) for v in values]


def test_scheduler_spikes_credits_cooldown_phases():
    cfg = SchedulerConfig(window_steps=4, cooldown_steps=8, phase_epochs=(2, 4),
                          phase_limits=(3, 5, 7), structures_per_event=(2, 4, 10))
    s = GrowthScheduler(cfg)
    calm = [1.0, 2.0, 1.0, 2.0]  # variance 1/3
    wild = [1.0, 3.0, 1.0, 3.0]  # variance 4/3: +300%
    assert not any(_feed(s, calm))  # first window: no previous variance
    assert not any(_feed(s, calm))  # same variance: no spike
    assert _feed(s, wild)[-1] and s.credits == 10  # spike closes with the window
    assert _feed(s, [1.0, 3.0, 1.0, 3.01])[-1] is False  # +0.8% change: no spike
    for _ in range(9):
        _feed(s, calm)
        _feed(s, wild)
    assert s.spikes == 19 and s.credits == 190 and s.should_grow(epoch=0)
    assert s.phase(0) == "coarse" and s.phase(2) == "medium" and s.phase(9) == "fine"
    assert s.budget(0) == 2
    s.record_growth(0, 2)
    assert s.credits == 90 and s.in_cooldown(0) and not s.should_grow(0)
    _feed(s, calm + wild)  # 8 steps: cooldown over; wild→calm (−75%) and calm→wild spike
    assert s.credits == 110 and not s.in_cooldown(0)
    assert s.budget(0) == 1  # coarse limit 3 structures, 2 used
    s.record_growth(0, 1)
    for _ in range(10):
        _feed(s, calm + wild)
    assert s.budget(1) == 0 and not s.should_grow(1)  # coarse exhausted (3 structures)
    assert s.budget(2) == 4 and s.should_grow(2)  # medium: its own limit
    assert s.events[0] == {"step": 88, "epoch": 0, "phase": "coarse", "structures": 2,
                           "exhausted": False}
    with pytest.raises(ValueError, match="phase_epochs"):
        SchedulerConfig(phase_epochs=(5, 2))
    with pytest.raises(ValueError, match="grad_norm"):
        s.observe(float("nan"))


def test_stabilisation_in_epochs_and_termination_when_nothing_is_left_to_grow():
    """The seed's units: a 10-epoch stabilisation after each growth event (spikes still earn
    credits), and growth ends for good after an event that found nothing to grow."""
    s = GrowthScheduler(SchedulerConfig(window_steps=4, credits_per_spike=100))
    for _ in range(3):
        _feed(s, [1.0, 2.0, 1.0, 2.0] + [1.0, 3.0, 1.0, 3.0])
    assert s.should_grow(3)
    s.record_growth(3, 1)
    assert all(s.in_cooldown(e) for e in range(3, 13)) and not s.in_cooldown(13)
    assert not s.should_grow(12) and s.should_grow(13)
    s.record_growth(13, 0, exhausted=True)
    for _ in range(5):
        _feed(s, [1.0, 2.0, 1.0, 2.0] + [1.0, 3.0, 1.0, 3.0])
    assert s.terminated and s.credits >= 100 and not s.should_grow(40)


def _mask(c, idx):
    return torch.isin(torch.arange(c), torch.tensor(idx, dtype=torch.long))


def _report(net, high, low, quiet):
    out = []
    for j in range(net.n_layers + 1):
        c = net.capacity[j]
        hi = _mask(c, high.get(j, []))
        out.append(LayerExtrema(hi, _mask(c, low.get(j, [])), _mask(c, quiet.get(j, [])),
                                hi.float(), torch.zeros(c), torch.zeros(c), torch.ones(c)))
    return out


def test_router_limits_radius_and_fallback():
    net = MinimalNetwork([20, 20, 20, 20, 20, 5], sparsity=0.0, min_edges_per_layer=0, seed=0)
    r = ConnectionRouter(RouterConfig(reciprocal_p=0.0, max_incoming=5), seed=1)
    # 10 high sources in layer 0, only 2 low targets (layer 1) and 4 in layer 4 (out of radius)
    rep = _report(net, high={0: list(range(10))}, low={1: [3, 4], 4: [0, 1, 2, 3]},
                  quiet={2: [5, 6, 7], 3: [8]})
    plan = r.plan(net, rep, max_structures=10)
    assert 1 <= len(plan) <= 10
    incoming: dict = {}
    for st in plan:
        assert st.kind == "route" and st.source[0] == 0
        assert 1 <= len(st.edges) <= 4
        for i, _s, j, t, _v in st.edges:
            assert 1 <= j - i <= 3 and j != 4  # radius 3: layer 4 is out of reach from 0
            assert (j, t) in {(1, 3), (1, 4), (2, 5), (2, 6), (2, 7), (3, 8)}
            incoming[(j, t)] = incoming.get((j, t), 0) + 1
    assert max(incoming.values()) <= 5  # load balancing per event
    assert sum(incoming.values()) == 6 * 5  # all 6 targets filled to the cap
    # low targets come first: each of the first structures holds both low neurons
    assert {(j, t) for _, _, j, t, _ in plan[0].edges} >= {(1, 3), (1, 4)}
    res = r.apply(net, plan)
    assert res["connections_added"] == 30
    assert net.get_connectivity_stats()["skip_connections"] == sum(
        1 for st in plan for e in st.edges if e[2] - e[0] > 1)


def test_router_fan_out_reciprocal_and_budget():
    net = MinimalNetwork([10, 30, 30, 4], sparsity=0.0, min_edges_per_layer=0, seed=0)
    r = ConnectionRouter(RouterConfig(reciprocal_p=1.0), seed=0)
    rep = _report(net, high={0: list(range(10))}, low={1: list(range(30)), 2: list(range(30))},
                  quiet={})
    plan = r.plan(net, rep, max_structures=5)
    assert len(plan) == 5
    for st in plan:
        assert 3 <= len(st.edges) <= 4  # fan-out 3–4
        i, s = st.source
        hidden_targets = [(j, t) for _, _, j, t, _ in st.edges if j < 3]
        assert len(st.reciprocal) == len(hidden_targets)  # p = 1: one per non-output target
        for j, t, m, _u, _v in st.reciprocal:
            assert (j, t) in hidden_targets and j < m <= 3  # forward from the target
    assert r.plan(net, rep, max_structures=0) == []
    with pytest.raises(ValueError, match="fan_out"):
        RouterConfig(fan_out=(4, 3))


def test_router_structures_bundle_sources_by_phase_and_say_when_nothing_is_left():
    """Multi-scale structures: a coarse structure bundles up to bundle[0] sources, a medium
    one bundle[1], a fine one a single source; an event with room but nothing to route is
    'exhausted' (it ends growth)."""
    net = MinimalNetwork([10, 30, 30, 4], sparsity=0.0, min_edges_per_layer=0, seed=0)
    rep = _report(net, high={0: list(range(10))}, low={1: list(range(30)), 2: list(range(30))},
                  quiet={})
    for phase, budget, sizes in (("coarse", 2, [4, 4]), ("medium", 3, [2, 2, 2]),
                                 ("fine", 5, [1] * 5)):
        r = ConnectionRouter(RouterConfig(reciprocal_p=0.0, bundle=(4, 2, 1)), seed=0)
        plan = r.plan(net, rep, max_structures=budget, phase=phase)
        assert [len(st.sources) for st in plan] == sizes, phase
        for st in plan:
            assert {s for s, *_ in [(e[1],) for e in st.edges]} <= {n for _, n in st.sources}
            assert 3 * len(st.sources) <= len(st.edges) <= 4 * len(st.sources)
    empty = _report(net, high={}, low={1: list(range(30))}, quiet={})
    res = ConnectionRouter(seed=0).grow(net, empty, max_structures=2, phase="coarse")
    assert res["exhausted"] and res["connections_added"] == 0
    assert not ConnectionRouter(seed=0).grow(net, rep, 0)["exhausted"]  # no room is not "none"
    with pytest.raises(ValueError, match="phase"):
        ConnectionRouter(seed=0).plan(net, rep, 1, phase="large")


def test_router_clones_saturated_neuron():
    net = MinimalNetwork([6, 5, 3], sparsity=0.5, seed=0, neuron_capacity=0.4)
    rep = _report(net, high={1: [2]}, low={}, quiet={})
    rep[1].high_share[2] = 0.97
    x = torch.randn(7, 6)
    before = net(x).detach()
    res = ConnectionRouter(seed=0).grow(net, rep, max_structures=3)
    assert res["neurons_added"] == 1 and net.widths()[1] == 6
    torch.testing.assert_close(net(x), before, rtol=0, atol=2e-6)


def _scored_net():
    """A small net with a scored batch (activations and ∂L/∂z of every layer recorded)."""
    net = MinimalNetwork([6, 7, 5, 3], sparsity=0.4, seed=3)
    net.record_grads = True
    x, y = torch.randn(9, 6, generator=torch.Generator().manual_seed(0)), torch.arange(9) % 3
    loss = torch.nn.functional.cross_entropy(net(x), y)
    torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad],
                        allow_unused=True)
    net.record_grads = False
    return net


def test_router_dense_gradient_matches_dense_grad_at():
    from morpho_kernels import dense_grad_at
    from morphonet.growth.router import _TargetSpace

    net = _scored_net()
    rep = _report(net, high={}, low={}, quiet={})
    ts = _TargetSpace(net, rep, radius=3, max_incoming=5)
    for i in range(net.n_layers):
        g = ts.grad(i)
        for j in range(i + 1, min(i + net.max_skip, net.n_layers) + 1):
            rows = g[ts.off[j] - ts.off[i + 1]:ts.off[j + 1] - ts.off[i + 1]]  # (cap_j, cap_i)
            dst, src = torch.meshgrid(torch.arange(net.capacity[j]),
                                      torch.arange(net.capacity[i]), indexing="ij")
            ref = dense_grad_at(net.activations[i], net.pre_grads[j], src.flatten(),
                                dst.flatten()).view_as(rows)
            torch.testing.assert_close(rows, ref, rtol=1e-5, atol=1e-6)
        # existing edges marked exactly as the edge lists hold them
        for j in range(i + 1, min(i + net.max_skip, net.n_layers) + 1):
            e = ts.exists[i][ts.off[j] - ts.off[i + 1]:ts.off[j + 1] - ts.off[i + 1]]
            assert torch.equal(e, net.layer(i, j).edges.to_dense() > 0)


def test_router_init_value_is_gradient_aligned_and_fan_in_scaled():
    net = _scored_net()
    r = ConnectionRouter(RouterConfig(reciprocal_p=0.0, init_scale=0.5), seed=0)
    low = {j: list(range(net.capacity[j])) for j in (1, 2)}
    rep = _report(net, high={0: [0, 1, 2]}, low=low, quiet={3: [0, 1, 2]})
    g = {(i, j): (net.pre_grads[j].t() @ net.activations[i]) for i in range(3)
         for j in range(i + 1, 4)}
    indeg = {j: sum(net.layer(i, j).edges.fan_in() for i in range(j)).tolist() for j in (1, 2, 3)}
    plan = r.plan(net, rep, max_structures=3)
    assert plan
    for st in plan:
        for i, s, j, t, v in st.edges:
            gg = float(g[(i, j)][t, s])
            assert gg != 0.0  # a scored net: every candidate here has a gradient
            ref = -math.copysign(1.0, gg) * 0.5 / math.sqrt(indeg[j][t] + 1)
            assert v == pytest.approx(ref, rel=1e-6)
            indeg[j][t] += 1


def _one_path_net(logit: int, seed: int) -> MinimalNetwork:
    """4 → 6 → 6 → 3 with one path to the logits: input 1 → neuron 0 of layer 2 → logit
    ``logit``; one scored batch recorded (activations and ∂L/∂z)."""
    net = MinimalNetwork([4, 6, 6, 3], sparsity=0.0, min_edges_per_layer=0, seed=0)
    net.add_connections(2, 3, torch.tensor([0]), torch.tensor([logit]), 0.5)
    net.add_connections(0, 2, torch.tensor([1]), torch.tensor([0]), 0.5)
    net.record_grads = True
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
    loss = torch.nn.functional.cross_entropy(net(x), torch.arange(8) % 3)
    torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad],
                        allow_unused=True)
    net.record_grads = False
    return net


def test_router_live_first_prefers_targets_with_a_gradient():
    # layer 2 → output only through neuron 0 of layer 2: the other low neurons of layer 2 are
    # dead ends (zero gradient), the quiet output neurons are live
    net = _one_path_net(logit=0, seed=1)
    rep = _report(net, high={0: [0]}, low={2: [0, 1, 2, 3, 4, 5]}, quiet={3: [1, 2]})
    targets = {}
    for live in (False, True):
        r = ConnectionRouter(RouterConfig(reciprocal_p=0.0, fan_out=(4, 4), live_first=live),
                             seed=0)
        (st,) = r.plan(net, rep, max_structures=1)
        targets[live] = {(j, t) for _, _, j, t, _ in st.edges}
    assert targets[False] <= {(2, t) for t in range(6)}  # low first, dead or not
    assert (2, 0) in targets[False]
    # live first: the live low neuron, then the live quiet outputs, then one dead low neuron
    assert {(2, 0), (3, 1), (3, 2)} <= targets[True] and len(targets[True]) == 4


def test_router_complete_dead_ends_gives_every_dead_target_an_onward_edge():
    # only neuron 0 of layer 2 reaches the logits; every low neuron of layer 1 is a dead end
    net = _one_path_net(logit=1, seed=2)
    live = {j: (net.pre_grads[j] != 0).any(0) for j in (1, 2)}  # reference liveness
    assert not bool(live[1].any()) and live[2].nonzero().flatten().tolist() == [0]
    rep = _report(net, high={0: [0, 2]}, low={1: list(range(6))}, quiet={})
    for complete in (False, True):
        r = ConnectionRouter(RouterConfig(reciprocal_p=0.0, complete_dead_ends=complete),
                             seed=0)
        plan = r.plan(net, rep, max_structures=2)
        assert len(plan) == 2
        done: set = set()  # targets completed by an earlier structure are live
        for st in plan:
            dead = [(j, t) for _, _, j, t, _ in st.edges
                    if j < 3 and not bool(live[j][t]) and (j, t) not in done]
            if not complete:
                assert dead and st.onward == []
                continue
            # one onward edge per dead target, into a live neuron (or the logits)
            assert sorted((j, t) for j, t, *_ in st.onward) == sorted(dead)
            done.update(dead)
            for j, _t, m, u, v in st.onward:
                assert j < m <= 3 and (m == 3 or bool(live[m][u])) and v != 0.0
            assert st.n_connections == len(st.edges) + len(st.onward)
        assert not complete or done
    # applied: every routed target now has an outgoing edge (a path to the logits)
    res = r.apply(net, plan)
    assert res["connections_added"] == sum(st.n_connections for st in plan)
    for st in plan:
        for _, _, j, t, _ in st.edges:
            assert any(bool((net.layer(j, m).edges.to_dense()[:, t] > 0).any())
                       for m in range(j + 1, 4)), (j, t)


def test_settings_round_trip_through_dicts():
    from morphonet.growth.extrema import ExtremaConfig
    from morphonet.growth.router import RouterConfig
    from morphonet.growth.scheduler import SchedulerConfig

    for cls, change in ((ExtremaConfig, {"high_fraction": 0.9}),
                        (RouterConfig, {"max_incoming": 7}),
                        (SchedulerConfig, {})):
        cfg = cls(**change)
        d = cfg.to_dict()
        assert isinstance(d, dict) and all(d[k] == v for k, v in change.items())
        assert cls.from_dict(d) == cfg
        with pytest.raises(ValueError, match="no_such_field"):
            cls.from_dict({**d, "no_such_field": 1})
    with pytest.raises(ValueError, match="max_incoming|incoming"):
        RouterConfig.from_dict({**RouterConfig().to_dict(), "max_incoming": -1})
