"""MorphoNet Pro: config, mask layers against their reference formula, models, trainer (the
enforced schedule, model selection, bad input), export, pictures, and the seed's snippets."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from morphonet import (
    MorphoConfig,
    MorphoConv,
    MorphoLinear,
    MorphoNetCNN,
    MorphoNetMLP,
    MorphoTrainer,
    create_morphonet,
    make_blobs,
)
from morphonet.export import shrink, to_block_sparse
from morphonet.schedule import (
    _prune_ranked,
    enforce_sparsity,
    layer_budgets,
    target_sparsity_at,
    temperature_at,
)
from morphonet.train import evaluate

SEED_FILE = next((Path(__file__).resolve().parents[2].parent / "shared" / "seeds").glob(
    "000_*.txt"), None)

SEED_DEFAULTS = dict(hidden_dims=[128, 64], network_type="mlp", sparse_init=0.4,
                     target_sparsity=0.7, sparsity_loss=0.002, sparsity_schedule="cosine",
                     weight_lr=0.001, mask_lr=0.02, weight_decay=0.01, epochs=100,
                     batch_size=64, warmup_epochs=10, use_skip_connections=True,
                     use_batchnorm=False, dropout=0.0, device="auto")


def _blobs(n=300, seed=0):
    x, y = make_blobs(n_samples=n, n_features=20, n_classes=5, spread=2.0, seed=seed)
    return x, y


# ---------------------------------------------------------------------------- config


def test_config_has_the_seed_defaults_and_round_trips():
    cfg = MorphoConfig()
    for k, v in SEED_DEFAULTS.items():
        assert getattr(cfg, k) == v, k
    cfg = MorphoConfig(input_dim=20, n_classes=5, mask_granularity="block", block_size=32)
    d = cfg.to_dict()
    assert MorphoConfig.from_dict(d) == cfg
    assert all(isinstance(v, (int, float, str, bool, list, type(None))) for v in d.values())


@pytest.mark.parametrize("kw, match", [
    (dict(target_sparsity=1.0), "target_sparsity"), (dict(sparse_init=0.0), "sparse_init"),
    (dict(sparsity_schedule="exp"), "sparsity_schedule"), (dict(epochs=0), "epochs"),
    (dict(mask_granularity="row"), "mask_granularity"), (dict(block_size=24), "block_size"),
    (dict(hidden_dims=[4, -1]), "hidden_dims"), (dict(device="tpu"), "device"),
    (dict(d_model=30, n_heads=4), "divisible"), (dict(weight_lr=0.0), "weight_lr"),
    (dict(dropout=float("nan")), "dropout"), (dict(use_batchnorm=1), "use_batchnorm"),
])
def test_config_rejects_bad_fields(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MorphoConfig(**kw)


def test_config_from_dict_rejects_unknown_keys_and_models_need_sizes():
    with pytest.raises(ValueError, match="unknown"):
        MorphoConfig.from_dict({"input_dims": 3})
    with pytest.raises(ValueError, match="input_dim"):
        MorphoNetMLP(MorphoConfig(n_classes=3))


# ---------------------------------------------------------------------------- layers


def _reference_linear(layer, x):
    mask = layer._expand(torch.sigmoid(layer.mask_logits / layer.temperature))
    if layer.granularity == "neuron":
        return F.linear(x, layer.weight, layer.bias) * torch.sigmoid(
            layer.mask_logits / layer.temperature)
    return F.linear(x, layer.weight * mask, layer.bias)


def _grads(out, params):
    return torch.autograd.grad(out.square().sum(), params)


@pytest.mark.parametrize("granularity", ["element", "block", "neuron"])
def test_morpho_linear_matches_reference_with_gradients(granularity):
    torch.manual_seed(0)
    layer = MorphoLinear(37, 21, granularity=granularity, block_size=16, sparse_init=0.6,
                         temperature=0.8).double()
    with torch.no_grad():
        layer.mask_logits.normal_(0, 2)
        layer.mask_logits.view(-1)[:3] = float("-inf")  # hard-pruned units stay exact zeros
    x = torch.randn(5, 37, dtype=torch.float64)
    params = [layer.weight, layer.bias, layer.mask_logits]
    out, ref = layer(x), _reference_linear(layer, x)
    torch.testing.assert_close(out, ref)
    for g, gr in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(g, gr)
        assert torch.isfinite(g).all()
    assert layer.get_mask().shape == (21, 37)


@pytest.mark.parametrize("dims, kw", [
    (1, dict(stride=2, padding=1, dilation=1, groups=1)),
    (1, dict(stride=1, padding=2, dilation=2, groups=3)),
    (2, dict(stride=2, padding=1, dilation=1, groups=1)),
    (2, dict(stride=(1, 2), padding=(2, 0), dilation=2, groups=3)),
])
@pytest.mark.parametrize("granularity", ["element", "block", "neuron"])
def test_morpho_conv_matches_reference_with_gradients(dims, kw, granularity):
    torch.manual_seed(1)
    conv = MorphoConv(dims, 6, 9, 3, granularity=granularity, block_size=16, **kw).double()
    with torch.no_grad():
        conv.mask_logits.normal_(0, 2)
    shape = (2, 6, 17) if dims == 1 else (2, 6, 11, 9)
    x = torch.randn(*shape, dtype=torch.float64)
    ref_conv = F.conv1d if dims == 1 else F.conv2d
    s = torch.sigmoid(conv.mask_logits / conv.temperature)
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    if granularity == "neuron":
        ref = ref_conv(x, conv.weight, conv.bias, *args) * s.reshape(1, -1, *[1] * dims)
    else:
        ref = ref_conv(x, conv.weight * conv._expand(s), conv.bias, *args)
    out = conv(x)
    torch.testing.assert_close(out, ref)
    params = [conv.weight, conv.bias, conv.mask_logits]
    for g, gr in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(g, gr)


def test_prune_counts_connections_per_unit_and_zeroes_gradients():
    torch.manual_seed(0)
    layer = MorphoLinear(40, 20, granularity="block", block_size=16)  # 2×3 blocks, ragged
    with torch.no_grad():
        layer.mask_logits.copy_(torch.tensor([[3.0, -3.0, 3.0], [-3.0, 3.0, -3.0]]))
    # pruned: block (0,1) 16×16, block (1,0) 4×16, block (1,2) 4×8
    assert layer.prune(0.5) == 256 + 64 + 32
    assert layer.n_live() == 800 - 352
    x = torch.randn(3, 40)
    layer(x).sum().backward()
    assert torch.isneginf(layer.mask_logits[0, 1]) and layer.mask_logits.grad[0, 1] == 0
    assert (layer.get_mask(hard=True)[:16, 16:32] == 0).all()
    with pytest.raises(ValueError, match="threshold"):
        layer.prune(1.5)


# ---------------------------------------------------------------------------- models


def test_mlp_counts_skip_connections_and_masks():
    cfg = MorphoConfig(input_dim=8, n_classes=3, hidden_dims=[8, 6], use_batchnorm=True)
    model = MorphoNetMLP(cfg)
    assert list(model.skip_gates.keys()) == ["0"]  # only where widths match (8 → 8)
    x = torch.randn(4, 8)
    model.eval()
    y0 = model(x)
    with torch.no_grad():
        model.skip_gates["0"].fill_(5.0)
    assert not torch.allclose(model(x), y0)  # the skip carries signal
    weights = 8 * 8 + 8 * 6 + 6 * 3
    other = (8 + 6 + 3) + 2 * (8 + 6) + 1  # biases, batchnorm γ/β, one skip gate
    assert model.count_params() == (weights + other, weights + other)
    masks = model.get_all_masks(hard=True)
    assert [tuple(m.shape) for m in masks] == [(8, 8), (6, 8), (3, 6)]
    with torch.no_grad():
        model.layers[1].mask_logits[:2] = float("-inf")
    assert model.count_params()[1] == weights + other - 2 * 8


def test_neuron_granularity_counts_dead_biases_and_shrinks_exactly():
    torch.manual_seed(0)
    cfg = MorphoConfig(input_dim=10, n_classes=3, hidden_dims=[16, 12], use_batchnorm=True,
                       mask_granularity="neuron", sparse_init=0.5)
    model = MorphoNetMLP(cfg)
    for m in model.modules():  # non-trivial batchnorm statistics: β − γμ/σ ≠ 0
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_()
            m.bias.data.normal_()
    model.set_temperature(0.7)
    model.prune(0.5)
    model.eval()
    small = shrink(model).eval()
    x = torch.randn(20, 10)
    torch.testing.assert_close(small(x), model(x), atol=1e-6, rtol=1e-5)
    kept = [int((~layer.pruned_units()).sum()) for layer in model.layers[:2]]
    assert [m.out_features for m in small if isinstance(m, torch.nn.Linear)] == [*kept, 3]
    # a pruned unit's bias and its batchnorm γ, β are dead (the mask follows the norm)
    pruned = 16 + 12 - sum(kept)
    assert 0 < pruned < 28
    other = (16 + 12 + 3) + 2 * (16 + 12)  # biases, batchnorm γ/β (no skip: widths differ)
    assert model.count_params() == (model.n_connections() + other,
                                    model.n_live() + other - 3 * pruned)
    with pytest.raises(ValueError, match="neuron"):
        shrink(MorphoNetMLP(cfg.replace(mask_granularity="element")))


@pytest.mark.parametrize("shape", [(2, 12), (2, 8, 8)])
def test_cnn_shrinks_exactly(shape):
    torch.manual_seed(0)
    cfg = MorphoConfig(n_classes=3, hidden_dims=[16], mask_granularity="neuron",
                       use_batchnorm=True, sparse_init=0.5, conv_channels=[6, 5], pool=True)
    model = MorphoNetCNN(cfg, input_shape=shape)
    model.prune(0.5)
    model.eval()
    x = torch.randn(4, *shape)
    torch.testing.assert_close(shrink(model).eval()(x), model(x), atol=1e-6, rtol=1e-5)
    dead = sum(int(layer.pruned_units().sum()) for layer in model.layers  # convs + hidden
               if layer.granularity == "neuron")
    dead_norm = sum(int(layer.pruned_units().sum()) for layer in model.layers[:2])
    assert dead_norm > 0
    total, effective = model.count_params()
    assert total - effective == model.n_connections() - model.n_live() + dead + 2 * dead_norm


def test_cnn_honours_stride_padding_dilation_groups_and_flat_rows():
    cfg = MorphoConfig(n_classes=4, hidden_dims=[], conv_channels=[6, 6], kernel_size=3,
                       conv_stride=2, conv_padding=2, conv_dilation=2, conv_groups=3, pool=False)
    model = MorphoNetCNN(cfg, input_shape=(3, 21))
    conv = model.layers[0]
    assert (conv.stride, conv.padding, conv.dilation, conv.groups) == ((2,), (2,), (2,), 3)
    x = torch.randn(5, 3, 21)
    torch.testing.assert_close(model(x), model(x.flatten(1)))
    with pytest.raises(ValueError, match="conv_groups"):
        MorphoNetCNN(cfg.replace(conv_groups=4), input_shape=(3, 21))


def test_block_masks_export_to_block_sparse_with_the_same_outputs():
    torch.manual_seed(0)
    cfg = MorphoConfig(input_dim=40, n_classes=5, hidden_dims=[48], mask_granularity="block",
                       block_size=16, use_skip_connections=False)
    model = MorphoNetMLP(cfg)
    enforce_sparsity(model, 0.5)
    x = torch.randn(7, 40)
    fast = to_block_sparse(model)
    from morpho_kernels.nn import BlockSparseLinear

    assert all(isinstance(m, BlockSparseLinear) for m in fast.layers)
    torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)
    for slow, quick in zip(model.layers, fast.layers):  # one block per live mask unit
        assert quick.density() == pytest.approx(float(slow.mask_logits.isfinite().float().mean()))


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
def test_per_layer_pruning_keeps_each_layers_best_unit_and_ranks_by_saliency(distribution):
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


# ---------------------------------------------------------------------------- pictures / seed


def test_viz_writes_pngs(tmp_path):
    from morphonet import viz

    x, y = _blobs(120)
    cfg = MorphoConfig(input_dim=20, n_classes=5, hidden_dims=[16], epochs=3, device="cpu",
                       warmup_epochs=0)
    model = MorphoNetMLP(cfg)
    stats = MorphoTrainer(model).train(x[:90], y[:90], x[90:], y[90:], verbose=False)
    paths = viz.plot_connectivity(model, tmp_path)
    paths.append(viz.plot_training(stats, tmp_path / "training.png", cfg.target_sparsity))
    assert len(paths) == 3
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def _seed_snippets():
    text = SEED_FILE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return {"quick": blocks[0], "models": blocks[2], "trainer": blocks[3], "layerwise": blocks[5],
            "export": blocks[6], "viz": blocks[7], "schedules": blocks[4]}


@pytest.mark.skipif(SEED_FILE is None, reason="shared/seeds not beside the checkout")
def test_seed_snippets_run_unchanged(tmp_path):
    snippets = _seed_snippets()
    assert "MorphoTrainer(model, config)" in snippets["quick"]
    assert "model.prune(0.3)" in snippets["export"]
    x, y = _blobs(160, seed=4)
    script = "\n".join([
        "import matplotlib; matplotlib.use('Agg')",
        "import torch",
        "from morphonet import make_blobs",
        "from morphonet_pro import MorphoNetCNN, MorphoNetTransformer  # used by the Models block",
        "x, y = make_blobs(n_samples=160, n_features=20, n_classes=5, spread=2.0, seed=4)",
        "X_train, y_train, X_val, y_val = x[:120].numpy(), y[:120].numpy(), x[120:], y[120:]",
        snippets["quick"],
        "assert stats['best_val_acc'] > 0.6, stats['best_val_acc']",
        "assert abs(stats['final_sparsity'] - 0.7) <= 0.02, stats['final_sparsity']",
        "trained = model",
        snippets["models"],
        "assert type(model).__name__ == 'MorphoNetMLP'",  # the factory's model, 20 → 5
        snippets["trainer"],
        snippets["layerwise"],
        snippets["export"],
        "assert model.sparsity() >= 0.68, model.sparsity()",
        snippets["viz"],
        snippets["schedules"],
        "assert config.target_sparsity == 0.8 and config.sparsity_schedule == 'cosine'",
    ])
    (tmp_path / "run_seed.py").write_text(script)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "run_seed.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Accuracy:" in out.stdout and "Effective params:" in out.stdout
    assert (tmp_path / "morphonet.pt").exists()
    assert sorted(p.name for p in tmp_path.glob("layer_*_connectivity.png")) == [
        "layer_0_connectivity.png", "layer_1_connectivity.png", "layer_2_connectivity.png"]
    del x, y


@pytest.mark.skipif(SEED_FILE is None, reason="shared/seeds not beside the checkout")
def test_seed_save_load_recipe_restores_the_model(tmp_path):
    x, y = _blobs(100)
    config = MorphoConfig(input_dim=20, hidden_dims=[16, 8], n_classes=5, epochs=3,
                          warmup_epochs=0, device="cpu")
    model = MorphoNetMLP(config)
    MorphoTrainer(model, config).train(x, y, verbose=False)
    model.prune(0.3)
    path = tmp_path / "m.pt"
    torch.save({"state_dict": model.state_dict(), "mask": model.get_all_masks(),
                "config": config.to_dict()}, path)
    ck = torch.load(path, weights_only=True)
    again = MorphoNetMLP(MorphoConfig.from_dict(ck["config"]))
    again.load_state_dict(ck["state_dict"])
    model.eval()
    again.eval()
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert again.sparsity() == model.sparsity() > 0


# ---------------------------------------------------------------------------- the main job


def test_compare_runs_and_writes_tables(tmp_path):
    out = subprocess.run([sys.executable, "-m", "morphonet.cli", "compare", "--datasets", "moons",
                          "--seeds", "2", "--epochs", "6", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    from morphonet.compare import grid

    data = json.loads((tmp_path / "compare.json").read_text())
    methods = {r["method"] for r in data["summary"]}
    assert methods == {"dense", "morphonet", "magnitude"}
    n_variants = sum(len(grid(m, 6)) for m in methods)
    assert len(data["runs"]) == 2 * n_variants and len(data["variants"]) == n_variants
    chosen = [r for r in data["runs"] if r["chosen"]]
    assert len(chosen) == 6
    for m in methods:  # one variant per method, the one with the best mean validation accuracy
        variants = {v["variant"]: v["val_acc"] for v in data["variants"] if v["method"] == m}
        picked = {r["variant"] for r in chosen if r["method"] == m}
        assert len(picked) == 1 and variants[picked.pop()] == max(variants.values())
    morpho = [r for r in data["runs"] if r["method"] == "morphonet"]
    mag = [r for r in data["runs"] if r["method"] == "magnitude"]
    # every magnitude variant of a seed is given exactly the chosen MorphoNet run's weights
    picked = {r["seed"]: r["weights"] for r in chosen if r["method"] == "morphonet"}
    assert sorted(picked) == [0, 1] and all(r["weights"] == picked[r["seed"]] for r in mag)
    assert all(0.2 <= r["weights"] / r["dense_weights"] <= 0.3 for r in morpho)
    text = (tmp_path / "compare.md").read_text()
    assert "| moons | mlp | morphonet |" in text and "Hyperparameter variants" in text
    assert not (tmp_path / "runs.partial.jsonl").exists()  # kept only if interrupted
    # paired by seed: the chosen MorphoNet run minus the chosen dense run of the same seed
    dense = {r["seed"]: r["test_acc"] for r in chosen if r["method"] == "dense"}
    diffs = [r["test_acc"] - dense[r["seed"]] for r in chosen if r["method"] == "morphonet"]
    pm = [p for p in data["paired"] if p["method"] == "morphonet"]
    assert len(pm) == 1 and pm[0]["diff"] == pytest.approx(sum(diffs) / 2)
    assert pm[0]["at_least_dense"] == sum(d >= 0 for d in diffs)
    assert "Paired by seed" in text
    # --render rewrites the same files from the recorded runs, training nothing
    (tmp_path / "compare.md").write_text("stale")
    again = subprocess.run([sys.executable, "-m", "morphonet.cli", "compare", "--render",
                            "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "compare.md").read_text() == text
    missing = subprocess.run([sys.executable, "-m", "morphonet.cli", "compare", "--render",
                              "--out", str(tmp_path / "none")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and "no " in missing.stderr
    mixed = subprocess.run([sys.executable, "-m", "morphonet.cli", "compare", "--render",
                            "--seeds", "0", "--out", str(tmp_path)], capture_output=True,
                           text=True, timeout=60)
    assert mixed.returncode == 2 and "--seeds" in mixed.stderr
    assert (tmp_path / "compare.md").read_text() == text  # nothing rewritten


def test_select_chooses_on_validation_never_test():
    from morphonet.compare import RunResult, select, summarise

    def run(variant, seed, val, test):
        return RunResult("moons", "mlp", "dense", seed, test, val, 10, 12, 10, 1.0, variant)

    # variant "b" has the better mean validation accuracy, "a" the better test accuracy
    runs = [run("a", 0, 0.80, 0.99), run("a", 1, 0.90, 0.99),
            run("b", 0, 0.88, 0.50), run("b", 1, 0.86, 0.50)]
    chosen, table = select(runs)
    assert [r.variant for r in chosen] == ["b", "b"]
    assert {t["variant"]: t["chosen"] for t in table} == {"a": False, "b": True}
    assert summarise(chosen)[0]["test_acc"] == 0.50
    # a tie keeps the grid's earlier variant
    tie = [run("a", 0, 0.8, 0.1), run("b", 0, 0.8, 0.9)]
    assert [r.variant for r in select(tie)[0]] == ["a"]
    with pytest.raises(ValueError, match="several variants"):
        summarise(runs)


def test_compare_hands_every_run_to_on_result_as_it_ends():
    from morphonet.compare import Case, compare

    seen = []
    case = Case("moons", "mlp", [16, 8], 0.75, 3)
    runs = compare([case], [0], tune=False, on_result=seen.append)
    assert seen == runs and [r.method for r in runs] == ["dense", "morphonet", "magnitude"]


def test_compare_grid_and_prune_point_reject_bad_input():
    from morphonet.compare import GRID_SIZE, Case, grid, run_magnitude
    from morphonet.data import load_dataset

    assert all(len(grid(m, 100)) == GRID_SIZE for m in ("dense", "morphonet", "magnitude"))
    with pytest.raises(ValueError, match="unknown method 'rigl'"):
        grid("rigl", 100)
    data = load_dataset("moons", seed=0)
    with pytest.raises(ValueError, match="prune_at must be in"):
        run_magnitude(Case("moons", "mlp", [8], 0.75, 3), data, 0, 0.25, {"prune_at": 1.5})


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_compare_dense_peer_mirrors_morphonet_layers(arch):
    """The dense peer (and magnitude pruning's model) has MorphoNet's weights and norm
    parameters, with batchnorm, dropout and pooling as configured, in the same order: copying
    MorphoNet's weights and (randomised, so a norm does not commute with the activation) norm
    statistics into it gives the same logits in eval mode, and in train mode (batch statistics,
    dropout) under one seed."""
    from morphonet.compare import Case, _count_dense, dense_model, morpho_model
    from morphonet.data import load_dataset

    data = load_dataset("mnist1d" if arch == "cnn" else "moons", seed=0)
    extra = {"conv_channels": [4, 6], "kernel_size": 3, "pool": True} if arch == "cnn" else {}
    case = Case(data.name, arch, [16, 8], 0.5, 2, extra)
    over = {"use_batchnorm": True, "dropout": 0.25, "sparse_init": 1.0, "mask_init": 30.0}
    dense = dense_model(case, data, 0, over)
    morpho = morpho_model(case, data, 0, over)
    assert _count_dense(dense)[1] == morpho.count_params()[0]
    kinds = [type(m).__name__ for m in dense]
    assert "Dropout" in kinds and any(k.startswith("BatchNorm") for k in kinds)
    if arch == "cnn":
        assert "MaxPool1d" in kinds
    weighted = [m for m in dense if hasattr(m, "weight") and m.weight.dim() > 1]
    norms = [m for m in dense if type(m).__name__.startswith("BatchNorm")]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for d, m in zip(weighted, morpho.layers, strict=True):
            d.weight.copy_(m.weight)
            d.bias.copy_(m.bias)
        m_norms = [mod for mod in morpho.modules() if type(mod).__name__.startswith("BatchNorm")]
        for d, m in zip(norms, m_norms, strict=True):
            c = m.num_features  # negative scales and shifts: order against ReLU / pool matters
            m.weight.copy_(torch.randn(c, generator=g))
            m.bias.copy_(torch.randn(c, generator=g))
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            d.load_state_dict(m.state_dict())
        for layer in morpho.layers:  # temperature low: σ(30/T) is 1 to the last bit
            layer.set_temperature(0.5)
    x = data.val.x[:32]
    dense.eval()
    morpho.eval()
    torch.testing.assert_close(dense(x), morpho(x), atol=1e-5, rtol=1e-5)
    dense.train()
    morpho.train()
    torch.manual_seed(7)
    y_dense = dense(x)
    torch.manual_seed(7)
    torch.testing.assert_close(y_dense, morpho(x), atol=1e-5, rtol=1e-5)
