"""MorphoNet Pro: learned sigmoid masks W ⊙ σ(M/T) that decide which connections live.

- `MorphoConfig` (the seed's fields and defaults, plus this project's), `MorphoLinear`,
  `MorphoConv` (on `morpho_kernels.nn.MaskedLinear` / `LearnedMask`), the models
  `MorphoNetMLP`, `MorphoNetCNN`, `MorphoNetTransformer` and the factory `create_morphonet`;
- `MorphoTrainer` (the recipe on `morphonet.loop.TrainLoop`) and its hooks
  `AnnealTemperature`, `MaskPenalty`, `EnforceSparsity`; the schedules in ``schedule``;
- export: `to_block_sparse` (element / block masks → `BlockSparseLinear`), `shrink` (neuron
  masks → a smaller dense network);
- the comparison job ``morpho compare`` (``morphonet.masks.compare``) and the drop-in demo
  (``morphonet.masks.demo``).

The seed's import name is kept: ``from morphonet_pro import MorphoNetMLP, MorphoConfig,
MorphoTrainer``.
"""

from .config import MorphoConfig
from .export import shrink, to_block_sparse
from .factory import create_morphonet
from .hooks import AnnealTemperature, EnforceSparsity, MaskPenalty
from .layers import MorphoConv, MorphoLinear
from .models import MorphoModel, MorphoNetCNN, MorphoNetMLP
from .trainer import MorphoTrainer
from .transformer import MorphoNetTransformer

__all__ = ["AnnealTemperature", "EnforceSparsity", "MaskPenalty", "MorphoConfig", "MorphoConv",
           "MorphoLinear", "MorphoModel", "MorphoNetCNN", "MorphoNetMLP",
           "MorphoNetTransformer", "MorphoTrainer", "create_morphonet", "shrink",
           "to_block_sparse"]
