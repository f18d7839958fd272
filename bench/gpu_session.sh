#!/usr/bin/env bash
# One lent-GPU session in one command (docs/performance.md, GPU): build the CUDA extension, run the
# test suite on the GPU, then the GPU benchmark cases, writing logs and records under $OUT.
#   bash bench/gpu_session.sh [stage ...]    stages: build test masked_linear block_sparse ext
# Without stages it runs all of them. Each stage has its own time limit and never stops the rest.
# block_sparse autotunes 24 configs per kernel, shape and direction (compiles dominate: minutes).
set -u
OUT=${OUT:-build/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MORPHO_BENCH_COMMIT=${MORPHO_BENCH_COMMIT:-unknown}
PY=${PY:-python3}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test masked_linear block_sparse ext)
T0=$(date +%s)
log() { echo "[gpu_session +$(( $(date +%s) - T0 ))s] $*"; }
for s in "${stages[@]}"; do
  case $s in
    build)
      log "build"
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
      $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
      TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 timeout 420 $PY -m pip install -q --no-build-isolation \
        --no-deps -e . >"$OUT/build.log" 2>&1 || { log "BUILD FAILED"; tail -40 "$OUT/build.log"; }
      $PY -m morpho_kernels.info ;;
    test)
      log "test"
      timeout ${TEST_TIMEOUT:-300} $PY -m pytest -q -x --timeout=120 -p no:cacheprovider tests \
        ${PYTEST_EXTRA:-} >"$OUT/test.log" 2>&1; echo "pytest rc=$?"; tail -25 "$OUT/test.log" ;;
    masked_linear)
      log "bench masked_linear"
      timeout ${ML_TIMEOUT:-240} $PY bench/bench_masked_linear.py --device cuda \
        --out "$OUT/masked_linear.jsonl" ${ML_ARGS:-} >"$OUT/bench_masked_linear.log" 2>&1
      echo "rc=$?"; tail -45 "$OUT/bench_masked_linear.log" ;;
    block_sparse)
      log "bench block_sparse"
      timeout ${BS_TIMEOUT:-540} $PY bench/bench_block_sparse.py --device cuda \
        --out "$OUT/block_sparse.jsonl" ${BS_ARGS:-} >"$OUT/bench_block_sparse.log" 2>&1
      echo "rc=$?"; tail -45 "$OUT/bench_block_sparse.log" ;;
    ext)
      log "bench ext"
      timeout ${EXT_TIMEOUT:-240} $PY bench/bench_ext.py --device cuda \
        --out "$OUT/ext.jsonl" ${EXT_ARGS:-} >"$OUT/bench_ext.log" 2>&1
      echo "rc=$?"; tail -30 "$OUT/bench_ext.log" ;;
    *) log "unknown stage $s" ;;
  esac
done
log "done"
