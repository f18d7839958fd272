"""@triton.jit kernels and their launchers, one module per op family (masked_linear.py,
block_sparse.py); what the families share (interpreter switch, launch lock, dtype flags, device
guard) is public in common.py. Imported lazily by the ops; importing this package requires
triton."""
