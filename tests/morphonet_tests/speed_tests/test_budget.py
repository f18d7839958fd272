"""The latency budget: the planner on a cost model it is given (pure logic), training with a
plan (each layer at its planned density), the plan's export, the measured cost model."""

import itertools
import math

import pytest
import torch

from morphonet.masks import MorphoConfig, MorphoNetMLP
from morphonet.speed import (
    BudgetError,
    CostModel,
    LayerShape,
    Plan,
    PlannedTrainer,
    export_plan,
    measure_costs,
    plan_for_budget,
    solve_plan,
)
from morphonet.speed.budget import GRANULARITY_COST

A, B, C = LayerShape("a", 1024, 64), LayerShape("b", 1024, 1024), LayerShape("c", 10, 1024)
GRID = [0.01, 0.05, 0.1, 0.3, 0.6, 1.0]


def _lin(t0, slope):
    return [[d, t0 + slope * d] for d in GRID]


def _cost():
    # made-up figures: dense b 10 ms; an edge list pays off below ~50%, block32 below ~80%
    return CostModel.from_figures({
        A: {"dense": 1.0, "edge": _lin(0.05, 2.0), "block32": _lin(0.05, 1.2)},
        B: {"dense": 10.0, "edge": _lin(0.2, 20.0), "block32": _lin(0.2, 12.0)},
        C: {"dense": 0.1, "edge": _lin(0.02, 0.2), "block32": _lin(0.05, 0.1)},
    }, rows=256)


def _predicted(plan, cost, other):
    fmt = {"dense": "dense"}
    return other + sum(cost.layer_ms(s, fmt.get(lp.format, lp.format), lp.density)
                       for s, lp in zip([A, B, C], plan.layers))


def _capacity(plan):
    total = sum(s.params for s in (A, B, C))
    g = GRANULARITY_COST[plan.kind]
    return sum(g * lp.out_features * lp.in_features / total * -math.log(lp.density)
               for lp in plan.layers)


@pytest.mark.parametrize("speedup", [2.0, 3.0, 6.0])
def test_plan_meets_budget_on_given_costs(speedup):
    cost, other = _cost(), 1.0
    dense = other + 11.1
    plan = solve_plan([A, B, C], cost, dense / speedup, dense_ms=dense, other_ms=other)
    assert plan.predicted_ms <= dense / speedup + 1e-9
    assert plan.predicted_ms == pytest.approx(_predicted(plan, cost, other))
    if plan.kind != "neuron":
        assert plan.capacity_loss == pytest.approx(_capacity(plan))
    assert plan.predicted_speedup >= speedup - 1e-9
    assert set(plan.alternatives) == {"element", "block32", "neuron"}  # a chain: neuron too
    chosen = plan.alternatives[plan.kind]
    for v in plan.alternatives.values():  # the least capacity loss among the feasible
        if v["feasible"]:
            assert chosen["capacity_loss"] <= v["capacity_loss"] + 1e-12
    assert plan.layers[1].density < 1.0  # the big layer is sparse at every one of these


def test_plan_is_near_the_best_on_a_grid():
    cost, other, budget = _cost(), 1.0, 12.1 / 3
    plan = solve_plan([A, B, C], cost, budget, other_ms=other, kinds=["block32"])
    grid = [math.exp(math.log(0.005) * (1 - i / 40)) for i in range(41)]
    total = sum(s.params for s in (A, B, C))
    best = math.inf
    for da, db, dc in itertools.product(grid, grid, [plan.layers[2].density]):
        t = other + sum(cost.layer_ms(s, "block32", d) for s, d in zip((A, B, C), (da, db, dc)))
        if t <= budget:
            best = min(best, sum(1.3 * s.params / total * -math.log(d)
                                 for s, d in zip((A, B, C), (da, db, dc))))
    assert plan.capacity_loss <= best * 1.02


