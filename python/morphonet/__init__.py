"""morphonet: what sparse structure to learn and when to change it.

The shared skeleton sits at the top; one subpackage per seed system builds on it:

- ``morphonet.config`` (`Config`, the one config style), ``morphonet.checks`` (the common
  validations), ``morphonet.loop`` (`TrainLoop`, the one training loop, with `Hook` for
  structure decisions), ``morphonet.files`` (atomic, checked files), ``morphonet.data``
  (offline datasets and splits), ``morphonet.viz``, ``morphonet.cli`` (``morpho``);
- ``morphonet.masks``: MorphoNet Pro, learned sigmoid masks W ⊙ σ(M/T) (seed import name
  ``morphonet_pro``);
- ``morphonet.growth``: Structure Net, first generation, networks that start minimal and grow
  (seed import name ``structure_net``).

Models, trainers, schedules, growth and export build on the ops and layers of
``morpho_kernels`` (never on its kernels directly). The names most users need are importable
from here.
"""

from .config import ACTIVATIONS, Config
from .data import DATASETS, Dataset, Split, load_dataset, make_blobs, train_val_test_split
from .growth import *  # noqa: F403
from .growth import __all__ as _growth_all
from .loop import Callback, Hook, TrainLoop, accuracy, evaluate
from .masks import *  # noqa: F403
from .masks import __all__ as _masks_all

__version__ = "0.1.0"

__all__ = ["ACTIVATIONS", "Callback", "Config", "DATASETS", "Dataset", "Hook", "Split",
           "TrainLoop", "accuracy", "evaluate", "load_dataset", "make_blobs",
           "train_val_test_split", "__version__", *_masks_all, *_growth_all]
