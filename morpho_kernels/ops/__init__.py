"""One module per op (DESIGN.md convention 1); each registers its torch.library custom ops."""

from .masked_linear import masked_linear

__all__ = ["masked_linear"]
