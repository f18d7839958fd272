"""MorphoNet models: counting, skip connections, neuron shrink and block export (exact)."""


import pytest
import torch

from morphonet import (
    MorphoConfig,
    MorphoNetCNN,
    MorphoNetMLP,
)
from morphonet.masks.export import shrink, to_block_sparse
from morphonet.masks.schedule import (
    enforce_sparsity,
)

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
