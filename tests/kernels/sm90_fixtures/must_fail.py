"""Kernels the sm_90 checker must fail (test_sm90_compile.py), one per check that no project
kernel fails any more:

* `_device_descriptor_kernel` loads through a device-side tensor descriptor
  (`tl.make_tensor_descriptor`): on sm_90 it compiles, but each launch needs global scratch
  memory from `triton.set_allocator`, which the project never sets, so on a GPU it raises "no
  allocator was set";
* `_spill_kernel` keeps 16384 fp32 values live in one warp (512 per thread, past the 255
  registers a thread has): ptxas spills them to local memory."""

import triton
import triton.language as tl

from morpho_kernels.triton.sm90 import Case


@triton.jit
def _device_descriptor_kernel(x_ptr, y_ptr, M, N, BLOCK: tl.constexpr):
    desc = tl.make_tensor_descriptor(x_ptr, shape=[M, N], strides=[N, 1],
                                     block_shape=[BLOCK, BLOCK])
    tile = desc.load([tl.program_id(0) * BLOCK, 0])
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs[:, None] * N + tl.arange(0, BLOCK)[None, :], tile)


@triton.jit
def _spill_kernel(x_ptr, y_ptr, N: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, N))
    tl.store(y_ptr + tl.arange(0, N), x * tl.sum(x * x, axis=0))  # every x live past the sum


def must_fail_cases() -> list:
    return [Case("spill", _spill_kernel, dict(x_ptr="*fp32", y_ptr="*fp32"), {"N": 16384},
                 configs=[triton.Config({}, num_warps=1)], mma=False, pipelined=False),
            Case("device_descriptor", _device_descriptor_kernel,
                 dict(x_ptr="*bf16", y_ptr="*bf16", M=4096, N=4096), {},
                 configs=[triton.Config({"BLOCK": 64}, num_warps=4)], mma=False,
                 pipelined=False)]
