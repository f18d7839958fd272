"""morphonet.autoplastic.gates: hard-concrete L0 gates (values, exact zeros, the L0
probability), the straight-through alternative, the seed's rule gates and floors, α."""

import math

import pytest
import torch

from morphonet.autoplastic import HardConcreteGate, MixGate, RuleGate, SigmoidSTGate
from morphonet.autoplastic.gates import make_gate


def test_hard_concrete_starts_at_its_init_and_reaches_exact_zero_and_one():
    g = HardConcreteGate(4, init=0.9).eval()
    torch.testing.assert_close(g(), torch.full((4,), 0.9))
    assert torch.equal(g.active(), torch.ones(4, dtype=torch.bool))
    with torch.no_grad():
        g.logits.copy_(torch.tensor([-2.5, -2.3, 2.3, 2.5]))
    v = g.value()
    assert v[0] == 0.0 and 0.0 < v[1] < 0.1 and 0.9 < v[2] < 1.0 and v[3] == 1.0
    assert g.active().tolist() == [False, True, True, True]


def test_hard_concrete_samples_match_its_l0_probability():
    torch.manual_seed(0)
    g = HardConcreteGate(3, init=0.5).train()
    with torch.no_grad():
        g.logits.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    z = g(100000)  # (batch, n), one draw per row
    assert z.shape == (100000, 3) and z.min() >= 0.0 and z.max() <= 1.0
    nonzero = (z != 0).float().mean(0)
    torch.testing.assert_close(nonzero, g.prob_active().detach(), atol=0.006, rtol=0)  # ~4 sd
    assert ((z == 1.0).float().mean(0) > 0.05).all()  # mass at exactly 1 too
    # the probability is differentiable in the logits (the penalty's gradient)
    g.prob_active().sum().backward()
    assert (g.logits.grad > 0).all()


def test_sigmoid_straight_through_is_hard_forward_and_smooth_backward():
    g = SigmoidSTGate(2, init=0.9)
    with torch.no_grad():
        g.logits.copy_(torch.tensor([0.3, -0.3]))
    v = g(5)
    assert v.shape == (5, 2) and v[0].tolist() == [1.0, 0.0]
    v.sum().backward()
    s = torch.sigmoid(torch.tensor([0.3, -0.3]))
    torch.testing.assert_close(g.logits.grad, 5 * s * (1 - s))


def test_floors_bound_the_gates_like_the_seed():
    g = make_gate("learned", "hard_concrete", 3, 0.9, (0.4, 0.995))
    with torch.no_grad():
        g.logits.fill_(-10.0)
    assert torch.all(g.value() == 0.4) and g.active().all()  # a floor: never removed
    r = make_gate("rules", "hard_concrete", 2, 0.9, (0.5, 1.0))
    assert isinstance(r, RuleGate) and r(7).shape == (7, 2)
    r.nudge(torch.tensor([-1.0, 0.05]))
    assert r.value().tolist() == [0.5, pytest.approx(0.95)]
    r.nudge(torch.tensor([0.0, 1.0]))
    assert r.value()[1] == 1.0
    assert make_gate("none", "hard_concrete", 2, 0.9) is None
    with pytest.raises(ValueError, match="init"):
        HardConcreteGate(2, init=0.3, lo=0.4)


def test_mix_gate_is_one_half_at_start_and_saturates_exactly():
    a = MixGate(0.5)
    assert a().item() == pytest.approx(0.5) and a.saturated() is None
    with torch.no_grad():
        a.logit.fill_(math.log(11) + 1e-3)
    assert a().item() == 1.0 and a.saturated() == 1.0
    with torch.no_grad():
        a.logit.fill_(-math.log(11) - 1e-3)
    assert a().item() == 0.0 and a.saturated() == 0.0
    with pytest.raises(ValueError, match="init"):
        MixGate(1.0)
