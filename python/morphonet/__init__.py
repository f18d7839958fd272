"""morphonet: what sparse structure to learn and when to change it.

Models, trainers, schedules, growth and export build on the ops and layers of
``morpho_kernels`` (never on its kernels directly).

- MorphoNet Pro (learned sigmoid masks W ⊙ σ(M/T)): `MorphoConfig`, `MorphoLinear`,
  `MorphoConv`, `MorphoNetMLP`, `MorphoNetCNN`, `MorphoNetTransformer`, `create_morphonet`,
  `MorphoTrainer`; export in `morphonet.export` (``shrink``, ``to_block_sparse``), pictures in
  `morphonet.viz`, the comparison job in `morphonet.compare` (``morpho compare``).
- Structure Net (networks that start minimal and grow): `MinimalNetwork`, `ExtremaDetector`,
  `GrowthScheduler`, `ConnectionRouter`, `SnapshotManager`, `create_multi_scale_network`,
  the RigL / SET / static peers (``morpho grow``).
- Data: `load_dataset` (moons, blobs-5c, digits, MNIST-1D, all offline) and split helpers.
"""

from .config import MorphoConfig
from .data import DATASETS, Dataset, Split, load_dataset, make_blobs, train_val_test_split
from .layers import MorphoConv, MorphoLinear
from .models import MorphoModel, MorphoNetCNN, MorphoNetMLP, create_morphonet
from .structure import *  # noqa: F403
from .structure import __all__ as _structure_all
from .train import MorphoTrainer
from .transformer import MorphoNetTransformer

__version__ = "0.1.0"

__all__ = ["DATASETS", "Dataset", "MorphoConfig", "MorphoConv", "MorphoLinear", "MorphoModel",
           "MorphoNetCNN", "MorphoNetMLP", "MorphoNetTransformer", "MorphoTrainer", "Split",
           "create_morphonet", "load_dataset", "make_blobs", "train_val_test_split",
           "__version__", *_structure_all]
