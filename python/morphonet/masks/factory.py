"""`create_morphonet`: the seed's factory (``create_morphonet('mlp', input_dim=20,
n_classes=5)``), in its own module so that no model module imports another."""

from __future__ import annotations

from typing import Optional

from morpho_kernels.checks import check_choice

from .config import NETWORK_TYPES, MorphoConfig
from .models import MorphoModel, MorphoNetCNN, MorphoNetMLP
from .transformer import MorphoNetTransformer

__all__ = ["create_morphonet"]


def create_morphonet(kind: str = "mlp", input_shape: Optional[tuple[int, ...]] = None,
                     vocab_size: Optional[int] = None, **kwargs) -> MorphoModel:
    """Build a model from a kind and `MorphoConfig` fields (or ``config=``).

    ``create_morphonet('mlp', input_dim=20, n_classes=5)``; ``'cnn'`` takes ``input_shape``
    (default ``(1, input_dim)``, a 1-D signal); ``'transformer'`` takes ``vocab_size``.
    Unknown keyword arguments are rejected by `MorphoConfig`.
    """
    check_choice("kind", kind, NETWORK_TYPES)
    config = kwargs.pop("config", None) or MorphoConfig(network_type=kind, **kwargs)
    if kind == "mlp":
        return MorphoNetMLP(config)
    if kind == "cnn":
        if input_shape is None:
            config.require("input_dim")
            input_shape = (1, config.input_dim)
        return MorphoNetCNN(config, input_shape=input_shape)
    if vocab_size is None:
        raise ValueError("create_morphonet('transformer', ...) needs vocab_size=")
    return MorphoNetTransformer(config, vocab_size=vocab_size)
