"""MorphNet's regularisers and costs against hand computations, gates, the hook in the
training loop, and bad input."""

import math

import pytest
import torch
from morph_models import MLP, families
from torch import nn

import morphonet.morph as morph
from morphonet.loop import TrainLoop
from morphonet.morph import MorphNetHook, NetworkRegularizer, Roofline


def _tiny():
    """Linear(3, 4) → BN(4) → ReLU → Linear(4, 2): one free group of 4 channels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.001, 1.5]))
    return model, torch.randn(5, 3)


def test_gamma_flops_term_and_cost_by_hand():
    model, x = _tiny()
    reg = NetworkRegularizer(model, x, "gamma", "flops")
    gamma = model[1].weight
    # fc1: 2·1·(3·Σ|γ| + 4·0); fc2: 2·1·(4·0 + 2·Σ|γ|) (inputs and outputs are frozen)
    term = reg.get_regularization_term()
    assert term.item() == pytest.approx(10 * gamma.abs().sum().item(), rel=1e-6)
    # the channel with |γ| = 0.001 is below the 1e-2 threshold: 3 alive
    assert reg.alive_widths()[reg.groups[0].id] == 3
    assert reg.get_cost().item() == pytest.approx(2 * 3 * 3 + 2 * 3 * 2)
    assert reg.initial_cost == pytest.approx(30.0)
    assert reg.suggested_strength() == pytest.approx(1 / 30)
    term.backward()
    assert torch.allclose(gamma.grad, 10 * torch.sign(gamma.detach()))


def test_size_and_latency_costs_by_hand():
    model, x = _tiny()
    size = NetworkRegularizer(model, x, "gamma", "size")
    assert size.get_cost().item() == pytest.approx(3 * 3 + 3 * 2)
    g = model[1].weight.abs().sum().item()
    assert size.get_regularization_term().item() == pytest.approx(5 * g, rel=1e-6)
    rl = Roofline(peak_flops=1e3, bandwidth=1e4, name="toy", bytes_per_element=4)
    lat = NetworkRegularizer(model, x, "gamma", "latency", roofline=rl, batch_size=5)
    # fc1 at 3 alive: flops 5·2·3·3 = 90, bytes 4·(5·(3 + 3) + 9) = 156
    # fc2: flops 5·2·3·2 = 60, bytes 4·(5·(3 + 2) + 6) = 124
    want = max(90 / 1e3, 156 / 1e4) + max(60 / 1e3, 124 / 1e4)
    assert lat.get_cost().item() == pytest.approx(want)
    # both compute-bound: the FLOP relaxation per second of peak
    assert lat.get_regularization_term().item() == pytest.approx(5 * 10 * g / 1e3, rel=1e-6)


def test_group_lasso_vector_is_the_filter_norm():
    model, x = _tiny()
    reg = NetworkRegularizer(model, x, "group_lasso", l1_fraction=0.25)
    w = model[0].weight
    want = 0.75 * w.norm(dim=1) + 0.25 * w.abs().sum(1)
    got = reg.regularization_vectors()[reg.groups[0].id]
    assert torch.allclose(got, want)


def test_gates_init_temperature_and_first_channel():
    model, x = _tiny()
    reg = NetworkRegularizer(model, x, "gates", temperature=2.0)
    gid = reg.groups[0].id
    assert torch.allclose(reg.logits[str(gid)], torch.full((4,), 2.5))
    g = reg.gate(gid)
    assert g[0].item() == 1.0
    assert torch.allclose(g[1:], torch.sigmoid(torch.tensor(1.25)).expand(3))
    with torch.no_grad():
        reg.logits[str(gid)].fill_(-3.0)
    # first channel kept alive even with every log-odds negative
    assert reg.alive_widths()[gid] == 1
    # the gates act where the channels are read: the second layer's input is scaled
    model.eval()
    h = torch.relu(model[1](model[0](x)))
    want = model[3].weight @ (h * reg.gate(gid)).t()
    assert torch.allclose(model(x), want.t() + model[3].bias, atol=1e-6)
    assert [p.shape for p in reg.parameters()] == [torch.Size([4])]
    reg.remove_gates()
    assert torch.allclose(model(x), model[3](h), atol=1e-6)


def test_straight_through_gates_are_hard_forward_soft_backward():
    model, x = _tiny()
    reg = NetworkRegularizer(model, x, "gates", straight_through=True)
    gid = reg.groups[0].id
    with torch.no_grad():
        reg.logits[str(gid)].copy_(torch.tensor([1.0, -1.0, 0.5, -0.2]))
    g = reg.gate(gid)
    assert g.tolist() == [1.0, 0.0, 1.0, 0.0]
    g.sum().backward()
    p = torch.sigmoid(torch.tensor([1.0, -1.0, 0.5, -0.2]))
    want = p * (1 - p)
    want[0] = 0  # the first channel is fixed
    assert torch.allclose(reg.logits[str(gid)].grad, want)


def test_hook_trains_the_cost_down():
    torch.manual_seed(0)
    model, x = MLP((6, 32, 32, 3)), torch.randn(512, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    reg = NetworkRegularizer(model, x[:64], "gamma")
    hook = MorphNetHook(reg, reg.suggested_strength(50.0))
    loop = TrainLoop(model, torch.optim.Adam(model.parameters(), 0.02), hooks=[hook],
                     batch_size=32, select=None)
    res = loop.fit((x, y), epochs=15)
    costs = [r["cost"] for r in res["history"]]
    assert costs[-1] < 0.7 * reg.initial_cost
    assert "cost" in loop._line(res["history"][-1], 15)
    state = hook.state_dict()
    hook.load_state_dict(state)


def test_roofline_probe_and_datasheet():
    rl = Roofline.measure("cpu")
    assert rl.peak_flops > 1e8 and rl.bandwidth > 1e8
    assert Roofline.measure("cpu") is rl  # once per process
    h = Roofline.h100_sxm()
    assert h.bandwidth == 3.35e12 and h.peak_flops == 67e12
    assert Roofline.h100_sxm(torch.bfloat16).bytes_per_element == 2
    with pytest.raises(ValueError, match="no H100 datasheet"):
        Roofline.h100_sxm(torch.float64)
    assert rl.seconds(rl.peak_flops, 0) == pytest.approx(1.0)


def test_bad_arguments_are_named():
    model, x = _tiny()
    with pytest.raises(ValueError, match="kind must be one of"):
        NetworkRegularizer(model, x, "l2")
    with pytest.raises(ValueError, match="cost must be one of"):
        NetworkRegularizer(model, x, "gamma", "energy")
    with pytest.raises(ValueError, match="l1_fraction"):
        NetworkRegularizer(model, x, "group_lasso", l1_fraction=2)
    with pytest.raises(TypeError, match="model"):
        NetworkRegularizer("model", x)
    no_bn = MLP(bn=False)
    with pytest.raises(ValueError, match="needs batch norms"):
        NetworkRegularizer(no_bn, torch.randn(4, 6), "gamma")
    with pytest.raises(ValueError, match="a single layer"):
        NetworkRegularizer(nn.Linear(3, 2), torch.randn(4, 3), "group_lasso")
    frozen = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no channel group whose width may change"):
        NetworkRegularizer(frozen, torch.randn(4, 3), "group_lasso")
    with pytest.raises(ValueError, match="strength"):
        MorphNetHook(NetworkRegularizer(model, x), -1.0)


def test_gamma_warns_about_groups_without_batch_norm():
    name, model, x = next(f for f in families() if f[0] == "mobile")
    with pytest.warns(UserWarning, match="without a batch norm keep their width: .*pw2"):
        reg = NetworkRegularizer(model, x, "gamma")
    assert reg.unregularised


def test_transformer_costs_count_attention_as_fixed():
    name, model, x = next(f for f in families() if f[0] == "gpt")
    graph = morph.trace(model, x)
    d, t, heads = 16, 12, 2
    attention = 4.0 * heads * t * (d // heads) * t  # QKᵀ and the weighted sum of V
    assert graph.fixed_flops == pytest.approx(attention)
    hidden = next(g for g in graph.free_groups())
    assert hidden.producers == ["fc"] and hidden.size == 64
    linear = 2 * t * (d * 3 * d + d * d + d * 64 + 64 * d + d * 50)
    assert graph.flops() == pytest.approx(linear + attention)
    assert math.isfinite(NetworkRegularizer(model, x, "group_lasso").get_cost().item())
