"""Item 6 of issue 20: the adaptive learning-rate rules, each against its formula (NOTES.md),
over the parameter groups of a growing network."""

import math

import pytest
from evo_data import toy_split

import morphonet.evolution as evo
from morphonet.evolution.optim import build_optimizer

BASE = 0.05


def _setup():
    """A 3-stage network (depths 0, 0.5, 1) with a residual block made at epoch 3."""
    net = evo.create_standard_network([4, 6, 5, 3], 0.5, seed=0)
    net.epoch = 3
    net.add_residual_block(1, hidden=2)
    opt = build_optimizer(net.parameter_groups(), lr=BASE)
    return net, opt


def _lrs(opt):
    return {g["name"]: g["lr"] for g in opt.param_groups}


def test_growth_phase_rates_switch_at_20_and_50():
    net, opt = _setup()
    s = evo.GrowthPhaseScheduler(optimizer=opt, network=net)
    for epoch, want in [(0, 0.1), (19, 0.1), (20, 0.01), (49, 0.01), (50, 0.001), (99, 0.001)]:
        s.step(epoch)
        assert all(v == pytest.approx(want) for v in _lrs(opt).values())
        assert s.get_last_lr() == list(_lrs(opt).values())


def test_exponential_backoff_is_base_times_095_power_epoch():
    net, opt = _setup()
    s = evo.ExponentialBackoffScheduler(optimizer=opt, network=net)
    s.step()
    s.step()
    s.step(7)
    assert all(v == pytest.approx(BASE * 0.95 ** 7) for v in _lrs(opt).values())
    assert s.state_dict()["last_epoch"] == 7


def test_layerwise_thirds():
    net, opt = _setup()
    evo.LayerwiseAdaptiveRates(optimizer=opt, network=net).step(0)
    lr = _lrs(opt)
    u = net.units()
    for name, v in lr.items():
        d = u[name]["depth"]
        want = 0.02 if d < 1 / 3 else 0.01 if d < 2 / 3 else 0.005
        assert v == pytest.approx(want)
    assert sorted(set(lr.values())) == pytest.approx([0.005, 0.01, 0.02])


def test_layer_age_aware_formula():
    net, opt = _setup()
    s = evo.LayerAgeAwareScheduler(optimizer=opt, network=net)
    s.step(10)
    u = net.units()
    for name, v in _lrs(opt).items():
        age = 10 - u[name]["birth"]
        want = BASE * (0.1 + 0.9 * u[name]["depth"]) * math.exp(-age / 50)
        assert v == pytest.approx(want)
    assert _lrs(opt)["block3"] > _lrs(opt)["stage1"]  # younger, same depth


def test_extrema_phase_by_extrema_rate():
    net, opt = _setup()
    s = evo.ExtremaPhaseScheduler(optimizer=opt, network=net)
    for rate, factor in [(0.5, 1.0), (0.31, 1.0), (0.3, 0.1), (0.2, 0.1), (0.1, 0.01),
                         (0.0, 0.01)]:
        s.observe({"extrema_ratio": rate})
        s.step(0)
        assert all(v == pytest.approx(BASE * factor) for v in _lrs(opt).values())
    with pytest.raises(ValueError, match="low"):
        evo.ExtremaPhaseScheduler(high=0.1, low=0.3)


def test_scale_dependent_and_soft_clamping():
    net, opt = _setup()
    s = evo.ScaleDependentScheduler(optimizer=opt, network=net)
    s.step(0)
    sizes = {n: u["size"] for n, u in net.units().items()}
    vals = sorted(sizes.values())
    med = (vals[len(vals) // 2] + vals[(len(vals) - 1) // 2]) / 2
    for name, v in _lrs(opt).items():
        assert v == pytest.approx(BASE * (med / sizes[name]) ** 0.5)
    c = evo.SoftClampingScheduler(max_lr=0.02, optimizer=opt, network=net)
    c.step(0)
    assert all(v == pytest.approx(0.02 * math.tanh(BASE / 0.02)) for v in _lrs(opt).values())


def test_unified_is_the_product_then_the_clamps():
    net, opt = _setup()
    rules = [evo.ExponentialBackoffScheduler(gamma=0.9), evo.LayerAgeAwareScheduler(),
             evo.ExtremaPhaseScheduler(), evo.SoftClampingScheduler(max_lr=0.03)]
    s = evo.UnifiedAdaptiveLearning(rules, optimizer=opt, network=net)
    s.observe({"extrema_ratio": 0.2})
    s.step(4)
    u = net.units()
    for name, v in _lrs(opt).items():
        f = 0.9 ** 4 * (0.1 + 0.9 * u[name]["depth"]) * math.exp(
            -(4 - u[name]["birth"]) / 50) * 0.1
        assert v == pytest.approx(0.03 * math.tanh(BASE * f / 0.03))


def test_rules_run_as_hooks_through_the_trainer_and_see_the_analysis():
    (xt, yt), (xv, yv) = toy_split()
    net = evo.create_standard_network([6, 8, 3], 0.4, seed=0)
    ctx = evo.NetworkContext(net, (xt, yt), val_data=(xv, yv))
    rule = evo.UnifiedAdaptiveLearning([evo.ExponentialBackoffScheduler(),
                                        evo.ExtremaPhaseScheduler()])
    ctx.hooks.append(rule)
    system = evo.ComposableEvolutionSystem()
    system.add_component(evo.StandardExtremaAnalyzer(max_batches=2))
    system.add_component(evo.ResidualBlockGrowthStrategy(max_blocks=1))
    system.add_component(evo.StandardNetworkTrainer(epochs=2, learning_rate=0.01))
    ctx = system.evolve_network(ctx, num_iterations=2)
    rate = ctx.analysis["extrema_ratio"]
    phase = 1.0 if rate > 0.3 else 0.1 if rate > 0.1 else 0.01
    # the last epoch trained was epoch 3; every group (the block's too) follows the rule
    assert len(ctx.optimizer.param_groups) == 3
    for g in ctx.optimizer.param_groups:
        assert g["lr"] == pytest.approx(0.01 * 0.95 ** 3 * phase)
