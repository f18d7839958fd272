"""The stability gate: S does not depend on the block's width (the seed's did), and α trains
only in blocks whose S < ε."""

import math

import torch

from morphonet.autoplastic import ANNBlock, AutoplasticNet, StabilityGate
from morphonet.autoplastic.stability import (
    EMASnapshot,
    block_weights,
    channel_stability,
    relative_change,
    seed_stability,
    stability,
)
from morphonet.loop import TrainLoop


def _updated(width, rel=0.1, seed=0):
    """(weights, EMA reference) of a block of ``width`` channels whose weights moved by
    ``rel`` of their norm in a random direction."""
    torch.manual_seed(seed)
    block = ANNBlock(width, width, dims=2)
    ref = {n: p.detach().clone() for n, p in block_weights(block).items()}
    with torch.no_grad():
        noise = {n: torch.randn_like(p) for n, p in ref.items()}
        scale = rel * math.sqrt(sum(float(r.pow(2).sum()) for r in ref.values())) / math.sqrt(
            sum(float(z.pow(2).sum()) for z in noise.values()))
        for n, p in block_weights(block).items():
            p.add_(noise[n] * scale)
    return block_weights(block), ref


def test_same_relative_update_gives_the_same_stability_at_4x_the_width():
    w8, r8 = _updated(8)
    w32, r32 = _updated(32)
    assert relative_change(w8, r8) == pytest_approx(0.1)
    s8, s32 = stability(w8, r8), stability(w32, r32)
    assert abs(s8 - math.exp(-0.1)) < 1e-5 and abs(s32 - s8) < 1e-5
    assert s8 > 0.85  # a 10% change is "stable" at ε = 0.85, at any width
    # the seed's unnormalised S: the same update reads "unstable", the more so the wider
    # the block (0.53 at 8 channels, 0.31 at 32 here)
    assert seed_stability(w32, r32) < seed_stability(w8, r8) - 0.1 < 0.85


def pytest_approx(v, rel=1e-5):
    import pytest

    return pytest.approx(v, rel=rel)


def test_channel_stability_is_per_output_channel_and_relative():
    ref = torch.randn(6, 4, 3, 3)
    w = ref.clone()
    w[2] *= 1.5  # channel 2 changed by 50% of its norm, the others not at all
    s = channel_stability(w, ref)
    assert s.shape == (6,)
    torch.testing.assert_close(s[2], torch.tensor(math.exp(-0.5)))
    assert torch.all(s[[0, 1, 3, 4, 5]] == 1.0)


def test_ema_snapshot_averages():
    e = EMASnapshot(0.9)
    e.update({"w": torch.zeros(3)})
    e.update({"w": torch.ones(3)})
    torch.testing.assert_close(e.values["w"], torch.full((3,), 0.1))


def _alpha_after_two_epochs(epsilon):
    torch.manual_seed(0)
    m = AutoplasticNet(3, in_channels=1, dims=1, stem_width=4, widths=(4, 4), strides=(1, 1),
                       gates="none")
    x, y = torch.randn(64, 1, 12), torch.randint(0, 3, (64,))
    gate = StabilityGate(m, epsilon=epsilon)
    opts = [torch.optim.SGD(m.weight_parameters(), lr=0.1),
            torch.optim.Adam(m.arch_parameters(), lr=0.05)]
    loop = TrainLoop(m, opts, hooks=[gate], batch_size=16, select=None,
                     generator=torch.Generator().manual_seed(0))
    logits = []
    loop.fit((x, y), None, 1)
    logits.append(torch.stack([b.mix.logit.detach().clone() for b in m.blocks]))
    loop.fit((x, y), None, 1)
    logits.append(torch.stack([b.mix.logit.detach().clone() for b in m.blocks]))
    return logits, loop.history, gate


def test_alpha_trains_only_while_unstable():
    # ε = 0: every block is stable after the first epoch, so α stays where epoch 1 left it
    (a1, a2), hist, gate = _alpha_after_two_epochs(0.0)
    assert hist[0]["alpha_trained"] == [True, True]  # before any measurement: trainable
    assert torch.all(a1 != 0.0)  # it did train in the first epoch
    assert torch.equal(a1, a2) and hist[0]["S"][0] < 1.0
    assert gate.trainable == [False, False]
    # ε = 1: every block is unstable (S < 1), α keeps training
    (b1, b2), _, gate = _alpha_after_two_epochs(1.0)
    assert torch.all(b1 != b2) and gate.trainable == [True, True]
