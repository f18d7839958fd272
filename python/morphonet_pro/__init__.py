"""``morphonet_pro``: the import name MorphoNet Pro's README uses (``from morphonet_pro import
MorphoNetMLP, MorphoConfig, MorphoTrainer``). Everything here is `morphonet`'s."""

from morphonet import (  # noqa: F401
    MorphoConfig,
    MorphoConv,
    MorphoLinear,
    MorphoNetCNN,
    MorphoNetMLP,
    MorphoNetTransformer,
    MorphoTrainer,
    create_morphonet,
)

__all__ = ["MorphoConfig", "MorphoConv", "MorphoLinear", "MorphoNetCNN", "MorphoNetMLP",
           "MorphoNetTransformer", "MorphoTrainer", "create_morphonet"]
