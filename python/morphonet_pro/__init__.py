"""``morphonet_pro``: the import name MorphoNet Pro's README uses (``from morphonet_pro import
MorphoNetMLP, MorphoConfig, MorphoTrainer``). Everything here is `morphonet.masks`'s."""

from morphonet.masks import *  # noqa: F401,F403
from morphonet.masks import __all__  # noqa: F401
