"""Exact structural changes: shrink, rebuild from the exported JSON, widen (Net2Net), once,
resize / expand, on every family the tracer supports (outputs and input gradients within the
issue's 1e-5 relative bound)."""

import json
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from morph_models import MLP, assert_same_function, copy_of, families, randomise_norms
from torch import nn

import morphonet.morph as morph
from morphonet.morph import NetworkRegularizer


def _kill(model, x, every=3, kind=None):
    """Zero the regularisation source of every ``every``-th channel of every free group
    (γ where the group has batch norms, else the filters), then prune: returns the widths."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kind = kind or ("gamma" if any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                       for m in model.modules()) else "group_lasso")
        reg = NetworkRegularizer(model, x, kind)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for g in reg.groups:
            if kind == "gamma":  # groups without batch norm are not regularised: left alone
                for name, off in g.norms:
                    mods[name].weight[off: off + g.size][1::every] = 0
            else:
                for name in g.producers:
                    mods[name].weight[1::every] = 0
    return reg, reg.prune()


@pytest.mark.parametrize("family", [f[0] for f in families()])
def test_shrink_is_exact_and_smaller(family):
    name, model, x = next(f for f in families() if f[0] == family)
    reg, widths = _kill(model, x)
    graph = morph.trace(model, x)
    report = {}
    small = morph.shrink(model, x, report=report)
    assert_same_function(small, model, x)
    assert sum(report["removed"].values()) > 0
    assert report["kept_unfoldable"] == {}
    small_graph = morph.trace(small, x)
    assert small_graph.flops() == pytest.approx(graph.flops(widths))
    assert small_graph.flops() < graph.flops()
    n_params = sum(p.numel() for p in small.parameters())
    assert n_params < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", [f[0] for f in families()])
def test_rebuild_from_json_equals_shrink(family):
    name, model, x = next(f for f in families() if f[0] == family)
    _kill(model, x)
    structure = json.loads(json.dumps(morph.export_structure(model, x)))
    assert structure["format"] == "morpho.morph.structure/1"
    assert structure["flops"] < structure["full_flops"]
    rebuilt = morph.rebuild(model, structure, x)
    assert_same_function(rebuilt, model, x)
    assert [p.shape for p in rebuilt.parameters()] == \
        [p.shape for p in morph.shrink(model, x).parameters()]


@pytest.mark.parametrize("family", [f[0] for f in families()])
def test_widen_preserves_the_function(family):
    name, model, x = next(f for f in families() if f[0] == family)
    wide = morph.widen(model, x, factor=1.4)
    assert_same_function(wide, model, x)
    before = morph.trace(model, x)
    after = morph.trace(wide, x)
    for g in before.free_groups():
        assert after.groups[g.id].size == round(g.size * 1.4)
    for gid, g in before.groups.items():
        if g.frozen is not None:
            assert after.groups[gid].size == g.size


def test_widen_one_layer_patches_the_next():
    torch.manual_seed(0)
    model, x = randomise_norms(MLP()).eval(), torch.randn(8, 6)
    wide = morph.widen(model, x, factor=2.0, layer="net.0")
    assert wide.net[0].out_features == 24 and wide.net[1].num_features == 24
    assert wide.net[3].in_features == 24 and wide.net[3].out_features == 10
    assert_same_function(wide, model, x)
    with pytest.raises(ValueError, match="cannot be widened: model output"):
        morph.widen(model, x, layer="net.6")


def test_widen_in_train_mode_keeps_batch_statistics():
    torch.manual_seed(0)
    model, x = randomise_norms(MLP()), torch.randn(32, 6)
    wide = morph.widen(model, x, factor=1.5)
    model.train(), wide.train()
    with torch.no_grad():
        assert torch.allclose(wide(x), model(x), rtol=1e-5, atol=1e-6)


def test_constants_are_folded_into_the_next_bias():
    """keep_constants: the dead channels carry β through the ReLU; shrink folds it exactly,
    except where a zero-padded convolution reads a non-zero constant (kept, reported)."""
    name, model, x = next(f for f in families() if f[0] == "mlp")
    with torch.no_grad():
        model.net[1].bias[:6] = 0.7  # positive β: relu(β) = 0.7 after the ReLU
    reg = NetworkRegularizer(model, x, "gamma")
    with torch.no_grad():
        model.net[1].weight[:6] = 0
    reg.prune(keep_constants=True)
    ref = copy_of(model)
    small = morph.shrink(model, x)
    assert small.net[0].out_features == 6
    assert_same_function(small, ref, x)

    name, cnn, x = next(f for f in families() if f[0] == "res_cat_cnn")
    reg = NetworkRegularizer(cnn, x, "gamma")
    with torch.no_grad():
        for g in reg.groups:
            for n, off in g.norms:
                dict(cnn.named_modules())[n].weight[off: off + g.size][::2] = 0
    reg.prune(keep_constants=True)
    report = {}
    small = morph.shrink(cnn, x, report=report)
    assert_same_function(small, cnn, x)
    assert report["kept_unfoldable"]  # padded convolutions read some of the constants


def test_gates_fold_exactly_and_shrink():
    name, model, x = next(f for f in families() if f[0] == "res_cat_cnn")
    reg = NetworkRegularizer(model, x, "gates", straight_through=True)
    with torch.no_grad():
        for v in reg.logits.values():
            v[1::3] = -1.0
    gated = model(x).detach()
    with pytest.raises(ValueError, match="channel gates"):
        morph.shrink(model, x)
    widths = reg.prune()
    assert torch.equal(model(x).detach(), gated)  # open gates are 1, closed ones 0
    small = morph.shrink(model, x)
    assert_same_function(small, model, x)
    assert morph.trace(small, x).widths() == widths


def test_once_returns_the_smaller_model_and_leaves_the_argument():
    name, model, x = next(f for f in families() if f[0] == "res_cat_cnn")
    report = {}
    same = morph.once(model, x, report=report)  # nothing below the threshold
    assert report["changed"] is False
    assert_same_function(same, model, x)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight[::2] = 0
                m.bias[::2] = 0  # dead: γ and β zero
    before = copy_of(model)
    small = morph.once(model, x, report=report)
    assert report["changed"] is True and report["flops_after"] < report["flops_before"]
    assert_same_function(small, model, x)
    for a, b in zip(model.state_dict().values(), before.state_dict().values()):
        assert torch.equal(a, b)


def test_shrink_refuses_channels_that_carry_signal():
    torch.manual_seed(0)
    model, x = randomise_norms(MLP()).eval(), torch.randn(8, 6)
    graph = morph.trace(model, x)
    gid = graph.free_groups()[0].id
    with pytest.raises(ValueError, match="carry signal"):
        morph.shrink(model, x, keep={gid: [0, 1]})
    frozen = next(g.id for g in graph.groups.values() if g.frozen)
    with pytest.raises(ValueError, match="cannot change its width"):
        morph.shrink(model, x, keep={frozen: [0]})
    with pytest.raises(ValueError, match="keeps no channel"):
        morph.shrink(model, x, keep={gid: []})
    with pytest.raises(ValueError, match="outside"):
        morph.shrink(model, x, keep={gid: [99]})


def test_a_relu_dead_by_chance_is_not_removed():
    """Constant on the probes only because a ReLU is never active there: not dead."""
    model, x = MLP(bn=False).eval(), torch.randn(8, 6)
    with torch.no_grad():
        model.net[0].bias[0] = -1e3  # relu(…) = 0 on every probe, but not structurally
    dead = morph.dead_channels(model, x)
    assert not any(bool(d[0]) for d in dead.values())


def test_resize_layers_and_expand():
    torch.manual_seed(0)
    model, x = randomise_norms(MLP()).eval(), torch.randn(8, 6)
    big = morph.resize_layers(model, x, width_factor=1.5)
    assert big.net[0].out_features == 18 and big.net[3].in_features == 18
    assert torch.equal(big.net[0].weight[:12], model.net[0].weight)
    assert big(x).shape == (8, 3)
    graph = morph.trace(model, x)
    budget = 0.6 * graph.flops()
    factor, widths = morph.expand_widths(graph, budget)
    assert graph.flops(widths) <= budget
    bigger = {g: (max(1, round((factor + 0.01) * graph.groups[g].size))
                  if graph.groups[g].frozen is None else w) for g, w in widths.items()}
    assert graph.flops(bigger) > budget
    small = morph.expand(model, x, budget)
    assert morph.trace(small, x).flops() == pytest.approx(graph.flops(widths))
    with pytest.raises(ValueError, match="below the smallest model"):
        morph.expand_widths(graph, 1.0)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(2, 9), min_size=2, max_size=4),
       pattern=st.integers(0, 2 ** 16 - 1), keep_constants=st.booleans())
def test_shrink_any_mlp_any_dead_set(sizes, pattern, keep_constants):
    torch.manual_seed(pattern)
    model = randomise_norms(MLP((5, *sizes, 3)), seed=pattern).eval()
    x = torch.randn(6, 5)
    reg = NetworkRegularizer(model, x, "gamma")
    bits = iter(int(b) for b in bin(pattern)[2:].zfill(64)[::-1] * 4)
    with torch.no_grad():
        for g in reg.groups:
            for n, off in g.norms:
                m = dict(model.named_modules())[n]
                for c in range(g.size):
                    if next(bits):
                        m.weight[off + c] = 0
    reg.prune(keep_constants=keep_constants)
    small = morph.shrink(model, x)
    assert_same_function(small, model, x)


def test_seed_example_once_mid_training():
    """Morph.py's README loop: train, call ``morph.once`` halfway, give the smaller model a new
    optimizer and keep training it (``import morph`` is the real module)."""
    import morph as seed_morph

    from morphonet.loop import TrainLoop

    assert seed_morph.once is morph.once and seed_morph.NetworkRegularizer is NetworkRegularizer
    torch.manual_seed(0)
    model, x = MLP((6, 32, 32, 3)), torch.randn(512, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    reg = NetworkRegularizer(model, x[:64], "gamma")
    hook = morph.MorphNetHook(reg, reg.suggested_strength(50.0))
    TrainLoop(model, torch.optim.Adam(model.parameters(), 0.02), hooks=[hook], batch_size=32,
              select=None).fit((x, y), epochs=10)
    report = {}
    smaller = seed_morph.once(model, x[:64], report=report)
    assert report["changed"] and report["flops_after"] < report["flops_before"]
    loop = TrainLoop(smaller, torch.optim.Adam(smaller.parameters(), 0.01), batch_size=32,
                     select=None)
    res = loop.fit((x, y), epochs=3)
    assert res["history"][-1]["loss"] < res["history"][0]["loss"] * 1.5
