"""Morph.py / MorphNet: resource-weighted channel regularisers that learn each layer's width,
and an exact export to a physically smaller model (``import morph`` is an alias of this
module).

Workflow (MorphNet's): trace the model's channel groups (`trace`), train with a
`NetworkRegularizer` (``strength · get_regularization_term()`` added to the loss, e.g. by
`MorphNetHook` in `morphonet.loop.TrainLoop`), `NetworkRegularizer.prune` the channels that are
not alive, `shrink` (or `export_structure` → JSON → `rebuild`) to the smaller model computing
the same function, optionally `expand` every width by one factor to a FLOP budget, retrain.
Morph.py's names: `once`, `widen`, `resize_layers`. See docs/morphnet.md.
"""

from .api import expand, expand_widths, once, resize_layers
from .graph import ChannelGraph, ChannelGroup, Op, UnsupportedOpError, trace
from .regularize import (
                         COSTS,
                         KINDS,
                         GammaFlopsRegularizer,
                         GroupLassoFlopsRegularizer,
                         LogisticSigmoidFlopsRegularizer,
                         MorphNetHook,
                         NetworkRegularizer,
                         Roofline,
)
from .surgery import dead_channels, export_structure, rebuild, resize, shrink, widen

__all__ = ["COSTS", "ChannelGraph", "ChannelGroup", "GammaFlopsRegularizer",
           "GroupLassoFlopsRegularizer", "KINDS", "LogisticSigmoidFlopsRegularizer",
           "MorphNetHook", "NetworkRegularizer", "Op", "Roofline", "UnsupportedOpError",
           "dead_channels", "expand", "expand_widths", "export_structure", "once", "rebuild",
           "resize", "resize_layers", "shrink", "trace", "widen"]
