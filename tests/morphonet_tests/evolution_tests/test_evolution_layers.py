"""Item 2 of issue 20: the layers: StandardSparseLayer, ExtremaAwareSparseLayer,
TemporaryPatchLayer (exact at insertion, trains, removable, mergeable)."""

import pytest
import torch
from evo_data import toy_split

import morphonet.evolution as evo
from morphonet.evolution.system import output_change


def test_extrema_aware_layer_is_denser_where_asked():
    lay = evo.ExtremaAwareSparseLayer(40, 30, base_sparsity=0.02, extrema_sparsity=0.5,
                                      dead_outputs=[3, 7], saturated_inputs=[11],
                                      generator=torch.Generator().manual_seed(0))
    mask = lay.edges.to_dense() > 0  # (out, in)
    fan_in, fan_out = mask.sum(1), mask.sum(0)
    assert fan_in[3] >= 20 and fan_in[7] >= 20  # ceil(0.5 · 40) into each dead neuron
    assert fan_out[11] >= 15  # ceil(0.5 · 30) out of the saturated input
    others = [i for i in range(30) if i not in (3, 7)]
    assert fan_in[others].float().mean() < 3
    # the forward is the dense reference (pre-activation), and tracking counts |relu(y)|
    x = torch.randn(9, 40)
    ref = x @ lay.edges.to_dense(lay.values.detach()).T + lay.bias.detach()
    lay.track = True
    y = lay(x)
    lay(x)
    torch.testing.assert_close(y, ref)
    assert int(lay.extrema.count) == 18
    torch.testing.assert_close(lay.extrema.mean, ref.relu().mean(0))
    torch.testing.assert_close(lay.extrema.max, ref.relu().amax(0))
    lay.reset_extrema()
    assert lay.extrema is None
    with pytest.raises(ValueError, match="neuron indices"):
        evo.ExtremaAwareSparseLayer(4, 3, dead_outputs=[5])


def test_extrema_aware_layer_sees_a_dead_relu_neuron():
    """A ReLU neuron with a large negative pre-activation outputs 0: tracked as dead (mean
    and max 0, below the threshold on every sample), not as a large |pre-activation|."""
    lay = evo.ExtremaAwareSparseLayer(5, 3, base_sparsity=1.0, activation="relu",
                                      generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lay.bias[1] = -100.0  # neuron 1 is dead on any input of this scale
    lay.track = True
    lay(torch.randn(32, 5))
    assert float(lay.extrema.mean[1]) == 0.0 and float(lay.extrema.max[1]) == 0.0
    assert float(lay.extrema.mean[1]) < lay.dead_threshold
    assert float(lay.extrema.mean[0]) > 0 and float(lay.extrema.mean[2]) > 0
    # tanh: the post-activation is bounded by 1 (a saturated neuron at most 1, not 100)
    t = evo.ExtremaAwareSparseLayer(5, 3, base_sparsity=1.0, activation="tanh")
    with torch.no_grad():
        t.bias[0] = 100.0
    t.track = True
    t(torch.randn(8, 5))
    assert float(t.extrema.max.max()) <= 1.0


def test_a_trained_patch_changes_only_its_targets():
    """After training, a patch adds to its targets only (no full-width b2): removing it
    restores every other neuron of the stage exactly."""
    (xt, yt), (xv, yv) = toy_split()
    net = evo.create_standard_network([6, 10, 8, 3], 0.3, "tanh", seed=0)
    ctx = evo.NetworkContext(net, (xt, yt), val_data=(xv, yv))
    trainer = evo.StandardNetworkTrainer(epochs=1, learning_rate=0.05)
    trainer.train(ctx)
    patch = net.add_patch(0, sources=[0, 3], targets=[2, 7], patch_size=3)
    assert patch.second.bias is None
    trainer.train(ctx)
    assert (patch.second.values.detach()[:patch.second.nnz] != 0).any()  # it learnt
    x = torch.randn(40, 6) * 3
    st = net.stages[0]
    with torch.no_grad():
        h = st(x)
        net.remove_patch(patch)
        plain = st(x)
    others = [i for i in range(10) if i not in (2, 7)]
    assert torch.equal(h[:, others], plain[:, others])
    assert (h[:, [2, 7]] != plain[:, [2, 7]]).any()


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_patch_is_exact_trains_and_merges(activation):
    (xt, yt), (xv, yv) = toy_split()
    net = evo.create_standard_network([6, 10, 8, 3], 0.3, activation, seed=0)
    ctx = evo.NetworkContext(net, (xt, yt), val_data=(xv, yv))
    trainer = evo.StandardNetworkTrainer(epochs=1, learning_rate=0.02)
    trainer.train(ctx)
    x = torch.randn(50, 6) * 3
    with torch.no_grad():
        before = net(x).clone()
    patch = net.add_patch(1, sources=[0, 2, 5], targets=[1, 4], patch_size=3)
    assert isinstance(patch, evo.TemporaryPatchLayer) and net.patches() == [patch]
    with torch.no_grad():
        assert torch.equal(net(x), before)  # exact at insertion, on any input
    # it reads only its sources and writes only its targets
    src1, _ = patch.first.edges.to_coo()
    _, dst2 = patch.second.edges.to_coo()
    assert set(src1.tolist()) == {0, 2, 5} and set(dst2.tolist()) == {1, 4}
    assert patch.first.nnz == 9 and patch.second.nnz == 6  # dense on its neurons
    # removing an untrained patch restores the network exactly
    net.remove_patch(patch)
    with torch.no_grad():
        assert torch.equal(net(x), before)
    patch = net.add_patch(1, sources=[0, 2, 5], targets=[1, 4], patch_size=3)
    trainer.train(ctx)
    assert (patch.second.values.detach()[:6] != 0).sum() >= 3  # it learnt (a dead ReLU aside)
    with torch.no_grad():
        trained = net(x).clone()
    net.merge_patch(patch)
    assert net.patches() == [] and patch in list(net.stages[1].blocks)
    with torch.no_grad():
        assert torch.equal(net(x), trained)  # merging changes nothing
    other = net.add_patch(0, list(range(10)), [2], 3)
    trainer.train(ctx)
    with torch.no_grad():
        kept = net(x).clone()
    net.remove_patch(other)
    evo.sync_optimizer(ctx.optimizer, net.parameter_groups())
    assert evo.optimizer_report(ctx.optimizer, net) == {"missing": 0, "stale": 0}
    with torch.no_grad():
        assert output_change([kept], [net(x)]) > 0  # removal drops what it learnt
    with pytest.raises(ValueError, match="not in this network"):
        net.remove_patch(other)


def test_patches_follow_widening():
    net = evo.create_standard_network([4, 5, 3], 0.5, "tanh", seed=1)
    net.add_patch(0, [0, 1], [4], 2)
    x = torch.randn(20, 4)
    with torch.no_grad():
        before = net(x).clone()
    net.widen(0, 2)
    with torch.no_grad():
        assert torch.equal(net(x), before)
    assert net.patches()[0].first.in_features == 7
