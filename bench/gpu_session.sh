#!/usr/bin/env bash
# Issue 22's GPU session in one command: build, the kernel layer's GPU tests, then only the
# issue's target cases, in at most 8 minutes of machine time (H100, torch 2.11+cu130, Triton 3.6,
# no network). Logs, records and a per-stage summary go to $OUT.
#
#   bash bench/gpu_session.sh [--dry-run] [stage ...]
#
# Stages (default: all, in this order; each has its own time limit and never stops the rest):
#   check          CPU-side checks: bash -n of this script, python / torch / triton import, every
#                  bench script's --help, and which arguments each bench stage will get
#   build          TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation --no-deps -e .
#   test           pytest -x tests/kernels (the kernel layer's GPU tests; -n 8 with xdist),
#                  without the CPU-side checks (CPU_ONLY_TESTS)
#   block_sparse   block_sparse fwd and fwd+bwd at 90% and 50% block sparsity (b128, 8192
#                  tokens, 8192², bf16) against dense
#   regrow         one regrow of 10% of the blocks inside a training step, 90%, the same shape:
#                  its share of the step's device time (records train_step+regrow[_graphed],
#                  regrow_over_train_step; also regrow / regrow_graphed alone)
#   masked_linear  masked_linear fwd+bwd 8192 × 4096² bf16, steady state and per call, peak memory
#   ext            extrema_stats bf16 65536×4096 against the device copy measured in the same run
#                  (bench_ext.py --targets: per call and steady state, copy_fraction)
# --dry-run: run `check`, then print each selected stage's command and time limit, and the sum
# of the limits against the session budget; runs nothing else (works on a CPU-only machine).
#
# What the bench stages pass (decided from each script's --help, so the script keeps working
# while the bench files change):
#   bench_block_sparse.py   block_sparse: --targets when it offers it (the issue's cases, kernels
#                           tuned among 2-3 pre-chosen configs each, no regrow). Otherwise the
#                           shapes by hand, --tokens 8192 --sizes 8192 --blocks 128 --sparsities
#                           0.9 0.5 --dtypes bfloat16, with MORPHO_AUTOTUNE=0 (the first fitting
#                           config only: a full autotune compiles 24 configs per kernel and
#                           direction, minutes).
#                           regrow: --regrow-targets when it offers it; otherwise the 90% case by
#                           hand (--tokens 8192 --sizes 8192 --blocks 128 --sparsities 0.9 --dtypes
#                           bfloat16, MORPHO_AUTOTUNE=0), whose every case times the regrow modes
#                           (and, at that, its morpho / dense / torch_bsr peers again).
#   bench_masked_linear.py  --targets when offered (8192 × 4096² bf16, steady state + per call,
#                           peak memory); otherwise --tokens 8192 --sizes 4096 --dtypes bfloat16.
#   bench_ext.py            --targets.
# Environment: OUT (build/gpu_out), PY (python3), SESSION_BUDGET (480 s: later stages get what
# is left), BUILD_TIMEOUT TEST_TIMEOUT BS_TIMEOUT ML_TIMEOUT EXT_TIMEOUT (per stage, s),
# REGROW_TIMEOUT, BS_ARGS REGROW_ARGS ML_ARGS EXT_ARGS (replace the arguments above),
# PYTEST_EXTRA (more pytest arguments).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-build/gpu_out}
PY=${PY:-python3}
mkdir -p "$OUT"
rm -f "$OUT"/help_*.txt  # --help outputs are cached per run only
export PYTHONUNBUFFERED=1
export MORPHO_BENCH_COMMIT=${MORPHO_BENCH_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
SESSION_BUDGET=${SESSION_BUDGET:-480}
# limits: 475 s in all, ~5 s left for check (the three --help imports run in parallel)
BUILD_TIMEOUT=${BUILD_TIMEOUT:-150}   # 3 .cu files + the C++ sources, MAX_JOBS=16
TEST_TIMEOUT=${TEST_TIMEOUT:-105}
BS_TIMEOUT=${BS_TIMEOUT:-100}
REGROW_TIMEOUT=${REGROW_TIMEOUT:-60}
ML_TIMEOUT=${ML_TIMEOUT:-40}
EXT_TIMEOUT=${EXT_TIMEOUT:-20}
ALL_STAGES=(check build test block_sparse regrow masked_linear ext)

DRY=0
stages=()
for a in "$@"; do
  case $a in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
    *) stages+=("$a") ;;
  esac
