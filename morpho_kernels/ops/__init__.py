"""One module per op (DESIGN.md convention 1); each registers its torch.library custom ops.

The public functions are exported from `morpho_kernels`; `morpho_kernels.ops.<op>` is always
the op's module (its dispatcher, launch choices and custom ops).
"""

from . import masked_linear

__all__ = ["masked_linear"]
