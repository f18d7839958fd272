"""morphonet.masks.export.to_block_sparse: same outputs, trainable, block structure kept,
ties refused."""

import pytest
import torch
from torch import nn

from morpho_kernels.nn import BlockSparseLinear, MaskedLinear
from morphonet.masks.config import MorphoConfig
from morphonet.masks.export import to_block_sparse
from morphonet.masks.layers import MorphoLinear
from morphonet.masks.transformer import MorphoNetTransformer


def _block_masked_mlp(block=16, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(MaskedLinear(64, 48), nn.ReLU(), MaskedLinear(48, 10))
    with torch.no_grad():
        lay = model[0]
        keep = torch.rand(48 // block, 64 // block) < 0.5
        keep[0, 0] = True
        elem = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
        lay.mask_logits.copy_(torch.where(elem, torch.randn(48, 64), torch.tensor(float("-inf"))))
        # element-level pruning inside kept blocks too
        lay.mask_logits[5, 3] = float("-inf")
        model[2].mask_logits.normal_()
    return model, keep


def test_export_same_outputs_and_structure():
    model, keep = _block_masked_mlp()
    model[2].prune(0.5)  # second layer: element masks, pruned, padded to blocks
    sparse = to_block_sparse(model, block_size=16)
    assert isinstance(sparse[0], BlockSparseLinear) and isinstance(sparse[2], BlockSparseLinear)
    assert isinstance(model[0], MaskedLinear)  # not in place
    assert torch.equal(sparse[0].layout.block_mask(), keep)
    x = torch.randn(7, 64)
    torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)


def test_export_fine_tunes():
    model, _ = _block_masked_mlp(seed=1)
    model[2].prune(0.5)
    sparse = to_block_sparse(model, block_size=16)
    opt = torch.optim.Adam(sparse.parameters(), lr=1e-2)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(sparse(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def test_export_rejects_bad_arguments():
    model, _ = _block_masked_mlp()
    with pytest.raises(ValueError, match="block_size"):
        to_block_sparse(model)
    with pytest.raises(ValueError, match="block_size"):
        to_block_sparse(model, block_size=24)
    with pytest.raises(ValueError, match="no MaskedLinear"):
        to_block_sparse(nn.Sequential(nn.Linear(4, 4)), block_size=16)


# ---------------------------------------------------------------------- MorphoNetTransformer

V = 12  # vocab; token 0 pads where a pad_token_id is used


def _pruned_transformer(gran="block", n_heads=2, seed=0, **kw):
    """A tiny transformer (d_model 32, 2 blocks) with random mask logits, live gates well
    below 1, head 1 of block 0 pruned, T = 0.8, pruned at 0.3 (some blocks / elements go)."""
    torch.manual_seed(seed)
    cfg = MorphoConfig(network_type="transformer", n_classes=3, d_model=32, n_heads=n_heads,
                       n_layers=2, max_seq_len=16, mask_granularity=gran, block_size=16, **kw)
    m = MorphoNetTransformer(cfg, vocab_size=V).eval()
    with torch.no_grad():
        for lay in m.masked_layers():
            lay.mask_logits.normal_()
        for attn in m.attentions():
            attn.head_gates.mask_logits.uniform_(-0.2, 0.8)  # σ(g/0.8) ∈ (0.44, 0.73)
    m.set_temperature(0.8)
    m.prune_heads({0: [1]})
    m.prune(0.3)
    assert m.pruned_heads()[0].tolist() == [False, True] + [False] * (n_heads - 2)
    assert 0.05 < m.sparsity() < 0.9
    return m


def _padded_tokens(n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, V, (4, n), generator=g)
    valid = torch.ones(4, n, dtype=torch.bool)
    valid[1, 6:] = False
    valid[2, 3:] = False
    return x, valid


@pytest.mark.parametrize("task,causal", [("classification", False), ("classification", True),
                                         ("lm", True)])
def test_export_transformer_same_outputs(task, causal):
    m = _pruned_transformer(task=task, causal=causal)
    gates = m.head_gates()
    sparse = to_block_sparse(m)
    for blk in sparse.blocks:
        for lay in (blk.attn.q, blk.attn.k, blk.attn.v, blk.attn.o, blk.ff1, blk.ff2):
            assert isinstance(lay, BlockSparseLinear)
        assert blk.attn.head_gates is None  # folded into o
    assert isinstance(sparse.head, BlockSparseLinear)
    # the pruned head's blocks are gone: q, k, v rows 16..31 and o columns 16..31 of block 0
    attn = sparse.blocks[0].attn
    for lay in (attn.q, attn.k, attn.v):
        assert not bool(lay.layout.block_mask()[1].any())
    assert not bool(attn.o.layout.block_mask()[:, 1].any())
    # the original is untouched and still has its gates and temperature
    assert isinstance(m.blocks[0].attn.o, MorphoLinear) and torch.equal(m.head_gates(), gates)
    x, valid = _padded_tokens()
    with torch.no_grad():
        for mask in (None, valid, valid.long()):
            torch.testing.assert_close(sparse(x, attention_mask=mask),
                                       m(x, attention_mask=mask), atol=1e-5, rtol=1e-5)
    # gradients: every parameter both models have (embeddings, norms, biases) gets the same
    # gradient, and each converted layer's block values get the original's gradient with
    # respect to its effective weight W ⊙ σ(M/T) (= W.grad / σ where σ > 0)
    m.eval()
    sparse.eval()
    for model in (m, sparse):
        model.zero_grad()
        model(x, attention_mask=valid).float().pow(2).mean().backward()
    ours = dict(sparse.named_parameters())
    shared = [(n, p) for n, p in m.named_parameters() if n in ours
              and ours[n].shape == p.shape and p.grad is not None]
    assert {"tok_emb.weight", "pos_emb.weight", "ln_f.weight"} <= {n for n, _ in shared}
    assert any(n.endswith("bias") for n, _ in shared)
    for n, p in shared:
        torch.testing.assert_close(ours[n].grad, p.grad, atol=1e-5, rtol=1e-4, msg=n)
    for orig, conv in ((m.blocks[0].ff1, sparse.blocks[0].ff1),
                       (m.blocks[1].attn.q, sparse.blocks[1].attn.q), (m.head, sparse.head)):
        g = conv.layout.to_dense(conv.values.grad)[:orig.out_features, :orig.in_features]
        sig = orig.get_mask().detach()
        live = sig > 0
        assert bool(live.any()) and bool((orig.weight.grad[live] != 0).any())
        torch.testing.assert_close(g[live] * sig[live], orig.weight.grad[live], atol=1e-5,
                                   rtol=1e-4)
    # the live gates (σ(g/T) at T = 0.8, not 1) were folded in: the converted model no longer
    # depends on the temperature, while the original's set_temperature works as before
    with torch.no_grad():
        ref = sparse(x, attention_mask=valid)
        m.set_temperature(2.0)
        assert torch.equal(sparse(x, attention_mask=valid), ref)
        assert not torch.allclose(m(x, attention_mask=valid), ref)


def test_export_transformer_pad_token_id_and_hand_pruned_head():
    m = _pruned_transformer(task="lm", pad_token_id=0, seed=2)
    attn = m.blocks[1].attn
    with torch.no_grad():  # a head pruned by hand: its mask units stay live
        attn.q.mask_logits[0] = 1.0
        attn.o.mask_logits[:, 0] = 1.0
        attn.head_gates.mask_logits[0] = float("-inf")
    sparse = to_block_sparse(m)
    attn = sparse.blocks[1].attn  # its blocks are dropped all the same
    assert not bool(attn.q.layout.block_mask()[0].any())
    assert not bool(attn.o.layout.block_mask()[:, 0].any())
    x, valid = _padded_tokens(seed=3)
    x = x.masked_fill(~valid, 0)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), m(x), atol=1e-5, rtol=1e-5)


def test_export_transformer_element_and_neuron_masks_with_block_size():
    # element masks, heads of 8 (narrower than a block): the pruned head's o columns share
    # blocks with a live head's, and are exact zeros there
    m = _pruned_transformer(gran="element", n_heads=4, seed=4)
    with pytest.raises(ValueError, match="block_size"):
        to_block_sparse(m)
    sparse = to_block_sparse(m, block_size=16)
    o = sparse.blocks[0].attn.o
    assert isinstance(o, BlockSparseLinear) and sparse.blocks[0].attn.head_gates is None
    assert torch.equal(o.to_linear().weight[:, 8:16], torch.zeros(32, 8))
    x, valid = _padded_tokens()
    with torch.no_grad():
        torch.testing.assert_close(sparse(x, attention_mask=valid),
                                   m(x, attention_mask=valid), atol=1e-5, rtol=1e-5)
    # neuron masks: the projections stay MorphoLinear (use shrink for units), the gates stay
    # and read o's temperature; only the (element-masked) output head converts
    m = _pruned_transformer(gran="neuron", seed=5)
    sparse = to_block_sparse(m, block_size=16)
    attn = sparse.blocks[0].attn
    assert isinstance(attn.o, MorphoLinear) and attn.head_gates is not None
    assert isinstance(sparse.head, BlockSparseLinear)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x, attention_mask=valid),
                                   m(x, attention_mask=valid), atol=1e-5, rtol=1e-5)