def test_dense_layers_stay_dense_when_the_budget_allows():
    plan = solve_plan([A, B, C], _cost(), 11.1 / 1.05, other_ms=0.0)
    assert plan.layers[2].format == "dense" and plan.layers[2].density == 1.0


def test_neuron_plan_on_a_chain():
    a, b, c = LayerShape("l0", 512, 40), LayerShape("l1", 512, 512), LayerShape("l2", 10, 512)
    cost = CostModel.from_figures({s: {"dense": t} for s, t in ((a, 0.2), (b, 2.0),
                                                                (c, 0.05))}, rows=64)
    plan = solve_plan([a, b, c], cost, 2.25 / 3, other_ms=0.0, kinds=["neuron"])
    q = plan.layers[0].density
    assert plan.granularity == "neuron" and plan.layers[1].density == pytest.approx(q)
    assert plan.layers[2].format == "dense"
    assert 0.2 * q + 2.0 * q * q + 0.05 * q == pytest.approx(plan.predicted_ms)
    assert plan.predicted_ms <= 2.25 / 3 + 1e-9


def test_infeasible_budget_says_the_best():
    with pytest.raises(BudgetError, match=r"target_speedup ≤"):
        solve_plan([A, B, C], _cost(), 0.9, other_ms=1.0)  # less than the rest of the model


def test_bad_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        plan_for_budget([A], target_speedup=3, latency_ms=2, cost_model=_cost())
    with pytest.raises(ValueError, match="exactly one"):
        plan_for_budget([A], cost_model=_cost())
    with pytest.raises(ValueError, match="target_speedup"):
        plan_for_budget([A], target_speedup=1.0, cost_model=_cost())
    with pytest.raises(TypeError, match="latency_ms"):
        plan_for_budget([A], latency_ms="fast", cost_model=_cost())
    with pytest.raises(TypeError, match=r"model_or_shapes\[0\]"):
        plan_for_budget([(1024, 64)], target_speedup=2, cost_model=_cost())
    with pytest.raises(ValueError, match="budget_ms"):
        solve_plan([A], _cost(), 0.0)
    with pytest.raises(ValueError, match="kinds"):
        solve_plan([A], _cost(), 1.0, kinds=["block16"])
    with pytest.raises(ValueError, match="out_features"):
        LayerShape("x", 0, 3)


def test_plan_for_budget_shapes_and_round_trip():
    plan = plan_for_budget([A, B, C], target_speedup=3, cost_model=_cost())
    assert plan.budget_ms == pytest.approx(11.1 / 3)
    again = Plan.from_dict(plan.to_dict())
    assert again == plan
    text = plan.describe()
    assert "budget" in text and "b (1024×1024)" in text and "alternative" in text


def test_cost_model_interpolates_and_never_extrapolates_down():
    cost = _cost()
    assert cost.layer_ms(B, "edge", 0.2) == pytest.approx(0.2 + 20 * 0.2)
    assert cost.layer_ms(B, "edge", 0.001) == pytest.approx(0.2 + 20 * 0.01)
    assert cost.layer_ms(B, "dense", 0.5) == 10.0
    with pytest.raises(KeyError, match="block64"):
        cost.layer_ms(B, "block64", 0.5)
    with pytest.raises(KeyError, match="x"):
        cost.layer_ms(LayerShape("x", 3, 3), "edge", 0.5)


def test_measure_costs_cached_per_machine(tmp_path):
    shapes = [LayerShape("s", 64, 48)]
    lines = []
    cache = str(tmp_path / "cost.json")
    cm = measure_costs(shapes, 8, formats=("edge", "block16"), densities=(0.1, 1.0),
                       rounds=1, cache=cache, log=lines.append)
    assert len(lines) == 1 and cm.layer_ms(shapes[0], "edge", 0.1) > 0
    lines.clear()
    again = measure_costs(shapes, 8, formats=("edge", "block16"), densities=(0.1, 1.0),
                          rounds=1, cache=cache, log=lines.append)
    assert lines == [] and again.entries == cm.entries  # nothing timed again
    with pytest.raises(ValueError, match="formats"):
        measure_costs(shapes, 8, formats=("csr",))
    # other densities than the cache holds: timed, not answered from the old grid
    finer = measure_costs(shapes, 8, formats=("edge", "block16"), densities=(0.05, 0.1, 1.0),
                          rounds=1, cache=cache, log=lines.append)
    assert len(lines) == 1
    assert [d for d, _ in finer.entry(shapes[0])["edge"]] == [0.05, 0.1, 1.0]


