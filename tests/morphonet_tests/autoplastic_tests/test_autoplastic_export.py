"""morphonet.autoplastic.export: the static export computes the gated network's eval-mode
function (≤ 1e-5 relative) for each kind of removal, and is smaller by what was removed."""

import pytest
import torch

from morphonet.autoplastic import AutoplasticNet, export_static, reinitialise
from morphonet.autoplastic.export import StaticBlock

SHAPES = {1: (2, 24), 2: (2, 8, 8)}


def _model(dims, gates="learned", seed=0):
    """Blocks: 0 identity (8→8), 1 identity, 2 widening stride 2 (8→16), 3 identity; batch-norm
    statistics and affine parameters away from their defaults, gates all open at 0.9."""
    torch.manual_seed(seed)
    m = AutoplasticNet(5, in_channels=2, dims=dims, stem_width=8, widths=(8, 8, 16, 16),
                       strides=(1, 1, 2, 1), gates=gates)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.normal_(0, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.3)
        for b in m.blocks:
            b.mix.logit.normal_(0, 0.5)
    return m.eval()


def _rel(model, static, dims):
    x = torch.randn(16, *SHAPES[dims], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(x), static(x)
    assert ref.abs().max() > 0.1  # the network computes something
    return float((ref - out).abs().max() / ref.abs().max())


@pytest.mark.parametrize("dims", [1, 2])
def test_open_gates_fold_into_the_last_norms(dims):
    m = _model(dims)
    with torch.no_grad():
        m.blocks[0].c_gate.logits.uniform_(-1.0, 2.0)  # C in (0, 1): scaled, none removed
    s = export_static(m)
    assert len(s.blocks) == 4 and all(b.index is None for b in s.blocks)
    assert s.macs(SHAPES[dims]) == m.macs(SHAPES[dims])
    b, sb = m.blocks[0], s.blocks[0]
    g = float(b.P) * b.C * float(b.alpha)
    torch.testing.assert_close(sb.conv.bn2.weight, b.conv.bn2.weight * g)
    assert _rel(m, s, dims) <= 1e-5


@pytest.mark.parametrize("dims", [1, 2])
def test_depth_gate_zero_removes_an_identity_block(dims):
    m = _model(dims)
    with torch.no_grad():
        m.blocks[1].p_gate.logits.fill_(-3.0)
    assert float(m.blocks[1].P) == 0.0
    s = export_static(m)
    assert len(s.blocks) == 3  # gone: ReLU(x + 0) = x after the block before's ReLU
    full = m.macs(SHAPES[dims])
    assert s.macs(SHAPES[dims]) == full - m.blocks[1].macs(m.spatial_sizes(SHAPES[dims])[1])
    assert _rel(m, s, dims) <= 1e-5


@pytest.mark.parametrize("dims", [1, 2])
def test_depth_gate_zero_keeps_a_projection_shortcut(dims):
    m = _model(dims)
    with torch.no_grad():
        m.blocks[2].p_gate.logits.fill_(-3.0)
    s = export_static(m)
    assert len(s.blocks) == 4
    sb = s.blocks[2]
    assert sb.conv is None and sb.attn is None and sb.shortcut is not None
    assert _rel(m, s, dims) <= 1e-5


@pytest.mark.parametrize("dims", [1, 2])
def test_channel_gates_zero_remove_channels(dims):
    m = _model(dims)
    dead = torch.tensor([0, 3, 4, 9, 15])
    with torch.no_grad():
        m.blocks[3].c_gate.logits[dead] = -3.0
    s = export_static(m)
    sb = s.blocks[3]
    live = [c for c in range(16) if c not in dead.tolist()]
    assert sb.index.tolist() == live
    assert sb.conv.conv2.out_channels == 11 and sb.attn.proj.out_channels == 11
    assert m.structure()["live_channels"][3] == 11
    assert s.macs(SHAPES[dims]) < m.macs(SHAPES[dims])
    assert _rel(m, s, dims) <= 1e-5


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("alpha, gone", [(1.0, "attn"), (0.0, "conv")])
def test_saturated_alpha_removes_a_branch(dims, alpha, gone):
    m = _model(dims)
    with torch.no_grad():
        m.blocks[0].mix.logit.fill_(3.0 if alpha == 1.0 else -3.0)
    assert float(m.blocks[0].alpha) == alpha and m.blocks[0].mix.saturated() == alpha
    s = export_static(m)
    assert getattr(s.blocks[0], gone) is None
    kept = "conv" if gone == "attn" else "attn"
    assert getattr(s.blocks[0], kept) is not None
    assert _rel(m, s, dims) <= 1e-5


def test_every_removal_at_once_and_the_model_unchanged():
    m = _model(2)
    with torch.no_grad():
        m.blocks[0].mix.logit.fill_(-3.0)
        m.blocks[1].p_gate.logits.fill_(-3.0)
        m.blocks[2].c_gate.logits[:6] = -3.0
        m.blocks[3].mix.logit.fill_(3.0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s = export_static(m)
    assert [type(b) for b in s.blocks] == [StaticBlock] * 3
    assert _rel(m, s, 2) <= 1e-5
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.structure()["depth"] == 3


def test_rule_gates_and_no_gates_export_exactly():
    for gates in ("rules", "none"):
        m = _model(1, gates=gates)
        s = export_static(m)
        assert len(s.blocks) == 4 and _rel(m, s, 1) <= 1e-5


def test_reinitialise_keeps_the_architecture_and_changes_the_weights():
    m = _model(1)
    with torch.no_grad():
        m.blocks[3].c_gate.logits[:4] = -3.0
    s = export_static(m)
    fresh = reinitialise(export_static(m), seed=3)
    assert fresh.macs(SHAPES[1]) == s.macs(SHAPES[1])
    assert not torch.equal(fresh.blocks[0].conv.conv1.weight, s.blocks[0].conv.conv1.weight)
    assert torch.equal(fresh.blocks[0].conv.bn2.weight, torch.ones(8))
