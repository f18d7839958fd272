"""The schedules and MorphoTrainer: the enforced sparsity, per-layer budgets, model selection."""


import pytest
import torch
from masks_data import blobs as _blobs

from morphonet import (
    MorphoConfig,
    MorphoNetCNN,
    MorphoNetMLP,
    MorphoTrainer,
    create_morphonet,
)
from morphonet.loop import evaluate
from morphonet.masks.schedule import (
    _prune_ranked,
    enforce_sparsity,
    layer_budgets,
    target_sparsity_at,
    temperature_at,
)

# ---------------------------------------------------------------------------- schedule / trainer


def test_schedule_shapes_and_temperature():
    cfg = MorphoConfig(epochs=40, warmup_epochs=5, target_sparsity=0.8)
    assert temperature_at(cfg, 0) == 2.0 and temperature_at(cfg, 39) == pytest.approx(0.5375)
    assert target_sparsity_at(cfg, 4) == 0.0
    assert target_sparsity_at(cfg, 29) == pytest.approx(0.8)  # ¾ of the epochs
    cos = [target_sparsity_at(cfg, e) for e in range(5, 30)]
    lin = [target_sparsity_at(cfg.replace(sparsity_schedule="linear"), e) for e in range(5, 30)]
    assert all(a <= b for a, b in zip(cos, cos[1:])) and cos[0] < lin[0]
    assert target_sparsity_at(cfg.replace(sparsity_schedule="constant"), 5) == 0.8


@pytest.mark.parametrize("granularity, schedule, target", [
    ("element", "cosine", 0.7), ("element", "linear", 0.9), ("block", "constant", 0.6),
    ("neuron", "cosine", 0.5)])
def test_trainer_lands_on_the_target_sparsity(granularity, schedule, target):
    x, y = _blobs(240)
    hidden = [128, 128] if granularity == "block" else [32, 16]  # 16×16 blocks: 1.3% a unit
    cfg = MorphoConfig(input_dim=20, n_classes=5, hidden_dims=hidden, epochs=12,
                       warmup_epochs=2, target_sparsity=target, sparsity_schedule=schedule,
                       mask_granularity=granularity, block_size=16, seed=0, device="cpu")
    model = MorphoNetMLP(cfg)
    stats = MorphoTrainer(model).train(x[:200], y[:200], x[200:], y[200:], verbose=False)
    assert abs(stats["final_sparsity"] - target) <= 0.02
    assert stats["final_density"] == pytest.approx(1 - stats["final_sparsity"])
    assert stats["effective_params"] < stats["total_params"]
    # the schedule is progressive: sparsity never falls and rises over several epochs
    hist = stats["sparsity_history"]
    assert all(a <= b + 1e-12 for a, b in zip(hist, hist[1:]))
    if schedule != "constant":
        assert len({round(h, 4) for h in hist}) >= 4


def _moons_mlp(**kw):
    cfg = MorphoConfig(input_dim=2, n_classes=2, hidden_dims=[128, 64], seed=0, device="cpu",
                       **kw)
    return MorphoNetMLP(cfg)


