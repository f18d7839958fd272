"""``structure_net``: the import name Structure Net's README uses
(``from structure_net import create_multi_scale_network``; the README's ``src.`` prefix is its
repository layout). Everything here is `morphonet.growth`'s (the first generation); the second
generation's names (``create_standard_network``, the evolution system) are not built yet."""

from morphonet.growth import *  # noqa: F401,F403
from morphonet.growth import __all__  # noqa: F401
