"""``structure_net``: the import name Structure Net's READMEs use.

First generation (seed 001, `morphonet.growth`): ``from structure_net import
create_multi_scale_network`` (the README's ``src.`` prefix is its repository layout).
Second generation (seed 002, `morphonet.evolution`): ``from structure_net import
create_standard_network``, ``from structure_net.evolution.components import
ComposableEvolutionSystem, NetworkContext, ...`` and ``from structure_net.evolution.interfaces
import Analyzer, GrowthStrategy``. The ``structure_net.evolution`` modules *are*
`morphonet.evolution`'s (registered under both names: one copy of every class)."""

import sys as _sys

import morphonet.evolution as _evolution
import morphonet.evolution.components as _components
import morphonet.evolution.interfaces as _interfaces
from morphonet.evolution import *  # noqa: F401,F403
from morphonet.evolution import __all__ as _evolution_all
from morphonet.growth import *  # noqa: F401,F403
from morphonet.growth import __all__ as _growth_all

evolution = _evolution
for _name, _mod in (("evolution", _evolution), ("evolution.components", _components),
                    ("evolution.interfaces", _interfaces)):
    _sys.modules[f"{__name__}.{_name}"] = _mod

__all__ = sorted({*_growth_all, *_evolution_all})
