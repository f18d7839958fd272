"""``morph``: the import name of Morph.py's README (``import morph``; ``morph.once(model, x)``,
``morph.widen``, ``morph.resize_layers``). Everything here is `morphonet.morph`'s."""

from morphonet.morph import *  # noqa: F401,F403
from morphonet.morph import __all__  # noqa: F401
