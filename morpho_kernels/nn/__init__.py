"""Drop-in layers whose structure runs on morpho_kernels ops.

- `MaskedLinear` (masked.py): ``nn.Linear`` with a learned soft mask W ⊙ σ(M/T) at element,
  block or neuron granularity, on the fused ``masked_linear`` op; `LearnedMask` is its mask
  logic, shared with every other masked weight (MorphoNet's convolution), and `unit_shape`,
  `expand_units`, `reduce_units` convert between unit- and weight-shaped tensors.
- `BlockSparseLinear`, `GraphedRegrow` (block_sparse.py): live b×b blocks at fixed capacity.
- `SparseLinear` (sparse.py): an edge list, work ∝ live connections.
- `param_groups`, `mask_parameters`, `tied_with` (params.py): weight decay that leaves mask
  logits alone, and the weight ties a converter must keep or refuse.
"""

from .block_sparse import BlockSparseLinear, GraphedRegrow
from .masked import (
    FROM_LINEAR_LOGIT,
    GRANULARITIES,
    INIT_DENSITY,
    MASK_INIT,
    LearnedMask,
    MaskedLinear,
    check_granularity,
    expand_units,
    reduce_units,
    unit_shape,
)
from .params import convert_linears, mask_parameters, param_groups, tied_with
from .sparse import SparseLinear

__all__ = ["BlockSparseLinear", "FROM_LINEAR_LOGIT", "GRANULARITIES", "GraphedRegrow",
           "INIT_DENSITY", "LearnedMask", "MASK_INIT", "MaskedLinear", "SparseLinear",
           "check_granularity", "convert_linears", "expand_units", "mask_parameters",
           "param_groups", "reduce_units", "tied_with", "unit_shape"]
