"""@triton.jit kernels and their launchers, one module per op family. Imported lazily by the
ops; importing this package requires triton."""
