"""MorphoNetTransformer: shapes, gradients, causal and padding masks, head gates, pruning and
exact counting, training (manual loop and MorphoTrainer), state_dict round trip."""

import pytest
import torch
import torch.nn.functional as F

from morphonet.masks.config import MorphoConfig
from morphonet.masks.layers import MorphoLinear
from morphonet.masks.transformer import MorphoNetTransformer

V = 12  # vocab; token 0 is the padding token where one is used


def _cfg(**kw):
    base = dict(network_type="transformer", n_classes=3, d_model=32, n_heads=2, n_layers=2,
                max_seq_len=16, sparse_init=0.6)
    base.update(kw)
    return MorphoConfig(**base)


def _model(seed=0, vocab=V, **kw):
    torch.manual_seed(seed)
    return MorphoNetTransformer(_cfg(**kw), vocab_size=vocab).eval()


def _tokens(b=4, n=10, seed=1, lo=1):
    return torch.randint(lo, V, (b, n), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- shapes and gradients


@pytest.mark.parametrize("gran", ["element", "block", "neuron"])
@pytest.mark.parametrize("task", ["classification", "lm"])
def test_shapes_and_gradients(task, gran):
    m = _model(task=task, mask_granularity=gran, block_size=16).train()
    x = _tokens()
    out = m(x)
    assert out.shape == ((4, 3) if task == "classification" else (4, 10, V))
    assert len(m.layers) == 6 * 2 + 1 and all(isinstance(lay, MorphoLinear) for lay in m.layers)
    assert [id(lay) for lay in m.layers] == [id(lay) for lay in m.masked_layers()]
    out.float().pow(2).mean().backward()
    for lay in (m.layers[0], m.layers[2], m.layers[4], m.layers[-1]):
        assert lay.weight.grad is not None and lay.weight.grad.abs().sum() > 0
        assert lay.mask_logits.grad is not None and lay.mask_logits.grad.abs().sum() > 0
    for attn in m.attentions():
        g = attn.head_gates.mask_logits.grad
        assert g is not None and bool((g != 0).all())
    assert m.tok_emb.weight.grad.abs().sum() > 0
    # the trainer's suffix rule puts every gate logit with the mask logits
    masks = [n for n, _ in m.named_parameters() if n.endswith("mask_logits")]
    assert "blocks.0.attn.head_gates.mask_logits" in masks and len(masks) == 13 + 2
    # no parameter registered twice
    assert len(list(m.parameters())) == len({id(p) for p in m.parameters()})


def test_lm_does_not_need_n_classes_and_classification_does():
    m = MorphoNetTransformer(MorphoConfig(network_type="transformer", task="lm", d_model=16,
                                          n_heads=2, n_layers=1, max_seq_len=8), vocab_size=7)
    assert m(torch.zeros(2, 8, dtype=torch.long)).shape == (2, 8, 7)
    with pytest.raises(ValueError, match="n_classes"):
        MorphoNetTransformer(MorphoConfig(network_type="transformer"), vocab_size=7)


def test_input_errors_name_the_argument():
    m = _model(n_layers=1)
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        m(torch.full((1, 4), V, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        m(torch.full((1, 4), -1, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        m(torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"\(batch, seq_len\)"):
        m(torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.full((2, 4), 2))
    with pytest.raises(ValueError, match="vocab_size"):
        MorphoNetTransformer(_cfg(), vocab_size=0)
    with pytest.raises(ValueError, match="pad_token_id"):
        MorphoNetTransformer(_cfg(pad_token_id=V), vocab_size=V)


def test_create_morphonet_builds_it():
    from morphonet.masks.factory import create_morphonet

    m = create_morphonet("transformer", vocab_size=9, n_classes=2, d_model=16, n_heads=2,
                         n_layers=1, max_seq_len=8)
    assert isinstance(m, MorphoNetTransformer) and m(torch.ones(3, 5, dtype=torch.long)).shape \
        == (3, 2)


# ---------------------------------------------------------------------- causal and padding


def _last_hidden(m, x):
    seen = {}
    hook = m.blocks[-1].register_forward_hook(lambda mod, inp, out: seen.setdefault("h", out))
    try:
        m(x)
    finally:
        hook.remove()
    return seen["h"]


def test_causal_lm_future_tokens_do_not_change_earlier_logits():
    m = _model(task="lm")
    x = _tokens(n=10)
    x2 = x.clone()
    x2[:, 6] = (x2[:, 6] % (V - 1)) + 1  # a different real token at position 6
    a, b = m(x), m(x2)
    assert torch.equal(a[:, :6], b[:, :6])  # exactly
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_causal_classification_and_non_causal():
    x = _tokens(n=10)
    x2 = x.clone()
    x2[:, 7] = (x2[:, 7] % (V - 1)) + 1
    causal = _model(causal=True)
    assert torch.equal(_last_hidden(causal, x)[:, :7], _last_hidden(causal, x2)[:, :7])
    full = _model(causal=False)
    h, h2 = _last_hidden(full, x), _last_hidden(full, x2)
    assert not torch.allclose(h[:, 0], h2[:, 0])  # position 0 sees the future token
    assert not torch.allclose(full(x), full(x2))


@pytest.mark.parametrize("task", ["classification", "lm"])
def test_appended_padding_changes_nothing(task):
    m = _model(task=task, pad_token_id=0)
    x = _tokens(n=9)
    xp = torch.cat([x, torch.zeros(4, 5, dtype=torch.long)], 1)
    a, b = m(x), m(xp)
    if task == "lm":
        b = b[:, :9]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # explicit attention_mask (0/1 or bool), without pad_token_id
    m2 = _model(task=task)
    valid = torch.cat([torch.ones(4, 9), torch.zeros(4, 5)], 1)
    xr = torch.cat([x, torch.randint(1, V, (4, 5))], 1)  # junk where the mask says padding
    for mask in (valid, valid.bool()):
        b2 = m2(xr, attention_mask=mask)
        torch.testing.assert_close(m2(x), b2 if task != "lm" else b2[:, :9], atol=1e-5, rtol=0)


def test_ragged_batch_rows_match_their_unpadded_selves():
    m = _model(pad_token_id=0)
    rows = [_tokens(1, n, seed=n)[0] for n in (3, 7, 10)]
    batch = torch.zeros(3, 10, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, :len(r)] = r
    out = m(batch)
    for i, r in enumerate(rows):
        torch.testing.assert_close(out[i], m(r[None])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", ["classification", "lm"])
@pytest.mark.parametrize("causal", [False, True])
def test_all_pad_row_has_no_nan(task, causal):
    m = _model(task=task, causal=causal, pad_token_id=0).train()
    x = _tokens(n=8)
    x[1] = 0
    x[2, :5] = 0  # left padding: early queries have no real key
    out = m(x)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


# ---------------------------------------------------------------------- temperature and gates


def test_set_temperature_changes_outputs_and_gates():
    m = _model()
    x = _tokens()
    a = m(x)
    m.set_temperature(0.5)
    assert m.temperature == 0.5
    torch.testing.assert_close(m.head_gates(), torch.full((2, 2), torch.sigmoid(
        torch.tensor(2.0 / 0.5)).item()))
    assert not torch.allclose(a, m(x))
    # per-layer set_temperature (as a trainer looping over masked layers would) moves the
    # gates too: they read the o projection's temperature
    for lay in m.masked_layers():
        lay.set_temperature(1.0)
    assert torch.allclose(m.head_gates(), torch.sigmoid(torch.tensor(2.0)))


def test_pruned_head_contributes_exactly_zero():
    m = _model(task="lm")
    with torch.no_grad():
        m.blocks[0].attn.head_gates.mask_logits[1] = -20.0
    m.prune(1e-3)
    assert m.pruned_heads().tolist() == [[False, True], [False, False]]
    x = _tokens()
    a = m(x)
    attn = m.blocks[0].attn
    with torch.no_grad():  # anything feeding head 1 of block 0 is irrelevant now
        for lay in (attn.q, attn.k, attn.v):
            lay.weight[16:].normal_()
            lay.bias[16:].normal_()
    assert torch.equal(a, m(x))
    # with head 1 restored the output depends on those weights again
    with torch.no_grad():
        attn.head_gates.mask_logits[1] = 2.0
        attn.v.mask_logits.fill_(2.0)
    assert not torch.allclose(a, m(x))


def _count_case(gran="element"):
    """d_model 8, 2 heads of 4, one block, vocab 5, max_seq_len 6, 2 classes, all masks on."""
    torch.manual_seed(0)
    cfg = MorphoConfig(network_type="transformer", n_classes=2, d_model=8, n_heads=2,
                       n_layers=1, max_seq_len=6, sparse_init=1.0, mask_granularity=gran)
    m = MorphoNetTransformer(cfg, vocab_size=5)
    with torch.no_grad():
        for lay in m.masked_layers():
            lay.mask_logits.fill_(5.0)
        m.blocks[0].attn.head_gates.mask_logits.copy_(torch.tensor([5.0, -10.0]))
    return m


def test_prune_counts_are_exact_element():
    m = _count_case()
    attn, blk = m.blocks[0].attn, m.blocks[0]
    # connections: q k v o 4·64, ff1 8·32, ff2 32·8, head 8·2 = 784
    assert m.n_connections() == 784 and m.n_live() == 784
    # other parameters: tok 5·8, pos 6·8, 3 LayerNorms 3·16, biases q k v o 32, ff1 32, ff2 8,
    # head 2 = 210; gate logits and mask logits are not parameters of the count
    assert m.count_params() == (994, 994)
    with torch.no_grad():
        attn.q.mask_logits[0, 0] = float("-inf")   # head 0: dead on its own
        attn.q.mask_logits[5, 1] = float("-inf")   # head 1's row: must not count twice
        attn.o.mask_logits[0, 6] = float("-inf")   # head 1's column: must not count twice
        blk.ff1.mask_logits[3, 3] = float("-inf")
    assert m.n_live() == 780
    removed = m.prune(0.2)  # σ(5/2) = 0.92 stays; σ(-10/2) < 0.2: head 1 goes
    assert m.pruned_heads().tolist() == [[False, True]]
    # dead: head 1 owns q, k, v rows 4..7 (3·32) and o columns 4..7 (32) = 128, plus q[0,0]
    # and ff1[3,3]
    assert m.n_live() == 784 - 130 and removed == 780 - 654
    assert m.sparsity() == pytest.approx(130 / 784)
    # the q, k, v biases of head 1 (3·4) are dead too
    assert m.count_params() == (994, 654 + 210 - 12)
    # the head's units are marked pruned in the layers themselves
    assert bool(attn.q.pruned_units()[4:].all()) and bool(attn.o.pruned_units()[:, 4:].all())
    assert not bool(attn.q.pruned_units()[1:4].any())
    assert m.get_all_masks(hard=True)[0][4:].sum() == 0
    # pruning again removes nothing
    assert m.prune(0.2) == 0 and m.n_live() == 654


def test_prune_counts_are_exact_neuron():
    m = _count_case("neuron")
    attn = m.blocks[0].attn
    # neuron masks: a unit is a whole output row; the head keeps element masks
    with torch.no_grad():
        m.blocks[0].ff1.mask_logits[3] = float("-inf")  # one FFN unit: 8 weights, 1 bias
    assert m.prune(0.2) == 128
    assert m.n_live() == 784 - 8 - 128
    # q/k/v rows of head 1 are neuron units inside the head → pruned; o's units (its output
    # rows) straddle both heads → stay live in o, but their head-1 columns are not counted
    assert attn.q.pruned_units().tolist() == [False] * 4 + [True] * 4
    assert not bool(attn.o.pruned_units().any())
    assert m.count_params() == (994, 784 - 136 + 210 - 1 - 12)


def test_sparsity_penalty_includes_gates():
    m = _count_case()
    pen = m.sparsity_penalty()
    lam, T = m.config.sparsity_loss, m.config.temp_start
    s_on, g0, g1 = (torch.sigmoid(torch.tensor(v / T)).item() for v in (5.0, 5.0, -10.0))
    attn_sum = 4 * 32 * s_on * (g0 + g1)  # 4 projections × (32 connections per head)
    expect = lam * (attn_sum + (256 + 256 + 16) * s_on) / 784
    assert float(pen.detach()) == pytest.approx(expect, rel=1e-5)
    pen.backward()
    assert m.blocks[0].attn.head_gates.mask_logits.grad.abs().sum() > 0
    m.layers[0].sparsity_loss = 0.0  # per-layer λ (the seed's model.layers[i].sparsity_loss)
    assert float(m.sparsity_penalty()) < expect


# ---------------------------------------------------------------------- training


def _contains_3(n=384, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, 10, (n, length), generator=g)
    y = torch.arange(n) % 2
    pos = torch.randint(0, length, (n,), generator=g)
    x[y == 1, pos[y == 1]] = 3
    return x, y


def test_tiny_model_learns_token_presence():
    torch.manual_seed(0)
    cfg = _cfg(n_classes=2, d_model=16, n_heads=2, n_layers=1, sparse_init=0.8)
    m = MorphoNetTransformer(cfg, vocab_size=10)
    x, y = _contains_3()
    masks = [p for n, p in m.named_parameters() if n.endswith("mask_logits")]
    weights = [p for n, p in m.named_parameters() if not n.endswith("mask_logits")]
    wopt = torch.optim.AdamW(weights, lr=1e-2, weight_decay=0.01)
    mopt = torch.optim.Adam(masks, lr=0.02)
    losses = []
    for step in range(80):
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(step))[:128]
        loss = F.cross_entropy(m(x[idx]), y[idx])
        full = loss + m.sparsity_penalty()
        wopt.zero_grad()
        mopt.zero_grad()
        full.backward()
        wopt.step()
        mopt.step()
        losses.append(float(loss))
    assert sum(losses[:5]) / 5 > 0.6 and sum(losses[-10:]) / 10 < 0.25, losses[::10]
    m.eval()
    with torch.no_grad():
        acc = (m(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9


@pytest.mark.parametrize("task", ["classification", "lm"])
def test_morpho_trainer_trains_the_transformer(task):
    from morphonet.loop import IGNORE_INDEX
    from morphonet.masks.trainer import MorphoTrainer

    torch.manual_seed(0)
    cfg = _cfg(task=task, n_classes=2, d_model=16, n_heads=2, n_layers=1, epochs=6,
               warmup_epochs=1, batch_size=64, weight_lr=1e-2, target_sparsity=0.5, seed=0,
               device="cpu")
    m = MorphoNetTransformer(cfg, vocab_size=10)
    x, y = _contains_3(256)
    if task == "lm":  # next-token targets, the last position ignored
        y = torch.cat([x[:, 1:], torch.full((x.shape[0], 1), IGNORE_INDEX)], 1)
    stats = MorphoTrainer(m, cfg).train(x[:192], y[:192], x[192:], y[192:],
                                        verbose=False)
    for key in ("train_time", "final_loss", "final_sparsity", "total_params",
                "effective_params", "best_val_acc", "loss_history", "sparsity_history"):
        assert key in stats
    assert stats["final_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert stats["effective_params"] < stats["total_params"]
    assert stats["loss_history"][-1] < stats["loss_history"][0]


# ---------------------------------------------------------------------- save / load


def test_state_dict_round_trip(tmp_path):
    m = _model(task="lm", mask_granularity="block", block_size=16)
    m.prune_heads({1: [0]})
    m.prune(0.3)
    path = tmp_path / "t.pt"
    torch.save({"state_dict": m.state_dict(), "mask": m.get_all_masks(),
                "config": m.config.to_dict()}, path)
    ck = torch.load(path, weights_only=True)
    m2 = MorphoNetTransformer(MorphoConfig.from_dict(ck["config"]), vocab_size=V).eval()
    m2.load_state_dict(ck["state_dict"])
    x = _tokens()
    assert torch.equal(m(x), m2(x))
    assert m2.pruned_heads().tolist() == [[False, False], [True, False]]
    assert (m2.n_live(), m2.count_params()) == (m.n_live(), m.count_params())
    for layer in m2.layers:  # the seed's visualisation loop
        assert layer.get_mask(hard=True).dim() == 2


def test_mask_parameters_include_the_head_gates():
    from morpho_kernels.nn import mask_parameters, param_groups

    m = MorphoNetTransformer(_cfg(n_classes=2, d_model=16, n_heads=2, n_layers=1), vocab_size=10)
    masks = {id(p) for p in mask_parameters(m)}
    assert id(m.blocks[0].attn.head_gates.mask_logits) in masks
    assert masks == {id(p) for n, p in m.named_parameters() if n.endswith("mask_logits")}
    decay, no_decay = param_groups(m, 0.1)
    assert not masks & {id(p) for p in decay["params"]}
