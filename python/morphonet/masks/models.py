"""MorphoNet models: the `MorphoModel` base, the MLP and the CNN (1-D / 2-D) built from
learned-mask layers (the Transformer is in transformer.py, the factory in factory.py).

Each model owns its rules: what input it takes (`MorphoModel.check_inputs`,
`MorphoModel.expected_input`), how its connections are counted, and how it shrinks
(`MorphoModel.shrink`), so the trainer and the export never ask which class a model is.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from morpho_kernels.nn import LearnedMask

from ..config import ACTIVATIONS
from ..inputs import InputRules
from .config import MorphoConfig
from .export import dense_linear, fold_rows, norm_rows
from .layers import MorphoConv, MorphoLinear

__all__ = ["MaxPool", "MorphoModel", "MorphoNetCNN", "MorphoNetMLP", "Reshape",
           "live_matrix", "masked_then_norm"]


class MorphoModel(InputRules, nn.Module):
    """What every MorphoNet model offers on top of ``nn.Module``.

    ``self.layers`` lists the learned-mask layers in order (``model.layers[i].sparsity_loss``
    sets one layer's penalty weight). Sparsity is counted in *connections* (weights of masked
    layers): a pruned block or neuron removes every weight it covers.

    Subclasses describe their input (`expected_input`, `_check_features`, and
    `_check_targets` when the targets are not one class per row) and how they shrink
    (`_shrink`).
    """

    config: MorphoConfig
    layers: nn.ModuleList

    # ------------------------------------------------------------------ input rules
    # (`morphonet.inputs.InputRules`; this family's classes count config.n_classes)

    def n_outputs(self) -> int:
        """Number of classes (or tokens) the output scores."""
        return self.config.n_classes

    # ------------------------------------------------------------------ masks

    def masked_layers(self) -> list[LearnedMask]:
        """Every learned-mask layer of the model (the same objects as ``self.layers``)."""
        return [m for m in self.modules() if isinstance(m, LearnedMask)]

    def set_temperature(self, temperature: float) -> None:
        """Set T on every masked layer."""
        for layer in self.masked_layers():
            layer.set_temperature(temperature)

    @property
    def temperature(self) -> float:
        """The current temperature T (the first masked layer's; `set_temperature` sets every
        layer's)."""
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

    def output_reach(self, live: Optional[list[Tensor]] = None) -> Optional[Tensor]:
        """Bool (n_outputs,): True where some input reaches the output through live
        connections (a path whose every connection is live in the hard masks). ``live``: each
        masked layer's unit-shaped bool live mask, in `masked_layers` order (default: the
        units not hard-pruned), so a pruning can be tried before it is made. None: the model
        does not describe its paths (the Transformer: a residual stream reaches every block);
        `schedule.enforce_sparsity`'s connectivity rule then does not apply."""
        return None

    def _live_units(self, live: Optional[list[Tensor]]) -> list[Tensor]:
        layers = self.masked_layers()
        if live is None:
            return [~layer.pruned_units() for layer in layers]
        if len(live) != len(layers):
            raise ValueError(f"live has {len(live)} entries, the model has {len(layers)} "
                             f"masked layers")
        return list(live)

    # ------------------------------------------------------------------ counting

    def n_connections(self) -> int:
        """Prunable connections (weights of masked layers)."""
        return sum(layer.n_connections() for layer in self.masked_layers())

    def n_live(self) -> int:
        """Connections not hard-pruned."""
        return sum(self.layer_live(layer) for layer in self.masked_layers())

    def layer_live(self, layer: LearnedMask) -> int:
        """Live connections of one masked layer as this model counts them (`n_live` is their
        sum; the Transformer also leaves out those of pruned heads)."""
        return layer.n_live()

    def sparsity(self) -> float:
        """Fraction of prunable connections hard-pruned."""
        return 1.0 - self.n_live() / self.n_connections()

    def unit_norms(self) -> list[tuple[LearnedMask, nn.Module]]:
        """(masked layer, the norm right after it) pairs whose neuron mask is applied after
        the norm (`masked_then_norm`), so the norm's per-unit parameters of a pruned unit are
        dead. Models that have such pairs list them."""
        return []

    def _other_params(self) -> tuple[int, int]:
        """(all, live) parameters that are neither masked weights nor mask logits: biases,
        norm parameters, skip gates, embeddings. Not live: the bias of a pruned neuron, and
        the norm parameters (γ, β) of a pruned neuron whose mask follows the norm (its output
        is exactly zero whatever they are). The next layer's weights that read a pruned unit
        stay counted (they are connections of that layer until `shrink` drops them)."""
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

    # ------------------------------------------------------------------ export

    def shrink(self) -> nn.Sequential:
        """A plain, physically smaller dense network computing what this neuron-masked model
        computes: pruned units / channels (mask logit −inf) are removed with their rows, the
        next layer's matching input columns are removed, and the mask values of the kept
        units are folded into their weights, biases and norms. Outputs are identical up to
        float rounding. The result is in this model's train / eval mode (call ``.eval()`` for
        inference). Needs ``mask_granularity="neuron"``; see each model for what else."""
        if self.config.mask_granularity != "neuron":
            raise ValueError(f"shrink needs mask_granularity='neuron' (whole units are "
                             f"removed), got {self.config.mask_granularity!r}; use "
                             f"to_block_sparse for block masks")
        return self._shrink().train(self.training)

    def _shrink(self) -> nn.Sequential:
        raise TypeError(f"{type(self).__name__} cannot shrink: shrink supports MorphoNetMLP "
                        f"and MorphoNetCNN (use to_block_sparse)")


def masked_then_norm(layer: LearnedMask, norm: nn.Module, h: Tensor) -> Tensor:
    """``norm(layer(h))``, except that neuron masks are applied *after* the norm, so a pruned
    unit outputs exactly zero (a batchnorm would turn a zero into β − γ·μ/σ) and can be
    removed by `MorphoModel.shrink`."""
    if getattr(layer, "granularity", None) == "neuron" and not isinstance(norm, nn.Identity):
        z = norm(layer.unmasked(h))
        return z * layer.unit_mask().reshape(1, -1, *([1] * (z.dim() - 2)))
    return norm(layer(h))


def live_matrix(layer: LearnedMask, live: Tensor) -> Tensor:
    """(out, in) bool: True where some live connection of ``layer`` joins the input unit (a
    feature, or a channel of a convolution: any live tap joins it; ``groups`` honoured) to the
    output unit, given the unit-shaped bool ``live`` of its mask units."""
    m = layer.expand_units(live.to(torch.float32)) > 0
    if m.dim() == 2:
        return m
    m = m.flatten(2).any(2)  # (out, in / groups): a convolution's taps
    groups = getattr(layer, "groups", 1)
    if groups == 1:
        return m
    out, per_in = m.shape
    per_out = out // groups
    full = torch.zeros(out, per_in * groups, dtype=torch.bool, device=m.device)
    for g in range(groups):  # group g's outputs read only group g's inputs
        rows = slice(g * per_out, (g + 1) * per_out)
        full[rows, g * per_in:(g + 1) * per_in] = m[rows]
    return full


def _reach(a: Tensor, r: Tensor) -> Tensor:
    """Outputs of a live matrix ``a`` (out, in) reached from the reached inputs ``r``."""
    return (a.to(torch.float32) @ r.to(torch.float32)) > 0


def _act(cfg: MorphoConfig) -> nn.Module:
    return ACTIVATIONS[cfg.activation]()


def _layer_kwargs(config: MorphoConfig) -> dict[str, Any]:
    """The masked layers' arguments from the config (``sparse_init`` is the seed's name of
    the initial density)."""
    return dict(granularity=config.mask_granularity, block_size=config.block_size,
                init_density=config.sparse_init, mask_init=config.mask_init,
                temperature=config.temp_start)


class MorphoNetMLP(MorphoModel):
    """MLP of `MorphoLinear` layers: input_dim → hidden_dims → n_classes.

    Each hidden layer: masked linear → (batchnorm) → activation → (dropout), plus σ(g)·h
    skip connections (``use_skip_connections``) wherever the layer's input and output widths
    match (a skip across widths would need a projection, i.e. more weights, so there is none).
    With neuron granularity the classifier head keeps element masks (its outputs are classes).
    Input: (batch, input_dim) features.
    """

    def __init__(self, config: MorphoConfig):
        super().__init__()
        config.validate().require("input_dim", "n_classes")
        self.config = config
        widths = [config.input_dim, *config.hidden_dims, config.n_classes]
        self.layers = nn.ModuleList()
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            kw = _layer_kwargs(config)
            if i == len(widths) - 2 and config.mask_granularity == "neuron":
                kw["granularity"] = "element"
            self.layers.append(MorphoLinear(a, b, **kw))
        hidden = config.hidden_dims
        self.norms = nn.ModuleList(nn.BatchNorm1d(h) if config.use_batchnorm else nn.Identity()
                                   for h in hidden)
        self.act = _act(config)
        self.drop = nn.Dropout(config.dropout)
        skip = [config.use_skip_connections and a == b for a, b in
                zip([config.input_dim, *hidden], hidden)]
        self.skip_gates = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(()))
                                            for i, s in enumerate(skip) if s})

    def expected_input(self) -> str:
        return f"shape (batch, {self.config.input_dim})"

    def _fits(self, x: Tensor) -> bool:
        return x.dim() == 2 and x.shape[1] == self.config.input_dim

    def unit_norms(self) -> list[tuple[LearnedMask, nn.Module]]:
        return list(zip(self.layers[:-1], self.norms))

    def output_reach(self, live: Optional[list[Tensor]] = None) -> Optional[Tensor]:
        """Feature-level paths; a skip connection (σ(g) > 0 always) passes every reached
        input of its layer on."""
        live = self._live_units(live)
        r = torch.ones(self.config.input_dim, dtype=torch.bool, device=live[0].device)
        for i, layer in enumerate(self.layers[:-1]):
            z = _reach(live_matrix(layer, live[i]), r)
            r = z | r if str(i) in self.skip_gates else z
        return _reach(live_matrix(self.layers[-1], live[-1]), r)

    def forward(self, x: Tensor) -> Tensor:  # (B, input_dim) → (B, n_classes)
        if not self._fits(x):
            raise ValueError(f"expected input {self.expected_input()}, got shape "
                             f"{tuple(x.shape)}")
        h = x
        for i, layer in enumerate(self.layers[:-1]):
            z = self.drop(self.act(masked_then_norm(layer, self.norms[i], h)))
            gate = self.skip_gates[str(i)] if str(i) in self.skip_gates else None
            h = z + torch.sigmoid(gate) * h if gate is not None else z
        return self.layers[-1](h)

    def _shrink(self) -> nn.Sequential:
        """Also needs no active skip connection (a skip adds a pruned unit's input back, so
        the unit would not vanish)."""
        if len(self.skip_gates):
            raise ValueError("shrink cannot remove units of layers with skip connections; "
                             "train with use_skip_connections=False (or widths that differ)")
        mods: list[nn.Module] = []
        cols = None
        for i, layer in enumerate(self.layers[:-1]):
            keep = ~layer.pruned_units()
            norm = self.norms[i]
            fold = isinstance(norm, nn.Identity)
            mods += [dense_linear(*fold_rows(layer, keep, cols, fold)),
                     norm_rows(norm, keep, layer), copy.deepcopy(self.act),
                     copy.deepcopy(self.drop)]
            cols = keep
        mods.append(dense_linear(*fold_rows(self.layers[-1], None, cols)))
        return nn.Sequential(*[m for m in mods if not isinstance(m, nn.Identity)])