done
[ ${#stages[@]} -eq 0 ] && stages=("${ALL_STAGES[@]}")
for s in "${stages[@]}"; do
  [[ " ${ALL_STAGES[*]} " == *" $s "* ]] || { echo "unknown stage $s (stages: ${ALL_STAGES[*]})"; exit 2; }
done

T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[gpu_session +$(elapsed)s] $*"; }
summary() { echo "$*" >> "$OUT/summary.txt"; }

# --help of a bench script, once per session (imports torch: seconds)
bench_help() {
  local f="$OUT/help_$(basename "$1" .py).txt"
  [ -s "$f" ] || $PY "$1" --help > "$f" 2>&1 || { rm -f "$f"; return 1; }
  cat "$f"
}
offers() { bench_help "$1" | grep -q -- "$2"; }

bs_args() {
  if [ -n "${BS_ARGS:-}" ]; then echo "$BS_ARGS"
  elif offers bench/bench_block_sparse.py --targets; then echo "--targets"
  else echo "--tokens 8192 --sizes 8192 --blocks 128 --sparsities 0.9 0.5 --dtypes bfloat16"; fi
}
regrow_args() {
  if [ -n "${REGROW_ARGS:-}" ]; then echo "$REGROW_ARGS"
  elif offers bench/bench_block_sparse.py --regrow-targets; then echo "--regrow-targets"
  else echo "--tokens 8192 --sizes 8192 --blocks 128 --sparsities 0.9 --dtypes bfloat16"; fi
}
ml_args() {
  if [ -n "${ML_ARGS:-}" ]; then echo "$ML_ARGS"
  elif offers bench/bench_masked_linear.py --targets; then echo "--targets"
  else echo "--tokens 8192 --sizes 4096 --dtypes bfloat16"; fi
}
ext_args() { echo "${EXT_ARGS:---targets}"; }
# without --targets, block_sparse would autotune every config: the first fitting one only
autotune_env() { [[ " $1 " == *"-targets "* ]] && echo "" || echo "MORPHO_AUTOTUNE=${MORPHO_AUTOTUNE:-0}"; }

# the CPU-side checks (sm_90 compiles, nvcc SASS, this script's dry run, the benches' CPU
# checks) passed where they were written and need no GPU: here they would only spend the
# stage's limit (~45 cold Triton compiles in each xdist worker that reaches one of them, 14
# nvcc compiles)
CPU_ONLY_TESTS="test_sm90_compile.py test_sass.py test_gpu_session.py test_bench_timing.py"
pytest_args() {
  local a="-q -x -p no:cacheprovider tests/kernels" t
  for t in $CPU_ONLY_TESTS; do a="$a --ignore=tests/kernels/$t"; done
  $PY -c "import xdist" 2>/dev/null && a="$a -n 8"
  $PY -c "import pytest_timeout" 2>/dev/null && a="$a --timeout=100"
  echo "$a ${PYTEST_EXTRA:-}"
}

stage_limit() {
  case $1 in
    build) echo "$BUILD_TIMEOUT" ;; test) echo "$TEST_TIMEOUT" ;; block_sparse) echo "$BS_TIMEOUT" ;;
    regrow) echo "$REGROW_TIMEOUT" ;;
    masked_linear) echo "$ML_TIMEOUT" ;; ext) echo "$EXT_TIMEOUT" ;; *) echo 0 ;;
  esac
}
# the command of a stage (run from the repository root)
stage_cmd() {
  case $1 in
    build) echo "TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $PY -m pip install -q --no-build-isolation --no-deps -e . && $PY -m morpho_kernels.info" ;;
    test) echo "$PY -m pytest $(pytest_args)" ;;
    block_sparse) echo "$(autotune_env "$(bs_args)") $PY bench/bench_block_sparse.py --device cuda --out $OUT/block_sparse.jsonl $(bs_args)" ;;
    regrow) echo "$(autotune_env "$(regrow_args)") $PY bench/bench_block_sparse.py --device cuda --out $OUT/regrow.jsonl $(regrow_args)" ;;
    masked_linear) echo "$PY bench/bench_masked_linear.py --device cuda --out $OUT/masked_linear.jsonl $(ml_args)" ;;
    ext) echo "$PY bench/bench_ext.py --device cuda --out $OUT/ext.jsonl $(ext_args)" ;;
  esac
}

check() {
  local ok=0 f
  bash -n "$0" || { echo "bash -n failed"; ok=1; }
  for f in bench/bench_block_sparse.py bench/bench_masked_linear.py bench/bench_ext.py; do
    bench_help "$f" > /dev/null &  # the three imports in parallel
  done
  wait
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.is_available())" || ok=1
  for f in bench/bench_block_sparse.py bench/bench_masked_linear.py bench/bench_ext.py; do
    if bench_help "$f" > /dev/null; then echo "ok   $f --help"; else echo "FAIL $f --help"; ok=1; fi
  done
  echo "block_sparse args:  $(autotune_env "$(bs_args)") $(bs_args)"
  echo "regrow args:        $(autotune_env "$(regrow_args)") $(regrow_args)"
  echo "masked_linear args: $(ml_args)"
  echo "ext args:           $(ext_args)"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  return $ok
}

run_stage() {
  local s=$1 limit cmd left rc t
  if [ "$s" = check ]; then
    log "check"; t=$(date +%s)
    check 2>&1 | tee "$OUT/check.log"; rc=${PIPESTATUS[0]}
    summary "check rc=$rc $(( $(date +%s) - t ))s"; return
  fi
  limit=$(stage_limit "$s"); cmd=$(stage_cmd "$s")
  left=$(( SESSION_BUDGET - $(elapsed) - 5 ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then log "$s skipped: session budget spent"; summary "$s skipped (budget)"; return; fi
  log "$s (limit ${limit}s): $cmd"
  t=$(date +%s)
  timeout -k 10 "$limit" bash -c "$cmd" > "$OUT/$s.log" 2>&1; rc=$?
  summary "$s rc=$rc $(( $(date +%s) - t ))s limit=${limit}s$([ $rc -eq 124 ] && echo ' TIMED OUT')"
  log "$s rc=$rc"
  tail -n 30 "$OUT/$s.log"
}

: > "$OUT/summary.txt"
if [ $DRY -eq 1 ]; then
  total=0
  for s in "${stages[@]}"; do total=$(( total + $(stage_limit "$s") )); done
  echo "sum of stage limits: ${total}s (session budget ${SESSION_BUDGET}s; later stages get what is left)"
  (( total <= SESSION_BUDGET )) || { echo "stage limits exceed the budget"; exit 1; }
  check || { echo "dry run: check failed"; exit 1; }
  for s in "${stages[@]}"; do
    [ "$s" = check ] || printf '%-14s limit %4ss  %s\n' "$s" "$(stage_limit "$s")" "$(stage_cmd "$s")"
  done
  exit 0
fi
for s in "${stages[@]}"; do run_stage "$s"; done
log "done"
cat "$OUT/summary.txt"
