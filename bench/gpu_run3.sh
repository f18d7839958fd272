#!/usr/bin/env bash
# Device call 3 of session 2: rebuilt extension (shape_str fix), GPU tests in parallel, block-sparse
# targets after the index pre-gather, fp32 block-sparse, masked_linear with the new defaults.
set -u
rm -f csrc/graph.* csrc/cpu/edges.cpp csrc/cpu/extrema.cpp csrc/cpu/sparse_linear.cpp
find csrc/cuda -name '*.cu' ! -name masked_weight.cu -delete
bash bench/gpu_session.sh build > $OUT/build_session.log 2>&1; tail -3 $OUT/build_session.log
echo "== tests"
timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout=200 tests/kernels/test_block_sparse.py tests/kernels/test_masked_linear.py tests/kernels/test_nn.py tests/kernels/test_ext.py tests/kernels/test_info.py > $OUT/test.log 2>&1; echo "pytest rc=$?"; tail -8 $OUT/test.log
echo "== bench block_sparse"
timeout 150 python3 bench/bench_block_sparse.py --device cuda --dtypes bfloat16 --sizes 8192 --blocks 64 128 --out $OUT/block_sparse.jsonl > $OUT/bench_bs.log 2>&1; echo "rc=$?"; tail -9 $OUT/bench_bs.log
timeout 130 python3 bench/bench_block_sparse.py --device cuda --dtypes float32 --sizes 4096 --out $OUT/block_sparse.jsonl > $OUT/bench_bs32.log 2>&1; echo "rc=$?"; tail -13 $OUT/bench_bs32.log
echo "== bench masked_linear"
timeout 90 python3 bench/bench_masked_linear.py --device cuda --tokens 16 1024 8192 --sizes 4096 --out $OUT/masked_linear.jsonl > $OUT/bench_ml.log 2>&1; echo "rc=$?"; tail -14 $OUT/bench_ml.log