def test_erk_and_uniform_budgets_water_fill_by_hand():
    model = _moons_mlp()  # weights 128×2, 64×128, 2×64: 8576 connections
    # ERK: density ∝ (out+in)/(out·in) = 0.508, 0.0234, 0.516 → at 25% density the two small
    # layers would exceed 1 and stay whole; the middle one keeps the rest: 2144 − 256 − 128
    assert layer_budgets(model, 0.75, "erk") == [256, 1760, 128]
    # uniform: 25% of each (64 + 2048 + 32 = 2144, the model's floor exactly)
    assert layer_budgets(model, 0.75, "uniform") == [64, 2048, 32]
    # a layer already pruned harder than its share cannot grow back: the others give less
    first = model.masked_layers()[0]
    drop = torch.zeros_like(first.mask_logits, dtype=torch.bool)
    drop[:120] = True  # 240 of the 256 connections
    first.prune_units(drop)
    assert layer_budgets(model, 0.75, "erk") == [16, 2000, 128]
    assert sum(layer_budgets(model, 0.6, "uniform")) == 8576 - int(0.6 * 8576)
    # bounds that do not bind: 20→64→64→5 at 90% keeps 570 of 5696; ERK shares 84:128:69
    # (170.4, 259.6, 140.0: largest remainders first), uniform 1280:4096:320
    small = MorphoNetMLP(MorphoConfig(input_dim=20, n_classes=5, hidden_dims=[64, 64],
                                      device="cpu"))
    assert layer_budgets(small, 0.9, "erk") == [170, 260, 140]
    assert layer_budgets(small, 0.9, "uniform") == [128, 410, 32]
    # every layer keeps at least its largest live unit (a layer's last unit is never pruned):
    # 16-blocks of 64→64→16→5 at 75% keep 1300 of 5200; uniform would give the 80-weight
    # output layer (one unit) 20 and the 1024-weight layer (4 units of 256) 244
    blocks = MorphoNetMLP(MorphoConfig(input_dim=64, n_classes=5, hidden_dims=[64, 16],
                                       mask_granularity="block", block_size=16, device="cpu"))
    assert layer_budgets(blocks, 0.75, "uniform") == [964, 256, 80]
    # the floor is the largest unit, not the edge ones: 20 inputs in 16-blocks are units of
    # 256 and 64 connections (and the 5-class head one unit of 5·16)
    edges = MorphoNetMLP(MorphoConfig(input_dim=20, n_classes=5, hidden_dims=[32, 16],
                                      mask_granularity="block", block_size=16, device="cpu"))
    assert layer_budgets(edges, 0.95, "uniform") == [256, 256, 80]
    with pytest.raises(ValueError, match="distribution"):
        layer_budgets(model, 0.5, "global")
    with pytest.raises(ValueError, match="target"):
        layer_budgets(model, 1.0, "erk")
    with pytest.raises(ValueError, match="distribution"):
        enforce_sparsity(model, 0.5, distribution="layerwise")
    with pytest.raises(ValueError, match="sparsity_distribution"):
        MorphoConfig(sparsity_distribution="erk2")


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("granularity", ["element", "block"])
def test_enforce_per_layer_distribution_prunes_each_layer_by_its_own_ranking(distribution,
                                                                              granularity):
    model = _moons_mlp(mask_granularity=granularity, block_size=16)
    torch.manual_seed(3)
    for layer in model.masked_layers():
        with torch.no_grad():
            layer.mask_logits.normal_()
    before = [layer.unit_mask().detach().clone() for layer in model.masked_layers()]
    for target in (0.3, 0.6, 0.75):  # progressive, as the trainer calls it
        enforce_sparsity(model, target, "mask", distribution)
        budgets = layer_budgets(model, target, distribution)
        live = [layer.n_live() for layer in model.masked_layers()]
        unit = 1 if granularity == "element" else 256
        assert all(abs(a - b) <= unit for a, b in zip(live, budgets)), (live, budgets)
        assert abs(model.sparsity() - target) <= 0.02
    for layer, m0 in zip(model.masked_layers(), before):
        pruned = layer.pruned_units()
        if pruned.any() and (~pruned).any():  # within a layer the smallest masks went first
            assert m0[pruned].max() <= m0[~pruned].min()
    if granularity == "element":
        assert model.n_live() == 8576 - int(0.75 * 8576)


@pytest.mark.parametrize("hidden, distribution, target", [
    ([96, 48], "uniform", 0.5), ([80, 80, 80], "erk", 0.6)])
