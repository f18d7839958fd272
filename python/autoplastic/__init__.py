"""``autoplastic``: the import name of the seed's script (``autoplastic.py``: ``TrainConfig``,
the network, its training). Everything here is `morphonet.autoplastic`'s; ``python -m
autoplastic [options]`` runs the experiment, as ``python autoplastic.py`` ran the seed's."""

from morphonet.autoplastic import *  # noqa: F401,F403
from morphonet.autoplastic import __all__  # noqa: F401