def _data(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return x, (x[:, :4].argmax(1))


@pytest.mark.parametrize("kind", ["element", "block16", "neuron"])
def test_planned_training_meets_each_layer_density_and_exports_exactly(kind):
    base = MorphoConfig(input_dim=12, hidden_dims=[48, 48], n_classes=4, epochs=4,
                        warmup_epochs=0, use_skip_connections=False, seed=0, batch_size=32)
    shapes = [LayerShape("layers.0", 48, 12), LayerShape("layers.1", 48, 48),
              LayerShape("layers.2", 4, 48)]
    fmt = "edge" if kind == "element" else kind
    cost = CostModel.from_figures({s: {"dense": s.params / 1e3, fmt: _lin(0.01, s.params / 1e3)}
                                   for s in shapes}, rows=32)
    plan = solve_plan(shapes, cost, 0.5 * sum(s.params for s in shapes) / 1e3,
                      kinds=[kind])
    cfg = plan.morpho_config(base)
    assert cfg.mask_granularity == plan.granularity
    model = MorphoNetMLP(cfg)
    x, y = _data()
    PlannedTrainer(model, plan, cfg, log=lambda s: None).train(x[:160], y[:160], x[160:],
                                                               y[160:], verbose=False)
    for layer, lp in zip(model.masked_layers(), plan.layers):
        unit = int(layer.unit_sizes().max())
        live = model.layer_live(layer)
        assert abs(live - lp.density * layer.n_connections()) <= unit, lp.name
    model.eval()
    out = export_plan(model, plan)
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)


def test_cost_model_fits_a_non_decreasing_curve():
    s = LayerShape("n", 64, 64)
    noisy = [[0.1, 1.0], [0.2, 3.0], [0.3, 1.0], [0.5, 4.0], [1.0, 5.0]]
    cost = CostModel.from_figures({s: {"dense": 4.0, "edge": noisy}}, rows=8)
    fitted = [cost.layer_ms(s, "edge", d) for d, _ in noisy]
    assert fitted == pytest.approx([1.0, 2.0, 2.0, 4.0, 5.0])  # 3 and 1 pooled to their mean


def test_planned_transformer_exports_with_gates_folded():
    from morphonet.masks import MorphoNetTransformer
    from morphonet.speed import layer_shapes

    base = MorphoConfig(network_type="transformer", task="lm", d_model=32, n_heads=4,
                        n_layers=1, max_seq_len=8, epochs=3, warmup_epochs=0, seed=0,
                        batch_size=16)
    shapes = layer_shapes(MorphoNetTransformer(base, vocab_size=11))
    assert [s.name for s in shapes][:4] == ["blocks.0.attn.q", "blocks.0.attn.k",
                                            "blocks.0.attn.v", "blocks.0.attn.o"]
    cost = CostModel.from_figures({s: {"dense": s.params / 1e3,
                                       "edge": _lin(0.002, s.params / 1e3)} for s in shapes},
                                  rows=16)
    plan = solve_plan(shapes, cost, 0.6 * sum(s.params for s in shapes) / 1e3,
                      kinds=["element"])
    assert {lp.format for lp in plan.layers} <= {"edge", "dense"}
    cfg = plan.morpho_config(base)
    model = MorphoNetTransformer(cfg, vocab_size=11)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 11, (64, 8), generator=g)
    y = torch.roll(x, -1, 1)
    PlannedTrainer(model, plan, cfg, log=lambda s: None).train(x[:48], y[:48], x[48:], y[48:],
                                                               verbose=False)
    with torch.no_grad():  # gates away from 1, one head pruned: the export must fold both
        model.attentions()[0].gates().mask_logits.copy_(torch.tensor([0.3, -1.0, 2.0, 0.0]))
    model.prune_heads({0: [1]})
    model.eval()
    out = export_plan(model, plan)
    assert all(a.head_gates is None for a in out.attentions())
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)


