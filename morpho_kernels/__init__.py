"""morpho_kernels: how a learned sparse structure runs fast.

Public ops are torch.library custom ops in the ``morpho`` namespace, each with a fake kernel and
autograd, dispatched per call to a Triton (CUDA), extension (C++/CUDA) or reference (PyTorch)
backend. ``python -m morpho_kernels.info`` shows which backends serve which devices and why.

Where things live:

- ``formats``: the run-time formats and their validators, `BlockSparseLayout` (with
  `BLOCK_SIZES`) and `EdgeList`;
- ``ops.<op>``: one module per op (``masked_linear``, ``block_sparse_linear``,
  ``sparse_linear`` / ``dense_grad_at``, ``extrema_stats``, ``edges``: insert / remove
  connections), each exported here;
- ``nn``: drop-in layers (`MaskedLinear`, `BlockSparseLinear`, `SparseLinear`);
- ``checks``: the argument checks every public entry point uses (TypeError for a wrong type,
  ValueError for a wrong value, one message form);
- ``triton.<family>``: the kernels, ``triton.common`` what the families share; ``reference`` /
  ``reference_graph``: the pure-PyTorch versions (CPU fallback and test oracle).
"""

from ._dispatch import BACKEND_NAMES, BackendUnavailableError
from .formats import BLOCK_SIZES, BlockSparseLayout, EdgeList
from .ops.block_sparse_linear import block_sparse_linear
from .ops.edges import EdgeUpdate, InsertReport, insert_connections, remove_connections
from .ops.extrema import ExtremaStats, extrema_stats
from .ops.masked_linear import masked_linear
from .ops.sparse_linear import dense_grad_at, sparse_linear

__version__ = "0.1.0"

__all__ = ["BACKEND_NAMES", "BLOCK_SIZES", "BackendUnavailableError", "BlockSparseLayout",
           "EdgeList", "EdgeUpdate", "ExtremaStats", "InsertReport", "block_sparse_linear",
           "dense_grad_at", "extrema_stats", "insert_connections", "masked_linear", "nn",
           "remove_connections", "sparse_linear", "__version__"]


def __getattr__(name):  # `morpho_kernels.nn` without importing torch.nn machinery eagerly
    if name == "nn":
        from . import nn

        return nn
    raise AttributeError(f"module 'morpho_kernels' has no attribute {name!r}")