def test_per_layer_rounding_carries_to_the_next_layer(hidden, distribution, target):
    # 32-blocks (1024 connections a unit): each layer rounds its budget to whole units; the
    # remainder carries on, so the model lands on the target (rounded layer by layer without
    # the carry: 55.8% and 57.1%)
    model = MorphoNetMLP(MorphoConfig(input_dim=48, n_classes=5, hidden_dims=hidden,
                                      mask_granularity="block", block_size=32, device="cpu"))
    torch.manual_seed(0)
    for layer in model.masked_layers():
        with torch.no_grad():
            layer.mask_logits.normal_()
    enforce_sparsity(model, target, "mask", distribution)
    assert abs(model.sparsity() - target) <= 0.01


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_per_layer_pruning_keeps_each_layers_best_unit_and_ranks_by_saliency(distribution,
                                                                             monkeypatch):
    # down to one unit a layer, which cuts the network: the ranking without the connectivity
    # rule (that rule: test_connectivity.py)
    from morphonet.masks import schedule
    monkeypatch.setattr(schedule, "_CONNECTIVITY_RULE", False)
    model = _moons_mlp(prune_score="saliency")
    torch.manual_seed(4)
    for layer in model.masked_layers():
        with torch.no_grad():
            layer.mask_logits.normal_()
    sal = [layer.get_mask() * layer.weight.detach().abs() for layer in model.masked_layers()]
    enforce_sparsity(model, 0.6, "saliency", distribution)
    assert model.masked_layers()[1].pruned_units().any()  # (ERK: the others stay whole)
    for layer, s0 in zip(model.masked_layers(), sal):
        pruned = layer.pruned_units()
        if pruned.any():  # saliency, not the mask value, ranked
            assert s0[pruned].max() <= s0[~pruned].min()
    enforce_sparsity(model, 0.9999, "saliency", distribution)  # asks for less than a unit each
    for layer, s0 in zip(model.masked_layers(), sal):
        live = ~layer.pruned_units()
        assert int(live.sum()) == 1 and bool(live.reshape(-1)[s0.reshape(-1).argmax()])
    # a carry can ask one layer for more than it has: its best unit still stays
    fresh = _moons_mlp().masked_layers()[0]
    best = fresh.unit_mask().detach().reshape(-1).argmax()
    assert _prune_ranked([fresh], 10**6, "mask") == 255
    assert not fresh.pruned_units().reshape(-1)[best]


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("input_dim, hidden, granularity, target", [
    (64, [128, 64], "block", 0.75),  # 32-blocks: a unit is 3-12% of a layer
    (64, [64, 16], "block", 0.75),   # 16-blocks: the small layers' last units bind
    (20, [48, 24], "neuron", 0.6),
])
def test_per_layer_distributions_land_on_the_target_with_big_units(distribution, input_dim,
                                                                   hidden, granularity, target):
    x = torch.randn(160, input_dim)
    y = torch.randint(0, 5, (160,))
    cfg = MorphoConfig(input_dim=input_dim, n_classes=5, hidden_dims=hidden, epochs=8,
                       warmup_epochs=1, target_sparsity=target, mask_granularity=granularity,
                       block_size=32 if hidden[0] == 128 else 16, seed=0, device="cpu",
                       sparsity_distribution=distribution)
    stats = MorphoTrainer(MorphoNetMLP(cfg)).train(x[:120], y[:120], x[120:], y[120:],
                                                   verbose=False)
    assert abs(stats["final_sparsity"] - target) <= 0.02
    assert stats["best_val_acc"] is not None  # some epoch reached the target


def _transformer(**kw):
    kw = {"mask_granularity": "neuron", **kw}
    return create_morphonet("transformer", vocab_size=50, n_classes=3, d_model=64, n_heads=4,
                            n_layers=2, max_seq_len=16, seed=0, device="cpu", **kw)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("heads, target", [(None, 0.6), (None, 0.8),
                                           ({0: [0, 1, 2], 1: [1, 2, 3]}, 0.7)])
def test_per_layer_distributions_keep_every_transformer_layer_near_its_budget(distribution,
                                                                            heads, target):
    # neuron masks: q/k/v/o/ff units of 64-256 connections, the head's single connections
    model = _transformer(sparsity_distribution=distribution)
    if heads:
        model.prune_heads(heads)  # 6 of 8 heads: o-neurons straddle dead heads
    budgets = layer_budgets(model, target, distribution)
    units = [max(int(layer.unit_sizes().max()), 1) for layer in model.masked_layers()]
    enforce_sparsity(model, target, "mask", distribution)
    for layer, keep, unit in zip(model.masked_layers(), budgets, units):
        assert abs(model.layer_live(layer) - keep) <= unit, (layer, keep)
    assert abs(model.sparsity() - target) <= 0.02


def test_layer_density_counts_pruned_heads_as_dead():
    x = torch.randint(0, 50, (40, 16))
    y = torch.randint(0, 3, (40,))
    model = _transformer(epochs=2, warmup_epochs=0, target_sparsity=0.3)
    model.prune_heads({0: [0, 1]})
    stats = MorphoTrainer(model).train(x[:30], y[:30], x[30:], y[30:], verbose=False)
    o = model.attentions()[0].o  # its neurons span the dead heads' columns
    assert stats["layer_density"][model.masked_layers().index(o)] == pytest.approx(
        model.layer_live(o) / o.n_connections())
    assert model.layer_live(o) <= o.n_live() // 2  # half of every live o-neuron is dead


