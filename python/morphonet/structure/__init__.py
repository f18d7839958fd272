"""Structure Net: networks that start minimal and grow where activation extrema point.

Pieces: MinimalNetwork (SparseLinear edge lists with skip connections up to 3 layers ahead and
fixed-capacity neuron slots), ExtremaDetector (extrema_stats over a window of batches),
GrowthScheduler (gradient-variance spikes → credits → growth, phase limits in structures),
ConnectionRouter (high → low extrema routing, reciprocal edges, function-preserving vertical
cloning), SnapshotManager (delta-compressed, atomic, bit-exact snapshots and ensembles),
MultiScaleNetwork / create_multi_scale_network (training with growth), the RigL / SET / static
peers, and the ``morpho grow`` experiment.
"""

from .experiment import GrowExperimentConfig, run_grow_experiment
from .extrema import ExtremaConfig, ExtremaDetector, LayerExtrema
from .network import MinimalNetwork
from .peers import SparsePeer, erk_densities, make_peer_network, train_peer_epoch
from .router import ConnectionRouter, RouterConfig, Structure
from .scheduler import GrowthScheduler, SchedulerConfig
from .snapshots import SnapshotManager
from .trainer import MultiScaleNetwork, create_multi_scale_network

__all__ = ["ConnectionRouter", "ExtremaConfig", "ExtremaDetector", "GrowExperimentConfig",
           "GrowthScheduler", "LayerExtrema", "MinimalNetwork", "MultiScaleNetwork",
           "RouterConfig", "SchedulerConfig", "SnapshotManager", "SparsePeer", "Structure",
           "add_grow_parser", "create_multi_scale_network", "erk_densities",
           "make_peer_network", "run_grow_experiment", "train_peer_epoch"]


def __getattr__(name):
    # Lazy, so that `python -m morphonet.structure.cli` does not import its own module twice.
    if name == "add_grow_parser":
        from .cli import add_grow_parser

        return add_grow_parser
    raise AttributeError(f"module 'morphonet.structure' has no attribute {name!r}")
