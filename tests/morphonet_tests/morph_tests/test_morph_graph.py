"""The traced channel groups: residual adds merged, concat offsets, flatten blocks, frozen
groups with their reasons, FLOPs by the issue's formula, and unsupported operations rejected
by name."""

import pytest
import torch
import torch.nn.functional as F
from morph_models import GPTBlock, Mobile, ResCatCNN
from torch import nn

import morphonet.morph as morph
from morphonet.morph import UnsupportedOpError


def test_residual_concat_and_flatten_groups():
    g = morph.trace(ResCatCNN(), torch.randn(2, 1, 40))
    by = {tuple(grp.producers): grp for grp in g.groups.values()}
    res = by[("stem", "block1.c2", "block2.c2")]  # every residual add merged into one group
    assert res.frozen is None and res.size == 16
    assert sorted(n for n, _ in res.norms) == ["block1.b2", "block2.b2", "bn"]
    a, b = by[("a",)], by[("b",)]
    assert ("bnc", 0) in a.norms and ("bnc", 8) in b.norms  # concat offsets
    assert ("fc", 0, 10) in a.consumers and ("fc", 80, 10) in b.consumers  # flatten blocks
    assert by[("fc",)].frozen == "model output"
    assert g.groups[0].frozen == "model input"


def test_flops_follow_the_formula():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.Conv2d(8, 4, 1),
                          nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    g = morph.trace(model, torch.randn(1, 3, 5, 5))
    conv = 2 * 5 * 5 * 3 * 3 * 3 * 8      # 2·H_out·W_out·k_h·k_w·in·out
    depthwise = 2 * 5 * 5 * 3 * 3 * 8     # linear in the channels
    point = 2 * 5 * 5 * 1 * 1 * 8 * 4
    linear = 2 * 100 * 2
    assert g.flops() == conv + depthwise + point + linear
    hidden = next(grp for grp in g.groups.values() if grp.producers == ["0"])
    assert hidden.passthrough == [("2", 0)]  # the depthwise convolution carries it
    assert g.flops({hidden.id: 4}) == conv / 2 + depthwise / 2 + point / 2 + linear


def test_grouped_convolution_freezes_its_widths():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 4, 1))
    g = morph.trace(model, torch.randn(1, 3, 6, 6))
    for grp in g.groups.values():
        if grp.producers in (["0"], ["1"]):
            assert "grouped convolution '1'" in grp.frozen
    assert g.flops() == 2 * 36 * 3 * 8 + 2 * 16 * 9 * 8 * 8 / 2 + 2 * 16 * 8 * 4


def test_layer_norm_and_attention_freeze_the_stream_but_not_the_mlp():
    g = morph.trace(GPTBlock(), torch.randint(0, 50, (2, 7)))
    free = g.free_groups()
    assert [grp.producers for grp in free] == [["fc"]]
    stream = next(grp for grp in g.groups.values() if "proj" in grp.producers)
    assert stream.producers == ["proj", "fc2"] and "embedding 'emb'" in stream.frozen


def test_depthwise_group_is_free():
    g = morph.trace(Mobile(), torch.randn(1, 3, 6, 6))
    grp = next(grp for grp in g.groups.values() if grp.producers == ["pw1"])
    assert grp.frozen is None and grp.passthrough == [("dw", 0)]
    assert sorted(n for n, _ in grp.norms) == ["bn1", "bn2"]


class _Roll(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.roll(self.conv(x), 1, dims=1).mean(-1))


class MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = MyLinear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.inner(x))


class _Flip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x).flip(-1))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return x


@pytest.mark.parametrize("model,x,names", [
    (_Roll(), torch.randn(2, 1, 8), ["roll", "roll"]),
    (_Custom(), torch.randn(2, 3), ["inner", "MyLinear"]),
    (_Flip(), torch.randn(2, 3), [".flip()", "flip"]),
    (_Branchy(), torch.randn(2, 3), ["cannot trace _Branchy"]),
])
def test_unsupported_ops_are_rejected_by_name(model, x, names):
    with pytest.raises(UnsupportedOpError) as e:
        morph.trace(model, x)
    for n in names:
        assert n in str(e.value)
    with pytest.raises(UnsupportedOpError):
        morph.NetworkRegularizer(model, x, "group_lasso")


def test_rearranging_ops_freeze_what_they_read():
    class View(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 8)
            self.b = nn.Linear(8, 3)

        def forward(self, x):
            h = F.relu(self.a(x)).view(-1, 2, 4).transpose(1, 2).reshape(-1, 8)
            return self.b(h)

    g = morph.trace(View(), torch.randn(2, 6))
    hidden = next(grp for grp in g.groups.values() if grp.producers == ["a"])
    assert ".view() to a fixed shape" in hidden.frozen
    with pytest.raises(ValueError, match="no channel group whose width may change"):
        morph.NetworkRegularizer(View(), torch.randn(2, 6), "group_lasso")


def test_trace_restores_the_training_mode():
    model = Mobile().train()
    morph.trace(model, torch.randn(2, 3, 6, 6))
    assert all(m.training for m in model.modules())
