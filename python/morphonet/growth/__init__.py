"""Structure Net, first generation: networks that start minimal and grow where activation
extrema point.

Pieces: `MinimalNetwork` (SparseLinear edge lists with skip connections up to 3 layers ahead
and fixed-capacity neuron slots; `NetworkConfig`), `ExtremaDetector` (extrema_stats over a
window of batches), `GrowthScheduler` (gradient-variance spikes → credits → growth, phase
limits in structures), `ConnectionRouter` (high → low extrema routing, reciprocal edges,
function-preserving vertical cloning), `SnapshotManager` (delta-compressed, atomic, bit-exact
snapshots and ensembles), `MultiScaleNetwork` / `create_multi_scale_network` (training with
growth: `GrowthHook` on the one training loop), the RigL / SET / static peers (`SparsePeer`,
a hook too), and the ``morpho grow`` experiment. The seed's import name is kept:
``from structure_net import create_multi_scale_network``.
"""

from .experiment import GrowExperimentConfig, run_grow_experiment
from .extrema import EXTREMA_ACTIVATIONS, ExtremaConfig, ExtremaDetector, LayerExtrema
from .network import GAIN, MinimalNetwork, NetworkConfig
from .peers import SparsePeer, erk_densities, make_peer_network, train_peer_epoch
from .router import ConnectionRouter, RouterConfig, Structure
from .scheduler import GrowthScheduler, SchedulerConfig
from .snapshots import SnapshotManager
from .trainer import GrowthHook, MultiScaleNetwork, create_multi_scale_network

__all__ = ["ConnectionRouter", "EXTREMA_ACTIVATIONS", "ExtremaConfig", "ExtremaDetector", "GAIN",
           "GrowExperimentConfig", "GrowthHook", "GrowthScheduler", "LayerExtrema",
           "MinimalNetwork", "MultiScaleNetwork", "NetworkConfig", "RouterConfig",
           "SchedulerConfig", "SnapshotManager", "SparsePeer", "Structure",
           "create_multi_scale_network", "erk_densities", "make_peer_network",
           "run_grow_experiment", "train_peer_epoch"]
