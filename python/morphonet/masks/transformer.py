"""MorphoNetTransformer: a pre-norm Transformer built from learned-mask layers.

Every projection (attention q, k, v, o; the feed-forward pair; the output head) is a
`MorphoLinear` with the config's mask granularity, and every attention head has a learned
*gate* σ(g_h/T) scaling its output. Causal and key-padding masks are one explicit boolean mask
given to ``torch.nn.functional.scaled_dot_product_attention``.

Head gates and counting (the design choice)
-------------------------------------------
The gates are **not** a `LearnedMask` layer: they cover no weights of their own, and counting
them as one would count every q/k/v/o connection twice. Instead the model overrides the
counting hooks of `MorphoModel` so that a pruned head (gate logit −inf) kills the connections
it controls:

- head h owns rows ``h·d_head … (h+1)·d_head − 1`` of the q, k and v weights (and those bias
  entries) and the same *columns* of the o weight;
- `n_live` counts a connection as live when its own mask unit is not pruned *and* it does not
  belong to a pruned head, element by element, so nothing is counted twice;
- `count_params` additionally counts the q/k/v biases of a pruned head as dead (the o bias
  stays live), and never counts the gate logits (they are mask logits);
- `sparsity_penalty` penalises the expected live connections Σ σ(M/T)·σ(g_h/T) (the gate of
  the connection's head multiplies its mask value), so the penalty pushes gates down too;
- `prune(threshold)` prunes mask units as the base class does, then the heads whose gate
  σ(g/T) is below the threshold, then marks as pruned (−inf) every q/k/v/o mask unit lying
  wholly inside a pruned head, so ``layer.get_mask(hard=True)`` and the trainer's
  ``enforce_sparsity`` see them as pruned too. A unit straddling heads (an o neuron, a block
  wider than a head) stays live in its layer but its dead part is not counted by `n_live`.

The gate logits are the parameter ``blocks.<i>.attn.head_gates.mask_logits``: the trainer's
suffix rule puts them in the mask optimizer. Their temperature is the o projection's, so
``set_temperature`` (on the model or on every masked layer) updates the gates as well.

Export: a gate scales its head's output, which the o projection reads through its columns
``h·d_head … (h+1)·d_head − 1``, so ``o(y · gate) = (W_o · gate per column) y + b_o``.
`morphonet.masks.export.to_block_sparse` (through `MorphoSelfAttention.to_block_sparse_`)
folds each gate σ(g/T), at the temperature of the moment,
into those columns of the converted o (a pruned head's columns become exact zeros) and sets
``attn.head_gates`` to None: the converted attention has no gates and no temperature, and
computes what the MorphoNet did. Pruning and counting belong to the model before conversion;
on a converted model the methods that need gates raise a `RuntimeError` that says so.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morpho_kernels.checks import check_fraction, check_int
from morpho_kernels.nn import LearnedMask

from ..loop import IGNORE_INDEX
from .config import MorphoConfig
from .export import block_of, convert_layer, convertible, edge_list_layer
from .layers import MorphoLinear
from .models import MorphoModel, _layer_kwargs


class HeadGates(nn.Module):
    """One learned gate logit per attention head: gate_h = σ(g_h / T) (−inf: pruned head).

    Args:
        n_heads: number of heads.
        init: initial logit of every head (+``mask_init``: all heads start open).
    """

    def __init__(self, n_heads: int, init: float = 2.0):
        super().__init__()
        self.mask_logits = nn.Parameter(torch.full((n_heads,), float(init)))  # (H,)

    def values(self, temperature: Tensor) -> Tensor:
        """σ(g/T), shape (H,); exactly 0 for a pruned head."""
        return torch.sigmoid(self.mask_logits / temperature)

    def pruned(self) -> Tensor:
        """Boolean (H,): True where the head is pruned (logit −inf)."""
        return torch.isneginf(self.mask_logits.detach())

    def prune(self, threshold: float, temperature: Tensor) -> int:
        """Prune the live heads whose gate σ(g/T) is below ``threshold``; returns how many."""
        threshold = check_fraction("threshold", threshold)
        with torch.no_grad():
            drop = (self.values(temperature) < threshold) & ~self.pruned()
            self.mask_logits.masked_fill_(drop, float("-inf"))
        return int(drop.sum())

    def extra_repr(self) -> str:
        return f"n_heads={self.mask_logits.numel()}"


class MorphoSelfAttention(nn.Module):
    """Multi-head self-attention with `MorphoLinear` q, k, v, o projections and head gates.

    Args:
        d_model, n_heads: widths (``d_model % n_heads == 0``).
        dropout: attention-probability dropout (training only).
        **linear_kwargs: passed to every `MorphoLinear` (granularity, block_size,
            init_density, mask_init, temperature).
    """

    ROLES = ("q", "k", "v", "o")

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0,
                 gate_init: float = 2.0, **linear_kwargs):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.q = MorphoLinear(d_model, d_model, **linear_kwargs)
        self.k = MorphoLinear(d_model, d_model, **linear_kwargs)
        self.v = MorphoLinear(d_model, d_model, **linear_kwargs)
        self.o = MorphoLinear(d_model, d_model, **linear_kwargs)
        # None once to_block_sparse has folded the gates into o
        self.head_gates: Optional[HeadGates] = HeadGates(n_heads, gate_init)

    def projections(self) -> list[MorphoLinear]:
        """[q, k, v, o]."""
        return [self.q, self.k, self.v, self.o]

    def gates(self) -> HeadGates:
        """The `HeadGates` module; a clear error when the export has folded them into o."""
        if self.head_gates is None:
            raise RuntimeError("this attention's head gates were folded into its o projection "
                               "by to_block_sparse: the converted model has no "
                               "gates (prune and count the MorphoNet before converting it)")
        return self.head_gates

    def gate_temperature(self) -> Tensor:
        """T of the gates: the o projection's temperature (a 0-d tensor)."""
        if not isinstance(self.o, LearnedMask):
            raise RuntimeError(f"the head gates read the o projection's temperature, but o is a "
                               f"{type(self.o).__name__}; convert the whole model with "
                               f"to_block_sparse, which folds the gates into o")
        return self.o.temperature

    def gate_values(self) -> Tensor:
        """σ(g/T) per head, shape (H,), with T the o projection's temperature."""
        return self.gates().values(self.gate_temperature())

    def _per_feature(self, per_head: Tensor) -> Tensor:
        """(H,) → (d_model,): each head's value repeated over its d_head features."""
        return per_head.repeat_interleave(self.d_head)

    def head_region(self, layer: MorphoLinear, per_head: Tensor) -> Tensor:
        """Broadcast a per-head tensor (H,) onto ``layer``'s weight: rows for q, k, v
        ((d_model, 1)), columns for o ((1, d_model))."""
        f = self._per_feature(per_head)
        return f[None, :] if layer is self.o else f[:, None]

    def dead_region(self, layer: MorphoLinear) -> Optional[Tensor]:
        """Weight-shaped bool (broadcastable): connections of ``layer`` owned by pruned heads;
        None when no head is pruned."""
        dead = self.gates().pruned()
        if not bool(dead.any()):
            return None
        return self.head_region(layer, dead).expand_as(layer.weight)

    @torch.no_grad()
    def propagate_pruned_heads(self) -> None:
        """Mark as pruned every q/k/v/o mask unit lying wholly inside pruned heads."""
        for layer in self.projections():
            dead = self.dead_region(layer)
            if dead is None:
                continue
            inside = layer.reduce_units(dead.float()) >= layer.unit_sizes() - 0.5
            inside = inside.to(layer.mask_logits.device) & ~layer.pruned_units()
            if bool(inside.any()):
                layer.prune_units(inside)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """x (B, L, d_model), attn_mask bool (B, 1, L, L) True = may attend → (B, L, d_model)."""
        b, n, _ = x.shape
        h, dh = self.n_heads, self.d_head
        q = self.q(x).view(b, n, h, dh).transpose(1, 2)  # (B, H, L, dh)
        k = self.k(x).view(b, n, h, dh).transpose(1, 2)  # (B, H, L, dh)
        v = self.v(x).view(b, n, h, dh).transpose(1, 2)  # (B, H, L, dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0)  # (B, H, L, dh)
        if self.head_gates is not None:  # None: folded into o by the export
            y = y * self.gate_values().to(y.dtype).view(1, h, 1, 1)  # pruned head → exactly 0
        return self.o(y.transpose(1, 2).reshape(b, n, h * dh))  # (B, L, d_model)


    def to_block_sparse_(self, block_size: Optional[int], threshold: Optional[float]) -> int:
        """Convert the q, k, v, o projections in place to `BlockSparseLinear` (called by
        `morphonet.masks.export.to_block_sparse`), folding the head gates into o's columns when
        o converts (the gates then go: ``head_gates = None``); returns how many projections
        were converted. A neuron-masked o stays a `MorphoLinear` and keeps the gates, which
        read its temperature."""
        return self.convert_projections(
            lambda layer, dead, scale: convert_layer(layer, block_of(layer, block_size),
                                                     threshold, dead=dead, col_scale=scale))

    def to_edge_list_(self, threshold: Optional[float]) -> int:
        """As `to_block_sparse_`, to `SparseLinear` edge lists (called by
        `morphonet.masks.export.to_edge_list`): a pruned head's connections are left out, the
        gates folded into o's columns."""
        return self.convert_projections(
            lambda layer, dead, scale: edge_list_layer(layer, threshold, dead=dead,
                                                       col_scale=scale))

    def convert_projections(self, convert) -> int:
        """Replace each convertible projection by ``convert(layer, dead, col_scale)`` (dead:
        the connections of pruned heads; col_scale: o's folded gates), in place; returns how
        many were converted."""
        if self.head_gates is None:  # already converted: its gates live in o
            return 0
        if not isinstance(self.o, MorphoLinear):
            raise ValueError(f"cannot convert a MorphoSelfAttention whose o projection is a "
                             f"{type(self.o).__name__}: its head gates read o's temperature, so "
                             f"they cannot be evaluated and folded; convert the unconverted "
                             f"model")
        fold = convertible(self.o)
        with torch.no_grad():
            gates = self.gate_values().detach() if fold else None  # before o is replaced
        n = 0
        for role in self.ROLES:
            layer = getattr(self, role)
            if not convertible(layer):
                continue
            scale = self._per_feature(gates) if role == "o" else None
            setattr(self, role, convert(layer, self.dead_region(layer), scale))
            n += 1
        if fold:
            self.head_gates = None
        return n


