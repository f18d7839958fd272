"""MorphoNet models: MLP, CNN (1-D / 2-D) and Transformer built from learned-mask layers."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .config import MorphoConfig
from .layers import MaskedMixin, MorphoConv, MorphoLinear

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MorphoModel(nn.Module):
    """What every MorphoNet model offers on top of ``nn.Module``.

    ``self.layers`` lists the learned-mask layers in order (``model.layers[i].sparsity_loss``
    sets one layer's penalty weight). Sparsity is counted in *connections* (weights of masked
    layers): a pruned block or neuron removes every weight it covers.
    """

    config: MorphoConfig
    layers: nn.ModuleList

    def masked_layers(self) -> list[MaskedMixin]:
        """Every learned-mask layer of the model (the same objects as ``self.layers``)."""
        return [m for m in self.modules() if isinstance(m, MaskedMixin)]

    def set_temperature(self, temperature: float) -> None:
        """Set T on every masked layer."""
        for layer in self.masked_layers():
            layer.set_temperature(temperature)

    @property
    def temperature(self) -> float:
        layers = self.masked_layers()
        return float(layers[0].temperature) if layers else 1.0

    def prune(self, threshold: Optional[float] = None) -> int:
        """Hard-prune every connection whose mask value σ(M/T) is below ``threshold``
        (default: ``config.prune_threshold``); returns the number of connections removed."""
        t = self.config.prune_threshold if threshold is None else threshold
        return sum(layer.prune(t) for layer in self.masked_layers())

    def get_all_masks(self, hard: bool = False, threshold: float = 0.5) -> list[Tensor]:
        """Each masked layer's mask in its weight's shape (soft σ(M/T), or 0/1 with
        ``hard=True``), in ``self.layers`` order, on the CPU."""
        return [layer.get_mask(hard=hard, threshold=threshold).cpu()
                for layer in self.masked_layers()]

    def sparsity_penalty(self, scale: float = 1.0) -> Tensor:
        """Σ_l λ_l · Σ σ(M_l/T) over connections / all connections, times ``scale``.

        With one λ everywhere this is λ·mean σ(M/T) over the whole model (the seed's penalty).
        A layer whose ``sparsity_loss`` is None uses ``config.sparsity_loss``.
        """
        layers = self.masked_layers()
        total = sum(layer.n_connections() for layer in layers)
        terms = []
        for layer in layers:
            lam = self.config.sparsity_loss if layer.sparsity_loss is None else layer.sparsity_loss
            if lam:
                terms.append(lam * layer.penalty() * (layer.n_connections() / total))
        if not terms:
            return torch.zeros((), device=self.layers[0].weight.device)
        return scale * torch.stack(terms).sum()

    # ------------------------------------------------------------------ counting

    def n_connections(self) -> int:
        """Prunable connections (weights of masked layers)."""
        return sum(layer.n_connections() for layer in self.masked_layers())

    def n_live(self) -> int:
        """Connections not hard-pruned."""
        return sum(self.layer_live(layer) for layer in self.masked_layers())

    def layer_live(self, layer: MaskedMixin) -> int:
        """Live connections of one masked layer as this model counts them (`n_live` is their
        sum; the Transformer also leaves out those of pruned heads)."""
        return layer.n_live()

    def sparsity(self) -> float:
        """Fraction of prunable connections hard-pruned."""
        return 1.0 - self.n_live() / self.n_connections()

    def unit_norms(self) -> list[tuple[MaskedMixin, nn.Module]]:
        """(masked layer, the norm right after it) pairs whose neuron mask is applied after
        the norm (`masked_then_norm`), so the norm's per-unit parameters of a pruned unit are
        dead. Models that have such pairs list them."""
        return []

    def _other_params(self) -> tuple[int, int]:
        """(all, live) parameters that are neither masked weights nor mask logits: biases,
        norm parameters, skip gates, embeddings. Not live: the bias of a pruned neuron, and
        the norm parameters (γ, β) of a pruned neuron whose mask follows the norm (its output
        is exactly zero whatever they are). The next layer's weights that read a pruned unit
        stay counted (they are connections of that layer until `export.shrink` drops them)."""
        masked = {id(layer.weight) for layer in self.masked_layers()}
        masked |= {id(layer.mask_logits) for layer in self.masked_layers()}
        dead = 0
        for layer in self.masked_layers():
            if layer.granularity == "neuron" and layer.bias is not None:
                dead += int(layer.pruned_units().sum())
        for layer, norm in self.unit_norms():
            if layer.granularity == "neuron" and not isinstance(norm, nn.Identity):
                units = layer.pruned_units().numel()
                per_unit = sum(p.numel() for p in norm.parameters()) // units
                dead += per_unit * int(layer.pruned_units().sum())
        n = sum(p.numel() for p in self.parameters() if id(p) not in masked)
        return n, n - dead

    def count_params(self) -> tuple[int, int]:
        """(total, effective): weights of masked layers plus every other parameter except the
        mask logits, for the unpruned model and for the live structure."""
        other, other_live = self._other_params()
        return self.n_connections() + other, self.n_live() + other_live


def masked_then_norm(layer: MaskedMixin, norm: nn.Module, h: Tensor) -> Tensor:
    """``norm(layer(h))``, except that neuron masks are applied *after* the norm, so a pruned
    unit outputs exactly zero (a batchnorm would turn a zero into β − γ·μ/σ) and can be
    removed by ``export.shrink``."""
    if getattr(layer, "granularity", None) == "neuron" and not isinstance(norm, nn.Identity):
        z = norm(layer.unmasked(h))
        return z * layer.unit_mask().reshape(1, -1, *([1] * (z.dim() - 2)))
    return norm(layer(h))


def _act(cfg: MorphoConfig) -> nn.Module:
    return _ACTIVATIONS[cfg.activation]()


class MorphoNetMLP(MorphoModel):
    """MLP of `MorphoLinear` layers: input_dim → hidden_dims → n_classes.

    Each hidden layer: masked linear → (batchnorm) → activation → (dropout), plus σ(g)·h
    skip connections (``use_skip_connections``) wherever the layer's input and output widths
    match (a skip across widths would need a projection, i.e. more weights, so there is none).
    With neuron granularity the classifier head keeps element masks (its outputs are classes).
    """

    def __init__(self, config: MorphoConfig):
        super().__init__()
        config.validate().require("input_dim", "n_classes")
        self.config = config
        widths = [config.input_dim, *config.hidden_dims, config.n_classes]
        self.layers = nn.ModuleList()
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            head = i == len(widths) - 2
            gran = "element" if head and config.mask_granularity == "neuron" else \
                config.mask_granularity
            self.layers.append(MorphoLinear(
                a, b, granularity=gran, block_size=config.block_size,
                sparse_init=config.sparse_init, mask_init=config.mask_init,
                temperature=config.temp_start))
        hidden = config.hidden_dims
        self.norms = nn.ModuleList(nn.BatchNorm1d(h) if config.use_batchnorm else nn.Identity()
                                   for h in hidden)
        self.act = _act(config)
        self.drop = nn.Dropout(config.dropout)
        skip = [config.use_skip_connections and a == b for a, b in
                zip([config.input_dim, *hidden], hidden)]
        self.skip_gates = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(()))
                                            for i, s in enumerate(skip) if s})

    def unit_norms(self) -> list[tuple[MaskedMixin, nn.Module]]:
        return list(zip(self.layers[:-1], self.norms))

    def forward(self, x: Tensor) -> Tensor:  # (B, input_dim) → (B, n_classes)
        if x.dim() != 2 or x.shape[1] != self.config.input_dim:
            raise ValueError(f"expected input (batch, {self.config.input_dim}), got shape "
                             f"{tuple(x.shape)}")
        h = x
        for i, layer in enumerate(self.layers[:-1]):
            z = self.drop(self.act(masked_then_norm(layer, self.norms[i], h)))
            gate = self.skip_gates[str(i)] if str(i) in self.skip_gates else None
            h = z + torch.sigmoid(gate) * h if gate is not None else z
        return self.layers[-1](h)


class MorphoNetCNN(MorphoModel):
    """Convolutional MorphoNet: `MorphoConv` layers, then `MorphoLinear` layers.

    ``input_shape`` is one example's shape without the batch: ``(C, L)`` for 1-D signals or
    ``(C, H, W)`` for images. Each conv block: masked conv (``conv_channels``, ``kernel_size``,
    ``conv_stride``, ``conv_padding``, ``conv_dilation``, ``conv_groups``) → (batchnorm) →
    activation → (2× max-pool when ``pool`` and the map is large enough); then flatten, the
    masked hidden layers (``hidden_dims``) and the classifier head.
    """

    def __init__(self, config: MorphoConfig, input_shape: tuple[int, ...] = (3, 32, 32)):
        super().__init__()
        config.validate().require("n_classes")
        input_shape = tuple(input_shape)
        if len(input_shape) not in (2, 3) or not all(
                isinstance(s, int) and s > 0 for s in input_shape):
            raise ValueError(f"input_shape must be (C, L) or (C, H, W) of positive ints, got "
                             f"{input_shape!r}")
        self.config, self.input_shape = config, input_shape
        dims = len(input_shape) - 1
        common = dict(granularity=config.mask_granularity, block_size=config.block_size,
                      sparse_init=config.sparse_init, mask_init=config.mask_init,
                      temperature=config.temp_start)
        self.layers = nn.ModuleList()
        blocks: list[nn.Module] = []
        c_in = input_shape[0]
        for c_out in config.conv_channels:
            if c_in % config.conv_groups or c_out % config.conv_groups:
                raise ValueError(f"conv_groups={config.conv_groups} must divide the channel "
                                 f"counts ({c_in} → {c_out})")
            conv = MorphoConv(dims, c_in, c_out, config.kernel_size, stride=config.conv_stride,
                              padding=config.conv_padding, dilation=config.conv_dilation,
                              groups=config.conv_groups, **common)
            self.layers.append(conv)
            norm = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(c_out) \
                if config.use_batchnorm else nn.Identity()
            blocks.append(nn.ModuleDict({"norm": norm, "act": _act(config)}))
            c_in = c_out
        self.conv_post = nn.ModuleList(blocks)
        self.drop = nn.Dropout(config.dropout)
        self._pool = [False] * len(config.conv_channels)
        flat = self._probe_flat_size()
        widths = [flat, *config.hidden_dims, config.n_classes]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            head = i == len(widths) - 2
            kw = dict(common)
            if head and config.mask_granularity == "neuron":
                kw["granularity"] = "element"
            self.layers.append(MorphoLinear(a, b, **kw))
        self.n_convs = len(config.conv_channels)
        self.act = _act(config)

    def unit_norms(self) -> list[tuple[MaskedMixin, nn.Module]]:
        return [(self.layers[i], self.conv_post[i]["norm"]) for i in range(self.n_convs)]

    @torch.no_grad()
    def _probe_flat_size(self) -> int:
        x = torch.zeros(1, *self.input_shape)
        for i, conv in enumerate(self.layers):
            x = conv(x)
            if x.shape[-1] < 1:
                raise ValueError(f"conv layer {i} maps input_shape {self.input_shape} to an "
                                 f"empty output {tuple(x.shape[1:])}; lower stride / kernel")
            self._pool[i] = self.config.pool and min(x.shape[2:]) >= 2
            if self._pool[i]:
                x = _max_pool(x)
        return x[0].numel()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and len(self.input_shape) == 3 or x.dim() == len(self.input_shape):
            x = x.reshape(x.shape[0], *self.input_shape)  # flat rows → (B, C, ...)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input (batch, {', '.join(map(str, self.input_shape))}) "
                             f"or flattened rows, got shape {tuple(x.shape)}")
        for i in range(self.n_convs):
            post = self.conv_post[i]
            x = post["act"](masked_then_norm(self.layers[i], post["norm"], x))
            if self._pool[i]:
                x = _max_pool(x)
        h = self.drop(x.flatten(1))
        linears = self.layers[self.n_convs:]
        for layer in linears[:-1]:
            h = self.drop(self.act(layer(h)))
        return linears[-1](h)


def _max_pool(x: Tensor) -> Tensor:
    return (nn.functional.max_pool1d if x.dim() == 3 else nn.functional.max_pool2d)(x, 2)


def create_morphonet(kind: str = "mlp", input_shape: Optional[tuple[int, ...]] = None,
                     vocab_size: Optional[int] = None, **kwargs) -> MorphoModel:
    """Build a model from a kind and `MorphoConfig` fields.

    ``create_morphonet('mlp', input_dim=20, n_classes=5)``; ``'cnn'`` takes ``input_shape``
    (default ``(1, input_dim)``, a 1-D signal); ``'transformer'`` takes ``vocab_size``.
    Unknown keyword arguments are rejected by `MorphoConfig`.
    """
    kinds = ("mlp", "cnn", "transformer")
    if kind not in kinds:
        raise ValueError(f"kind must be one of {kinds}, got {kind!r}")
    config = kwargs.pop("config", None) or MorphoConfig(network_type=kind, **kwargs)
    if kind == "mlp":
        return MorphoNetMLP(config)
    if kind == "cnn":
        if input_shape is None:
            config.require("input_dim")
            input_shape = (1, config.input_dim)
        return MorphoNetCNN(config, input_shape=input_shape)
    from .transformer import MorphoNetTransformer

    if vocab_size is None:
        raise ValueError("create_morphonet('transformer', ...) needs vocab_size=")
    return MorphoNetTransformer(config, vocab_size=vocab_size)
