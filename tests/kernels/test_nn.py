"""morpho_kernels.nn.MaskedLinear as a drop-in for nn.Linear."""

import io

import pytest
import torch
from conftest import TRITON_DEVICE
from torch import nn

import morpho_kernels as mk
from morpho_kernels.nn import MASK_INIT, MaskedLinear


def test_constructor_matches_linear_signature_and_validates():
    layer = MaskedLinear(7, 3, bias=False, dtype=torch.float64, init_density=0.5, temperature=2.0)
    assert layer.weight.shape == (3, 7) and layer.bias is None
    assert layer.weight.dtype == torch.float64 and float(layer.temperature) == 2.0
    assert MASK_INIT == 2.0  # the seed's "around ±2", one default for every masked layer
    assert set(layer.mask_logits.unique().tolist()) == {-MASK_INIT, MASK_INIT}
    with pytest.raises(ValueError, match="init_density"):
        MaskedLinear(3, 3, init_density=1.5)
    with pytest.raises(ValueError, match="temperature"):
        MaskedLinear(3, 3, temperature=0)
    with pytest.raises(ValueError, match="in_features"):
        MaskedLinear(-1, 3)


def test_from_linear_keeps_outputs_and_to_linear_bakes_mask():
    lin = nn.Linear(64, 32)
    x = torch.randn(10, 64)
    ml = MaskedLinear.from_linear(lin)
    assert float(ml.get_mask().min()) >= 0.99
    y, y_ref = ml(x), lin(x)
    rel = float((y - y_ref).norm() / y_ref.norm())
    assert rel < 0.01, rel
    back = ml.to_linear()
    assert isinstance(back, nn.Linear)
    torch.testing.assert_close(back(x), y, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="linear"):
        MaskedLinear.from_linear(nn.Conv1d(1, 1, 1))


def test_density_prune_and_temperature():
    layer = MaskedLinear(10, 10, init_density=0.3)
    d = layer.density()
    assert 0.15 < d < 0.45
    pruned = layer.prune(0.5)
    assert pruned == round((1 - d) * 100)
    assert torch.isneginf(layer.mask_logits).sum() == pruned
    assert layer.density() == d
    y = layer(torch.randn(4, 10))
    y.sum().backward()
    assert torch.isfinite(layer.mask_logits.grad).all()
    assert (layer.mask_logits.grad[torch.isneginf(layer.mask_logits)] == 0).all()
    layer.set_temperature(0.25)
    assert float(layer.temperature) == 0.25
    with pytest.raises(ValueError):
        layer.set_temperature(float("nan"))


def test_state_dict_round_trip_weights_only():
    layer = MaskedLinear(6, 4, init_density=0.5, temperature=0.6)
    layer.prune(0.5)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    other = MaskedLinear(6, 4)
    other.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(3, 6)
    torch.testing.assert_close(other(x), layer(x), rtol=0, atol=0)
    assert float(other.temperature) == pytest.approx(0.6)


def test_compile_fullgraph_with_annealed_temperature():
    torch._dynamo.reset()
    layer = MaskedLinear(12, 5, init_density=0.6)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(3, 12)
    for i in range(12):  # more values than dynamo's recompile limit: T must not be a constant
        layer.set_temperature(2.0 - 0.1 * i)
        torch.testing.assert_close(compiled(x), layer(x))
    compiled(x).sum().backward()
    assert layer.weight.grad is not None and layer.mask_logits.grad is not None


def test_autocast_bf16_cpu():
    layer = MaskedLinear(16, 8)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), atol=0.05, rtol=0.05)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32


def _train(backend_name, device, steps=15):
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(8, 16, init_density=0.7), nn.ReLU(),
                          MaskedLinear(16, 3)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g).to(device)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("backend_name", ["triton", "ext"])
def test_convergence_matches_reference_path(backend_name, backend):
    """A tiny model trained through a kernel path follows the reference's loss curve."""
    if backend_name == "ext" and not mk._ext.status().loaded:
        pytest.skip("extension not built")
    device = TRITON_DEVICE if backend_name == "triton" else "cpu"
    backend("reference")
    want = _train("reference", device)
    backend(backend_name)
    got = _train(backend_name, device)
    assert want[-1] < want[0] * 0.7  # it does learn
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=2e-4, rtol=2e-4)