class MaxPool(nn.Module):
    """2× max-pool over the spatial dimensions (1-D or 2-D), as `MorphoNetCNN` pools."""

    def forward(self, x: Tensor) -> Tensor:
        return (nn.functional.max_pool1d if x.dim() == 3 else nn.functional.max_pool2d)(x, 2)


class Reshape(nn.Module):
    """(B, …) → (B, *shape): accepts flat rows or already-shaped examples."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


class MorphoNetCNN(MorphoModel):
    """Convolutional MorphoNet: `MorphoConv` layers, then `MorphoLinear` layers.

    ``input_shape`` is one example's shape without the batch: ``(C, L)`` for 1-D signals or
    ``(C, H, W)`` for images; flattened rows are accepted too. Each conv block: masked conv
    (``conv_channels``, ``kernel_size``, ``conv_stride``, ``conv_padding``, ``conv_dilation``,
    ``conv_groups``) → (batchnorm) → activation → (2× max-pool when ``pool`` and the map is
    large enough); then flatten, the masked hidden layers (``hidden_dims``) and the classifier
    head.
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
        common = _layer_kwargs(config)
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
            kw = dict(common)
            if i == len(widths) - 2 and config.mask_granularity == "neuron":
                kw["granularity"] = "element"
            self.layers.append(MorphoLinear(a, b, **kw))
        self.n_convs = len(config.conv_channels)
        self.act = _act(config)
        self.pool = MaxPool()

    def expected_input(self) -> str:
        shape = self.input_shape
        return (f"shape (batch, {', '.join(map(str, shape))}) or flattened rows "
                f"(batch, {math.prod(shape)})")

    def _fits(self, x: Tensor) -> bool:
        return x.dim() >= 2 and x[0].numel() == math.prod(self.input_shape)

    def unit_norms(self) -> list[tuple[LearnedMask, nn.Module]]:
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
                x = MaxPool()(x)
        return x[0].numel()

    def output_reach(self, live: Optional[list[Tensor]] = None) -> Optional[Tensor]:
        """Channel-level paths through the convolutions (a live tap joins two channels;
        spatial positions are not traced, so a path through padding only counts), then the
        features of the linear layers: the first reads channel c through its columns
        c·P … (c+1)·P − 1 (P positions per channel after the last conv block)."""
        live = self._live_units(live)
        r = torch.ones(self.input_shape[0], dtype=torch.bool, device=live[0].device)
        for i in range(self.n_convs):
            r = _reach(live_matrix(self.layers[i], live[i]), r)
        linears = self.layers[self.n_convs:]
        if self.n_convs:
            r = r.repeat_interleave(linears[0].in_features // r.numel())
        else:  # no convolution: the flattened input, every feature reached
            r = torch.ones(linears[0].in_features, dtype=torch.bool, device=r.device)
        for j, layer in enumerate(linears):
            r = _reach(live_matrix(layer, live[self.n_convs + j]), r)
        return r

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
                x = self.pool(x)
        h = self.drop(x.flatten(1))
        linears = self.layers[self.n_convs:]
        for layer in linears[:-1]:
            h = self.drop(self.act(layer(h)))
        return linears[-1](h)

    def _shrink(self) -> nn.Sequential:
        """Also needs ``conv_groups=1``."""
        if self.config.conv_groups != 1:
            raise ValueError("shrink needs conv_groups=1")
        mods: list[nn.Module] = [Reshape(self.input_shape)]
        cols = None
        for i in range(self.n_convs):
            conv = self.layers[i]
            keep = ~conv.pruned_units()
            post = self.conv_post[i]
            w, b = fold_rows(conv, keep, cols, isinstance(post["norm"], nn.Identity))
            cls = nn.Conv1d if conv.dims == 1 else nn.Conv2d
            new = cls(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, bias=b is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                new.weight.copy_(w)
                if b is not None:
                    new.bias.copy_(b)
            mods += [new, norm_rows(post["norm"], keep, conv), copy.deepcopy(post["act"])]
            if self._pool[i]:
                mods.append(MaxPool())
            cols = keep
        mods.append(nn.Flatten())
        # the first linear layer reads (channel, position) features: keep the kept channels'
        with torch.no_grad():
            # eval: a training-mode probe would update the new batchnorms' running statistics
            probe = nn.Sequential(*[m for m in mods[:-1] if not isinstance(m, nn.Identity)])
            spatial = probe.eval()(torch.zeros(1, *self.input_shape)).shape[2:]
        per = int(torch.tensor(spatial).prod()) if len(spatial) else 1
        col_keep = cols.repeat_interleave(per)
        linears = self.layers[self.n_convs:]
        mods.append(copy.deepcopy(self.drop))
        for layer in linears[:-1]:
            keep = ~layer.pruned_units()
            mods += [dense_linear(*fold_rows(layer, keep, col_keep)), copy.deepcopy(self.act),
                     copy.deepcopy(self.drop)]
            col_keep = keep
        mods.append(dense_linear(*fold_rows(linears[-1], None, col_keep)))
        return nn.Sequential(*[m for m in mods if not isinstance(m, nn.Identity)])