class MorphoBlock(nn.Module):
    """Pre-norm Transformer block: x + drop(attn(LN(x))), then x + drop(FFN(LN(x))) with the
    FFN MorphoLinear(d, 4d) → GELU → MorphoLinear(4d, d)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, gate_init: float,
                 **linear_kwargs):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MorphoSelfAttention(d_model, n_heads, dropout, gate_init, **linear_kwargs)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff1 = MorphoLinear(d_model, 4 * d_model, **linear_kwargs)
        self.ff2 = MorphoLinear(4 * d_model, d_model, **linear_kwargs)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def masked(self) -> list[MorphoLinear]:
        """[q, k, v, o, ff1, ff2]."""
        return [*self.attn.projections(), self.ff1, self.ff2]

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:  # (B, L, d) → (B, L, d)
        x = x + self.drop(self.attn(self.ln1(x), attn_mask))
        return x + self.drop(self.ff2(self.drop(self.act(self.ff1(self.ln2(x))))))


class MorphoNetTransformer(MorphoModel):
    """Transformer MorphoNet for token sequences (see the module docstring for the head gates
    and how pruned heads are counted).

    Token embedding + learned positional embedding (``max_seq_len``), ``n_layers`` pre-norm
    blocks (masked q/k/v/o projections with per-head gates, masked GELU FFN of width
    4·``d_model``), a final LayerNorm and a `MorphoLinear` head:

    - ``task="classification"``: masked mean pooling over the real tokens → (B, n_classes);
    - ``task="lm"``: per-position logits (B, L, vocab_size); always causal.

    Attention is causal when ``config.causal`` or ``task == "lm"``. Padding: pass
    ``attention_mask`` (B, L) (True / 1 = real token) or set ``config.pad_token_id`` and the mask
    is ``x != pad_token_id``. With neuron granularity the output head keeps element masks (its
    outputs are classes / tokens), as in the MLP. ``use_batchnorm`` and
    ``use_skip_connections`` do not apply (LayerNorm and residuals are always used).

    Args:
        config: a `MorphoConfig` (``n_classes`` required for classification).
        vocab_size: number of token ids (ids must lie in ``[0, vocab_size)``).
    """

    def __init__(self, config: MorphoConfig, vocab_size: int = 10000):
        super().__init__()
        config.validate()
        if config.task == "classification":
            config.require("n_classes")
        check_int("vocab_size", vocab_size, 1)
        if config.pad_token_id is not None and config.pad_token_id >= vocab_size:
            raise ValueError(f"pad_token_id ({config.pad_token_id}) must be < vocab_size "
                             f"({vocab_size})")
        self.config, self.vocab_size = config, vocab_size
        self.causal = config.causal or config.task == "lm"
        d = config.d_model
        common = _layer_kwargs(config)
        self.tok_emb = nn.Embedding(vocab_size, d)
        self.pos_emb = nn.Embedding(config.max_seq_len, d)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            MorphoBlock(d, config.n_heads, config.dropout, config.mask_init, **common)
            for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        head_kw = dict(common)
        if config.mask_granularity == "neuron":
            head_kw["granularity"] = "element"
        n_out = vocab_size if config.task == "lm" else config.n_classes
        self.head = MorphoLinear(d, n_out, **head_kw)

    # ------------------------------------------------------------------ structure

    @property
    def layers(self) -> list[MorphoLinear]:  # type: ignore[override]
        """Every `MorphoLinear` in order: per block q, k, v, o, ff1, ff2; then the head.
        A plain list (the modules are registered once, under ``blocks`` and ``head``)."""
        return [lay for blk in self.blocks for lay in blk.masked()] + [self.head]

    def attentions(self) -> list[MorphoSelfAttention]:
        """The attention module of every block, in order."""
        return [blk.attn for blk in self.blocks]

    def head_gates(self) -> Tensor:
        """Gate values σ(g/T), shape (n_layers, n_heads), detached."""
        with torch.no_grad():
            return torch.stack([a.gate_values() for a in self.attentions()])

    def pruned_heads(self) -> Tensor:
        """Boolean (n_layers, n_heads): True where the head is pruned."""
        return torch.stack([a.gates().pruned() for a in self.attentions()])

    def _owner(self) -> dict[int, MorphoSelfAttention]:
        return {id(lay): a for a in self.attentions() for lay in a.projections()}

    # ------------------------------------------------------------------ forward

    def expected_input(self) -> str:
        return (f"integer token ids of shape (batch, seq_len <= {self.config.max_seq_len}) "
                f"in [0, {self.vocab_size})")

    def n_outputs(self) -> int:
        return self.vocab_size if self.config.task == "lm" else self.config.n_classes

    def _check_features(self, x: Tensor, name: str) -> Tensor:
        """Integer token ids (batch, seq_len ≤ max_seq_len) in [0, vocab_size), as int64: the
        rule of `check_inputs` and of every forward."""
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer token ids for a transformer, got dtype "
                             f"{x.dtype}")
        if x.dim() != 2 or x.shape[1] < 1:
            raise ValueError(f"{name} must have shape (batch, seq_len) with seq_len >= 1 for a "
                             f"transformer, got {tuple(x.shape)}")
        x = x.long()
        if x.shape[1] > self.config.max_seq_len:
            raise ValueError(f"{name} has sequences of length {x.shape[1]} but the model's "
                             f"max_seq_len is {self.config.max_seq_len}")
        lo, hi = (int(x.min()), int(x.max())) if x.numel() else (0, 0)
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"{name} has token ids in [{lo}, {hi}] but the model's vocab_size "
                             f"is {self.vocab_size} (ids must be in [0, {self.vocab_size - 1}])")
        return x

    def _check_targets(self, x: Tensor, y: Tensor, name: str) -> None:
        if self.config.task != "lm":
            return super()._check_targets(x, y, name)
        if tuple(y.shape) != tuple(x.shape):
            xs = "X_" + name[2:] if name.startswith("y_") else "the inputs"
            raise ValueError(f"{name} must have {xs}'s shape {tuple(x.shape)} for a "
                             f"language model (one target token per position, {IGNORE_INDEX} "
                             f"where ignored), got {tuple(y.shape)}")

    def _shrink(self) -> nn.Sequential:
        raise TypeError("MorphoNetTransformer cannot shrink to a plain network (its heads and "
                        "residual widths are shared); export it with to_block_sparse")

    def _check_input(self, x: Tensor, attention_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of token ids, got {type(x).__name__}")
        x = self._check_features(x, "x")
        if attention_mask is None:
            if self.config.pad_token_id is not None:
                return x, x != self.config.pad_token_id
            return x, torch.ones_like(x, dtype=torch.bool)
        if not isinstance(attention_mask, Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got "
                            f"{type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != tuple(x.shape):
            raise ValueError(f"attention_mask must have x's shape {tuple(x.shape)}, got "
                             f"{tuple(attention_mask.shape)}")
        if attention_mask.dtype != torch.bool:
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise ValueError("attention_mask must be bool or hold only 0 and 1")
            attention_mask = attention_mask != 0
        return x, attention_mask.to(x.device)

    def _attn_mask(self, valid: Tensor) -> Tensor:
        """valid (B, L) bool → (B, 1, L, L) bool, True = query i may attend to key j."""
        n = valid.shape[1]
        allowed = valid[:, None, None, :]  # (B, 1, 1, L): real keys
        eye = torch.eye(n, dtype=torch.bool, device=valid.device)  # (L, L)
        if self.causal:
            allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
        # A query always sees itself: a real query's own key is already allowed; a padding
        # query (e.g. an all-pad row) would otherwise have no key and softmax would give NaN.
        return allowed | eye

    def forward(self, x: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """x (B, L) token ids, attention_mask (B, L) bool / 0-1 (True = real token) →
        (B, n_classes) for classification, (B, L, vocab_size) for ``task="lm"``."""
        x, valid = self._check_input(x, attention_mask)
        n = x.shape[1]
        pos = torch.arange(n, device=x.device)
        h = self.drop(self.tok_emb(x) + self.pos_emb(pos)[None])  # (B, L, d)
        mask = self._attn_mask(valid)  # (B, 1, L, L)
        for blk in self.blocks:
            h = blk(h, mask)
        h = self.ln_f(h)  # (B, L, d)
        if self.config.task == "lm":
            return self.head(h)  # (B, L, vocab)
        w = valid.to(h.dtype)[..., None]  # (B, L, 1)
        pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, d); all-pad row → 0
        return self.head(pooled)  # (B, n_classes)

    # ------------------------------------------------------------------ pruning and counting

    def _live_elements(self, layer: LearnedMask) -> Tensor:
        """Weight-shaped bool: connections of ``layer`` neither mask-pruned nor in a pruned
        head."""
        alive = layer.expand_units(layer.pruned_units().float()) < 0.5
        owner = self._owner().get(id(layer))
        dead = owner.dead_region(layer) if owner is not None else None
        return alive & ~dead if dead is not None else alive

    def n_live(self) -> int:
        """Connections not hard-pruned, where a pruned head's q/k/v rows and o columns are
        dead (each connection counted once)."""
        return sum(self.layer_live(lay) for lay in self.masked_layers())

    def layer_live(self, layer: LearnedMask) -> int:
        """Live connections of ``layer``, those of pruned heads left out."""
        return int(self._live_elements(layer).sum())

    def prune(self, threshold: Optional[float] = None) -> int:
        """Prune mask units with σ(M/T) < ``threshold`` (default ``config.prune_threshold``),
        then heads with σ(g/T) < ``threshold``; returns the number of connections that became
        dead (the fall in `n_live`)."""
        t = self.config.prune_threshold if threshold is None else threshold
        before = self.n_live()
        for layer in self.masked_layers():
            layer.prune(t)
        for attn in self.attentions():
            attn.gates().prune(t, attn.gate_temperature())
            attn.propagate_pruned_heads()
        return before - self.n_live()

    def prune_heads(self, heads: dict[int, list[int]]) -> int:
        """Prune the given heads, ``{block index: [head indices]}``; returns the number of
        connections that became dead."""
        before = self.n_live()
        attns = self.attentions()
        for i, hs in heads.items():
            if not isinstance(i, int) or not 0 <= i < len(attns):
                raise ValueError(f"block index must be in [0, {len(attns)}), got {i!r}")
            for hd in hs:
                if not isinstance(hd, int) or not 0 <= hd < self.config.n_heads:
                    raise ValueError(f"head index must be in [0, {self.config.n_heads}), got "
                                     f"{hd!r}")
            with torch.no_grad():
                attns[i].gates().mask_logits[list(hs)] = float("-inf")
            attns[i].propagate_pruned_heads()
        return before - self.n_live()

    def count_params(self) -> tuple[int, int]:
        """(total, effective): masked weights plus every other parameter except mask logits
        (gate logits included), for the unpruned model and for the live structure. Dead
        biases: those of pruned neurons and the q/k/v biases of pruned heads."""
        skip = {id(p) for lay in self.masked_layers() for p in (lay.weight, lay.mask_logits)}
        skip |= {id(a.gates().mask_logits) for a in self.attentions()}
        other = sum(p.numel() for p in self.parameters() if id(p) not in skip)
        owners = self._owner()
        dead_bias = 0
        for lay in self.masked_layers():
            if lay.bias is None:
                continue
            dead = torch.zeros(lay.bias.shape, dtype=torch.bool, device=lay.bias.device)
            if lay.granularity == "neuron":
                dead |= lay.pruned_units().to(dead.device)
            owner = owners.get(id(lay))
            if owner is not None and lay is not owner.o:
                dead |= owner._per_feature(owner.gates().pruned()).to(dead.device)
            dead_bias += int(dead.sum())
        return self.n_connections() + other, self.n_live() + other - dead_bias

    def sparsity_penalty(self, scale: float = 1.0) -> Tensor:
        """Σ_l λ_l · Σ σ(M_l/T)·gate / all connections, times ``scale``: the base penalty with
        each q/k/v/o connection's mask value multiplied by its head's gate σ(g_h/T) (so the
        penalty is the expected fraction of live connections and also pushes gates down)."""
        layers = self.masked_layers()
        total = self.n_connections()
        owners = self._owner()
        terms = []
        for layer in layers:
            lam = self.config.sparsity_loss if layer.sparsity_loss is None else layer.sparsity_loss
            if not lam:
                continue
            owner = owners.get(id(layer))
            if owner is None:
                s = layer.penalty() * layer.n_connections()
            else:
                gate = owner.head_region(layer, owner.gate_values())
                s = (layer.expand_units(layer.unit_mask()) * gate).sum()
            terms.append(lam * s / total)
        if not terms:
            return torch.zeros((), device=self.head.weight.device)
        return scale * torch.stack(terms).sum()