def test_dense_figure_above_a_full_density_format_is_load():
    s = LayerShape("d", 64, 64)
    cost = CostModel.from_figures({s: {"dense": 9.0, "block32": [[0.5, 2.0], [1.0, 4.0]]}},
                                  rows=8)
    assert cost.dense_ms(s) == 4.0
    ok = CostModel.from_figures({s: {"dense": 3.0, "block32": [[0.5, 2.0], [1.0, 4.0]]}}, rows=8)
    assert ok.dense_ms(s) == 3.0


def test_transformer_is_never_planned_with_neuron_masks():
    from morphonet.masks import MorphoNetTransformer
    from morphonet.speed import layer_shapes

    cfg = MorphoConfig(network_type="transformer", task="lm", d_model=32, n_heads=4,
                       n_layers=1, max_seq_len=8)
    model = MorphoNetTransformer(cfg, vocab_size=11)
    shapes = layer_shapes(model)  # q k v o ff1 ff2 head: a chain of shapes, but not shrinkable
    cost = CostModel.from_figures({s: {"dense": 10.0, "edge": _lin(0.1, 10.0)}
                                   for s in shapes}, rows=4 * 8)
    plan = plan_for_budget(model, target_speedup=1.5, batch=4, cost_model=cost, rounds=1)
    assert "neuron" not in plan.alternatives and plan.granularity == "element"
    mlp = MorphoNetMLP(MorphoConfig(input_dim=12, hidden_dims=[48, 48], n_classes=4,
                                    use_skip_connections=False))
    cost = CostModel.from_figures({s: {"dense": 10.0, "edge": _lin(0.1, 10.0)}
                                   for s in layer_shapes(mlp)}, rows=4)
    assert "neuron" in plan_for_budget(mlp, target_speedup=1.5, batch=4, cost_model=cost,
                                       rounds=1).alternatives


def test_layer_densities_hook_takes_the_group_rule():
    from morphonet.speed import EnforceLayerDensities

    cfg = MorphoConfig(input_dim=12, hidden_dims=[48], n_classes=4, use_skip_connections=False)
    model = MorphoNetMLP(cfg)
    with pytest.raises(ValueError, match="group must be"):
        EnforceLayerDensities(model, [0.5, 0.5], cfg, group="world")
    assert EnforceLayerDensities(model, [0.5, 0.5], cfg, group="auto").group is None


@pytest.mark.parametrize("seed", range(6))
def test_planned_pruning_keeps_every_output_reached(seed):
    """Per-layer pruning to planned densities goes through the connectivity rule too: one
    32×32 block per 64-wide layer, chosen by each layer on its own, would often meet no block
    of the next layer."""
    import warnings

    from morphonet.speed import EnforceLayerDensities

    cfg = MorphoConfig(input_dim=64, hidden_dims=[64, 64], n_classes=10, epochs=4,
                       warmup_epochs=0, use_skip_connections=False, mask_granularity="block",
                       block_size=32, seed=seed)
    model = MorphoNetMLP(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.masked_layers():
            layer.mask_logits.copy_(torch.randn(layer.mask_logits.shape, generator=g))
    hook = EnforceLayerDensities(model, [0.25, 0.25, 0.5], cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the rule says when it fires
        hook.on_train_end(None, {"epoch": cfg.epochs - 1})
    assert bool(model.output_reach().all())