def test_export_transformer_clear_errors():
    m = _pruned_transformer(task="lm")
    sparse = to_block_sparse(m)
    # pruning and counting need the gates, which the converted model no longer has
    for call in (sparse.pruned_heads, sparse.head_gates, sparse.prune,
                 lambda: sparse.prune_heads({0: [0]})):
        with pytest.raises(RuntimeError, match="folded"):
            call()
    # an attention whose o was swapped by hand: its gates cannot be evaluated, so no model
    # (and no AttributeError at run time) comes out of the export
    attn = m.blocks[1].attn
    attn.o = BlockSparseLinear.from_linear(nn.Linear(32, 32), density=1.0, block_size=16)
    with pytest.raises(RuntimeError, match="temperature"):
        m(torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        to_block_sparse(m)


def test_export_refuses_a_tied_layer_naming_both_sides():
    """A BlockSparseLinear holds its own values: converting a layer whose weight is tied to
    another module (an LM head and its embedding) would silently untie them."""
    torch.manual_seed(0)

    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(32, 32)
            self.mid = MaskedLinear(32, 32)
            self.head = MaskedLinear.from_linear(nn.Linear(32, 32, bias=False))
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.relu(self.mid(self.emb(ids))))

    model = TiedLM()
    with pytest.raises(ValueError, match=r"head\.weight is tied to emb\.weight"):
        to_block_sparse(model, block_size=16)
    model.head.weight = nn.Parameter(model.head.weight.detach().clone())  # untied by the user
    ids = torch.randint(0, 32, (3, 5))
    torch.testing.assert_close(to_block_sparse(model, block_size=16)(ids), model(ids))
