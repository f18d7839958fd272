"""``neural_architecture_lab``: the import name of the Neural Architecture Lab in seed 002's
README (``from neural_architecture_lab import NeuralArchitectureLab, LabConfig, Hypothesis,
HypothesisCategory``; the README's ``src.`` prefix is its repository layout). Everything here
is `morphonet.lab`'s."""

from morphonet.lab import *  # noqa: F401,F403
from morphonet.lab import __all__  # noqa: F401
