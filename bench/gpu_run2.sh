#!/usr/bin/env bash
# Device call of session 2 (kept for the record): the committed tree only, block-sparse focus.
set -u
rm -f csrc/graph.* csrc/cpu/edges.cpp csrc/cpu/extrema.cpp csrc/cpu/sparse_linear.cpp
find csrc/cuda -name '*.cu' ! -name masked_weight.cu -delete
bash bench/gpu_session.sh build
echo "== segfault probe"
timeout 60 cuda-gdb -batch -ex run -ex bt --args python3 -c "import torch, morpho_kernels._C; torch.ops.morpho.masked_weight(torch.randn(4,5), torch.randn(5,4), torch.tensor(1.0))" 2>&1 | grep -v "^\[New Thread\|^\[Thread" | tail -30
g++ --version | head -1
python3 -c "import torch; print('cxx11abi', torch.compiled_with_cxx11_abi())"
echo "== tests"
timeout 200 python3 -m pytest -q -p no:cacheprovider --timeout=120 tests/kernels/test_block_sparse.py tests/kernels/test_masked_linear.py tests/kernels/test_nn.py --deselect tests/kernels/test_ext.py::test_ext_checks_report_clear_errors > $OUT/test.log 2>&1; echo "pytest rc=$?"; tail -15 $OUT/test.log
echo "== bench block_sparse bf16"
timeout 300 python3 bench/bench_block_sparse.py --device cuda --dtypes bfloat16 --out $OUT/block_sparse.jsonl > $OUT/bench_bs.log 2>&1; echo "rc=$?"; tail -42 $OUT/bench_bs.log
