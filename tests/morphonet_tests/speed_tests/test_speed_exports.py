"""Exports of `morpho speed`: edge lists (`morphonet.masks.export.to_edge_list`), the dense
twin, every format computing what the trained masked model computes."""

import pytest
import torch
from torch import nn

from morpho_kernels.nn import SparseLinear
from morphonet.masks import MorphoConfig, MorphoNetMLP, MorphoNetTransformer
from morphonet.masks.export import to_edge_list
from morphonet.masks.schedule import enforce_sparsity
from morphonet.speed.models import Structure, dense_twin, exports, parse_structure


def _mlp(granularity, sparsity, block=16, seed=0):
    torch.manual_seed(seed)
    cfg = MorphoConfig(input_dim=13, hidden_dims=[37, 37], n_classes=5, block_size=block,
                       mask_granularity=granularity, use_skip_connections=False)
    m = MorphoNetMLP(cfg)
    with torch.no_grad():  # soft mask values that differ per unit, some hard-pruned
        for layer in m.masked_layers():
            layer.mask_logits.normal_(0, 2)
    m.set_temperature(0.7)
    enforce_sparsity(m, sparsity)
    return m.eval()


def _gpt(granularity, sparsity, seed=0):
    torch.manual_seed(seed)
    cfg = MorphoConfig(network_type="transformer", task="lm", d_model=32, n_heads=4,
                       n_layers=2, max_seq_len=9, mask_granularity=granularity, block_size=16)
    m = MorphoNetTransformer(cfg, vocab_size=23)
    with torch.no_grad():
        for layer in m.masked_layers():
            layer.mask_logits.normal_(0, 2)
        m.attentions()[0].gates().mask_logits.copy_(torch.tensor([1.0, -0.5, 2.0, 0.3]))
    m.prune_heads({1: [2]})
    enforce_sparsity(m, sparsity)
    return m.eval()


@pytest.mark.parametrize("granularity", ["element", "block"])
def test_edge_list_mlp_same_outputs(granularity):
    m = _mlp(granularity, 0.8)
    e = to_edge_list(m)
    x = torch.randn(7, 13)
    layers = [c for c in e.modules() if isinstance(c, SparseLinear)]
    assert len(layers) == 3
    assert sum(c.nnz for c in layers) == m.n_live()  # exactly the live connections
    torch.testing.assert_close(e(x), m(x), rtol=1e-5, atol=1e-6)
    assert isinstance(m.layers[0], nn.Module) and not isinstance(m.layers[0], SparseLinear)


def test_edge_list_transformer_folds_gates_and_drops_pruned_heads():
    m = _gpt("element", 0.6)
    e = to_edge_list(m)
    x = torch.randint(0, 23, (3, 9))
    torch.testing.assert_close(e(x), m(x), rtol=1e-5, atol=1e-5)
    assert all(a.head_gates is None for a in e.attentions())
    live = sum(c.nnz for c in e.modules() if isinstance(c, SparseLinear))
    assert live == m.n_live()  # a pruned head's q/k/v rows and o columns are not stored


def test_edge_list_refuses_neuron_masks():
    with pytest.raises(ValueError, match="no MaskedLinear"):
        to_edge_list(nn.Sequential(nn.Linear(3, 4)))
    m = _mlp("neuron", 0.3)
    e = to_edge_list(m)  # only the element-masked head converts
    assert sum(isinstance(c, SparseLinear) for c in e.modules()) == 1
    x = torch.randn(4, 13)
    torch.testing.assert_close(e(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text,kind", [("element:0.9", "element"), ("block32:0.5", "block"),
                                       ("neuron:0.5", "neuron")])
def test_every_format_same_outputs(text, kind):
    s = parse_structure(text)
    assert s.granularity == kind
    m = _mlp(kind, s.sparsity * 0.8, block=s.block_size)
    x = torch.randn(6, 13)
    for name, e in exports(m, s).items():
        torch.testing.assert_close(e(x), m(x), rtol=1e-5, atol=1e-5, msg=name)


def test_dense_twin_same_architecture_plain_linears():
    m = _gpt("block", 0.0)
    twin = dense_twin(m)
    assert not any(hasattr(c, "mask_logits") for c in twin.modules())
    assert all(a.head_gates is None for a in twin.attentions())
    # the twin's weights are the model's raw weights: with every mask value and gate forced
    # to 1 the masked model computes what the twin computes
    with torch.no_grad():
        for layer in m.masked_layers():
            layer.mask_logits.fill_(1e4)
        for a in m.attentions():
            a.gates().mask_logits.fill_(1e4)
    x = torch.randint(0, 23, (2, 9))
    torch.testing.assert_close(twin(x), m(x), rtol=1e-5, atol=1e-5)


def test_parse_structure_errors():
    assert parse_structure("block64:0.95") == Structure("block", 64, 0.95)
    for bad in ("block:0.9", "block48:0.9", "element", "element:1.0", "column:0.5", 3):
        with pytest.raises(ValueError, match="structure"):
            parse_structure(bad)
