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


class _TiedLM(nn.Module):
    """GPT-style: the output head is the token embedding (one tensor)."""

    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 50, bias=False)
        self.lm_head.weight = self.tok_emb.weight

    def forward(self, ids):
        return self.lm_head(torch.relu(self.proj(self.tok_emb(ids))))


def test_from_linear_keeps_the_users_parameters_so_ties_survive():
    torch.manual_seed(0)
    model = _TiedLM()
    n_params = sum(p.numel() for p in model.parameters())
    model.lm_head = MaskedLinear.from_linear(model.lm_head)
    model.proj = MaskedLinear.from_linear(model.proj)
    assert model.lm_head.weight is model.tok_emb.weight  # the very same Parameter
    # only the mask logits are new parameters
    masks = mk.nn.mask_parameters(model)
    assert sum(p.numel() for p in model.parameters()) == n_params + sum(
        p.numel() for p in masks)
    opt = torch.optim.AdamW(mk.nn.param_groups(model, weight_decay=0.1), lr=1e-2)
    ids = torch.randint(0, 50, (4, 7))
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(ids).reshape(-1, 50), ids.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.lm_head.weight is model.tok_emb.weight
    assert mk.nn.tied_with(model, "lm_head") == {"weight": ["tok_emb.weight"]}
    assert mk.nn.tied_with(model, "proj") == {}


def test_param_groups_keep_mask_logits_out_of_weight_decay():
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(6, 8), nn.LayerNorm(8),
                          MaskedLinear(8, 3, granularity="block", block_size=16))
    decay, no_decay = mk.nn.param_groups(model, weight_decay=0.1, lr=1e-3)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(model[0].weight), id(model[2].weight)}
    assert ids(mk.nn.mask_parameters(model)) <= ids(no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == 1e-3
    # what decay alone does to a logit of 6 in 300 AdamW steps (lr 1e-3, wd 0.1), and what
    # the groups prevent (the loss gives the logits a zero gradient: only decay moves them)
    drops = {}
    x = torch.randn(3, 4)
    for use_groups in (False, True):
        torch.manual_seed(0)
        layer = MaskedLinear(4, 4)
        with torch.no_grad():
            layer.mask_logits.fill_(6.0)
        params = mk.nn.param_groups(layer, 0.1) if use_groups else layer.parameters()
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
        for _ in range(300):
            opt.zero_grad()
            (layer(x).sum() * 0).backward()
            opt.step()
        drops[use_groups] = 6.0 - float(layer.mask_logits.mean())
    assert drops[False] == pytest.approx(6.0 * (1 - (1 - 1e-4) ** 300), rel=1e-3)  # 0.177 (fp32)
    assert drops[True] == 0.0


def test_convert_linears_refuses_a_tie_it_cannot_keep_naming_both_sides():
    from morpho_kernels.nn import BlockSparseLinear, SparseLinear, convert_linears

    torch.manual_seed(0)
    model = _TiedLM()
    to_blocks = lambda l: BlockSparseLinear.from_linear(  # noqa: E731
        l, density=1.0, block_size=16, pad=True)
    with pytest.raises(ValueError, match=r"lm_head\.weight is tied to tok_emb\.weight"):
        convert_linears(model, to_blocks)
    with pytest.raises(ValueError, match="tied"):
        convert_linears(model, lambda l: SparseLinear.from_linear(l, density=0.2))
    assert isinstance(model.lm_head, nn.Linear)  # nothing was replaced
    kept = convert_linears(model, MaskedLinear.from_linear)  # holds the same tensor: allowed
    assert kept.lm_head.weight is kept.tok_emb.weight and isinstance(kept.proj, MaskedLinear)
    part = convert_linears(model, to_blocks, names=["proj"])
    assert isinstance(part.proj, BlockSparseLinear) and part.lm_head.weight is \
        part.tok_emb.weight
    ids = torch.randint(0, 50, (2, 5))
    torch.testing.assert_close(part(ids), model(ids), atol=1e-5, rtol=1e-5)  # every block kept
    with pytest.raises(ValueError, match="not nn.Linear"):
        convert_linears(model, to_blocks, names=["tok_emb"])
