"""The models of ``morpho speed``: a wide MorphoNet MLP (MNIST-1D) and a character-level
GPT-style `MorphoNetTransformer` (causal LM), their *dense twins* (the same architecture with
plain ``nn.Linear`` layers, trained the same way) and the exports of a trained masked model
in each execution format."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from morpho_kernels.checks import check_fraction
from morpho_kernels.formats import BLOCK_SIZES
from morpho_kernels.nn import MaskedLinear

from ..masks.config import MorphoConfig
from ..masks.export import shrink, to_block_sparse, to_edge_list
from ..masks.models import MorphoModel, MorphoNetMLP
from ..masks.transformer import MorphoNetTransformer

__all__ = ["Structure", "build", "dense_twin", "exports", "parse_structure"]


@dataclass(frozen=True)
class Structure:
    """A learned structure to train: mask ``granularity`` ("element", "block", "neuron"),
    ``block_size`` (block masks) and the ``sparsity`` the trainer enforces."""

    granularity: str
    block_size: int
    sparsity: float

    @property
    def name(self) -> str:
        """e.g. ``element-97%``, ``block32-90%``, ``neuron-75%``."""
        g = f"block{self.block_size}" if self.granularity == "block" else self.granularity
        return f"{g}-{100 * self.sparsity:g}%"


def parse_structure(text: str) -> Structure:
    """``"element:0.97"``, ``"block32:0.9"``, ``"neuron:0.75"`` → `Structure` (ValueError
    naming the text otherwise)."""
    if not isinstance(text, str) or text.count(":") != 1:
        raise ValueError(f"structure must look like 'element:0.97', 'block32:0.9' or "
                         f"'neuron:0.75', got {text!r}")
    kind, frac = text.split(":")
    try:
        sparsity = check_fraction(f"sparsity of {text!r}", float(frac), hi_open=True)
    except ValueError as e:
        raise ValueError(f"structure {text!r}: {e}") from None
    if kind in ("element", "neuron"):
        return Structure(kind, 16, sparsity)
    if kind.startswith("block") and kind[5:].isdigit() and int(kind[5:]) in BLOCK_SIZES:
        return Structure("block", int(kind[5:]), sparsity)
    raise ValueError(f"structure {text!r}: the kind must be element, neuron or block<b> with b "
                     f"in {BLOCK_SIZES}")


def build(config: MorphoConfig, vocab_size: Optional[int] = None) -> MorphoModel:
    """A MorphoNet MLP (``network_type="mlp"``) or Transformer LM (``"transformer"``, with
    ``vocab_size``) from ``config``, seeded by ``config.seed``."""
    if config.seed is not None:
        torch.manual_seed(config.seed)
    if config.network_type == "transformer":
        return MorphoNetTransformer(config, vocab_size=vocab_size)
    return MorphoNetMLP(config)


def _plain_linear(layer: MaskedLinear) -> nn.Linear:
    """An ``nn.Linear`` holding copies of the layer's raw weight and bias (no mask)."""
    lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(layer.weight)
        if layer.bias is not None:
            lin.bias.copy_(layer.bias)
    return lin


def dense_twin(model: MorphoModel) -> nn.Module:
    """``model``'s architecture with every learned-mask linear layer a plain ``nn.Linear``
    (same initial weights, no mask, no head gates): the dense model a user would train
    instead, through the same forward code."""
    twin = copy.deepcopy(model)
    for m in list(twin.modules()):
        if getattr(m, "head_gates", None) is not None:
            m.head_gates = None  # attention without gates: a plain multi-head attention
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MaskedLinear):
                setattr(parent, name, _plain_linear(child))
    return twin


def exports(model: MorphoModel, structure: Structure) -> dict[str, nn.Module]:
    """The execution formats of a trained masked model, each computing what it computes:
    element masks → ``edge_list`` (`to_edge_list`) and ``block_sparse16``; block masks →
    ``block_sparse<b>``; neuron masks → ``shrink`` (a smaller dense network)."""
    model = model.eval()
    if structure.granularity == "neuron":
        return {"shrink": shrink(model).eval()}
    if structure.granularity == "block":
        b = structure.block_size
        return {f"block_sparse{b}": to_block_sparse(model, block_size=b).eval()}
    return {"edge_list": to_edge_list(model).eval(),
            "block_sparse16": to_block_sparse(model, block_size=16).eval()}