def test_trainer_enforces_erk_and_keeps_the_first_layer_denser():
    x, y = _blobs(240)
    common = dict(input_dim=20, n_classes=5, hidden_dims=[64, 64], epochs=6, warmup_epochs=1,
                  target_sparsity=0.8, seed=0, device="cpu")
    dens = {}
    for dist in ("global", "erk"):
        model = MorphoNetMLP(MorphoConfig(sparsity_distribution=dist, **common))
        stats = MorphoTrainer(model).train(x[:200], y[:200], x[200:], y[200:], verbose=False)
        assert abs(stats["final_sparsity"] - 0.8) <= 0.02
        dens[dist] = [layer.n_live() / layer.n_connections() for layer in model.masked_layers()]
        assert stats["layer_density"] == dens[dist]
    # ERK: (84/1280, 128/4096, 69/320) ∝ density; the output layer (5×64) is the densest
    assert dens["erk"][2] > dens["erk"][0] > dens["erk"][1]
    assert dens["erk"] != dens["global"]


def test_trainer_keeps_the_best_validation_epoch():
    x, y = _blobs(400, seed=1)
    cfg = MorphoConfig(input_dim=20, n_classes=5, hidden_dims=[32], epochs=10,
                       warmup_epochs=1, seed=0, device="cpu")
    model = MorphoNetMLP(cfg)
    seen = []
    stats = MorphoTrainer(model).train(x[:300], y[:300], x[300:], y[300:], verbose=False,
                                       callback=seen.append)
    eligible = [r for r in seen if r["sparsity"] >= cfg.target_sparsity - 0.02]
    best = max(eligible, key=lambda r: r["val_acc"])
    assert stats["best_val_acc"] == best["val_acc"] and stats["best_epoch"] == best["epoch"]
    assert evaluate(model, x[300:], y[300:])[1] == pytest.approx(stats["best_val_acc"])
    for key in ("train_time", "final_loss", "final_sparsity", "total_params",
                "effective_params", "best_val_acc", "loss_history", "sparsity_history"):
        assert key in stats


def test_trainer_learns_through_the_kernel_path():
    x, y = _blobs(600, seed=2)
    cfg = MorphoConfig(input_dim=20, n_classes=5, hidden_dims=[64, 32], epochs=15, seed=0,
                       warmup_epochs=2, device="cpu", use_batchnorm=True, dropout=0.1)
    model = MorphoNetMLP(cfg)
    stats = MorphoTrainer(model).train(x[:450], y[:450], x[450:], y[450:], verbose=False)
    assert stats["loss_history"][-1] < 0.6 * stats["loss_history"][0]
    assert stats["best_val_acc"] > 0.9  # 5 classes: chance 0.2


@pytest.mark.parametrize("mutate, match", [
    (lambda x, y: (x, y + 5), "labels in"),
    (lambda x, y: (x.index_fill(0, torch.tensor([3]), float("nan")), y), "NaN"),
    (lambda x, y: (x, y[:-1]), "rows"),
    (lambda x, y: (x[:0], y[:0]), "empty"),
    (lambda x, y: (x, y.float() + 0.5), "integer"),
])
def test_trainer_rejects_bad_input_before_training(mutate, match):
    x, y = _blobs(50)
    cfg = MorphoConfig(input_dim=20, n_classes=5, epochs=2, device="cpu")
    model = MorphoNetMLP(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        MorphoTrainer(model).train(*mutate(x, y), verbose=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cnn_trains_and_create_morphonet():
    torch.manual_seed(0)
    y = torch.randint(0, 2, (200,))
    x = torch.randn(200, 1, 16) + (2.0 * y - 1.0)[:, None, None] * 0.5
    model = create_morphonet("cnn", input_dim=16, n_classes=2, hidden_dims=[16],
                             conv_channels=[8], epochs=30, warmup_epochs=1, seed=0,
                             device="cpu", target_sparsity=0.5)
    assert isinstance(model, MorphoNetCNN) and model.input_shape == (1, 16)
    stats = MorphoTrainer(model).train(x[:150], y[:150], x[150:], y[150:], verbose=False)
    assert abs(stats["final_sparsity"] - 0.5) <= 0.02 and stats["best_val_acc"] > 0.7
    assert isinstance(create_morphonet("mlp", input_dim=20, n_classes=5), MorphoNetMLP)
    with pytest.raises(ValueError, match="kind"):
        create_morphonet("rnn")
