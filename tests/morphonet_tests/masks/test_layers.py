"""MorphoLinear and MorphoConv against their reference formula, with every gradient."""


import pytest
import torch
import torch.nn.functional as F

from morphonet import (
    MorphoConv,
    MorphoLinear,
)

# ---------------------------------------------------------------------------- layers


def _reference_linear(layer, x):
    mask = layer.expand_units(torch.sigmoid(layer.mask_logits / layer.temperature))
    if layer.granularity == "neuron":
        return F.linear(x, layer.weight, layer.bias) * torch.sigmoid(
            layer.mask_logits / layer.temperature)
    return F.linear(x, layer.weight * mask, layer.bias)


def _grads(out, params):
    return torch.autograd.grad(out.square().sum(), params)


@pytest.mark.parametrize("granularity", ["element", "block", "neuron"])
def test_morpho_linear_matches_reference_with_gradients(granularity):
    torch.manual_seed(0)
    layer = MorphoLinear(37, 21, granularity=granularity, block_size=16, init_density=0.6,
                         temperature=0.8).double()
    with torch.no_grad():
        layer.mask_logits.normal_(0, 2)
        layer.mask_logits.view(-1)[:3] = float("-inf")  # hard-pruned units stay exact zeros
    x = torch.randn(5, 37, dtype=torch.float64)
    params = [layer.weight, layer.bias, layer.mask_logits]
    out, ref = layer(x), _reference_linear(layer, x)
    torch.testing.assert_close(out, ref)
    for g, gr in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(g, gr)
        assert torch.isfinite(g).all()
    assert layer.get_mask().shape == (21, 37)


@pytest.mark.parametrize("dims, kw", [
    (1, dict(stride=2, padding=1, dilation=1, groups=1)),
    (1, dict(stride=1, padding=2, dilation=2, groups=3)),
    (2, dict(stride=2, padding=1, dilation=1, groups=1)),
    (2, dict(stride=(1, 2), padding=(2, 0), dilation=2, groups=3)),
])
@pytest.mark.parametrize("granularity", ["element", "block", "neuron"])
def test_morpho_conv_matches_reference_with_gradients(dims, kw, granularity):
    torch.manual_seed(1)
    conv = MorphoConv(dims, 6, 9, 3, granularity=granularity, block_size=16, **kw).double()
    with torch.no_grad():
        conv.mask_logits.normal_(0, 2)
    shape = (2, 6, 17) if dims == 1 else (2, 6, 11, 9)
    x = torch.randn(*shape, dtype=torch.float64)
    ref_conv = F.conv1d if dims == 1 else F.conv2d
    s = torch.sigmoid(conv.mask_logits / conv.temperature)
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    if granularity == "neuron":
        ref = ref_conv(x, conv.weight, conv.bias, *args) * s.reshape(1, -1, *[1] * dims)
    else:
        ref = ref_conv(x, conv.weight * conv.expand_units(s), conv.bias, *args)
    out = conv(x)
    torch.testing.assert_close(out, ref)
    params = [conv.weight, conv.bias, conv.mask_logits]
    for g, gr in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(g, gr)


def test_prune_counts_connections_per_unit_and_zeroes_gradients():
    torch.manual_seed(0)
    layer = MorphoLinear(40, 20, granularity="block", block_size=16)  # 2×3 blocks, ragged
    with torch.no_grad():
        layer.mask_logits.copy_(torch.tensor([[3.0, -3.0, 3.0], [-3.0, 3.0, -3.0]]))
    # pruned: block (0,1) 16×16, block (1,0) 4×16, block (1,2) 4×8
    assert layer.prune(0.5) == 256 + 64 + 32
    assert layer.n_live() == 800 - 352
    x = torch.randn(3, 40)
    layer(x).sum().backward()
    assert torch.isneginf(layer.mask_logits[0, 1]) and layer.mask_logits.grad[0, 1] == 0
    assert (layer.get_mask(hard=True)[:16, 16:32] == 0).all()
    with pytest.raises(ValueError, match="threshold"):
        layer.prune(1.5)


def test_the_seeds_visualisation_snippet_works_on_every_layer_kind(tmp_path):
    """The seed's snippet puts ``layer.get_mask(hard=True)`` into ``plt.imshow``; a 2-D
    convolution's mask is 4-D, so the 2-D view is one call: ``layer.mask_matrix(hard=True)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from morphonet import MorphoConfig, MorphoNetCNN

    torch.manual_seed(0)
    cfg = MorphoConfig(n_classes=3, hidden_dims=[8], conv_channels=[4, 6], sparse_init=0.5)
    model = MorphoNetCNN(cfg, input_shape=(2, 8, 8))
    assert model.layers[0].get_mask(hard=True).dim() == 4
    for i, layer in enumerate(model.layers):
        mask = layer.mask_matrix(hard=True).cpu().numpy()
        w = layer.weight
        assert mask.shape == (w.shape[0], w[0].numel())
        assert (mask == layer.get_mask(hard=True).reshape(w.shape[0], -1).numpy()).all()
        plt.figure(figsize=(8, 6))
        plt.imshow(mask, cmap="binary")
        plt.title(f"Layer {i} Connectivity ({mask.mean():.1%} active)")
        plt.colorbar(label="Active")
        plt.savefig(tmp_path / f"layer_{i}_connectivity.png")
        plt.close()
    assert len(list(tmp_path.glob("*.png"))) == len(model.layers)
