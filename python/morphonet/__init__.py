"""morphonet: what sparse structure to learn and when to change it.

Models, trainers, schedules, growth and export build on the ops and layers of
``morpho_kernels`` (never on its kernels directly). This first release carries the data helpers
and the end-to-end demo (``morpho demo``); the MorphoNet Pro models, Structure Net and MorphNet
arrive in their own issues.
"""

from .data import Split, make_blobs, train_val_test_split

__version__ = "0.1.0"

__all__ = ["Split", "make_blobs", "train_val_test_split", "__version__"]
