// Schemas of the block-sparse family (a fragment of the `morpho` library) and their CPU kernels.
// On CUDA the Triton kernels serve block_sparse_linear; these ops are the CPU fast path.
#include <torch/library.h>

#include "block_sparse.h"

TORCH_LIBRARY_FRAGMENT(morpho, m) {
  m.def(
      "bs_dsd(Tensor a, Tensor vmat, Tensor ptr, Tensor order, Tensor idx, int n_out_blocks, "
      "Tensor? bias) -> Tensor");
  m.def("bs_sdd(Tensor grad_out, Tensor x, Tensor rows, Tensor cols, int block) -> Tensor");
}

TORCH_LIBRARY_IMPL(morpho, CPU, m) {
  m.impl("bs_dsd", &morpho::bs_dsd_cpu);
  m.impl("bs_sdd", &morpho::bs_sdd_cpu);
}
