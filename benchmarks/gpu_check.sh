#!/usr/bin/env bash
# The one command for the GPU machine:  bash benchmarks/gpu_check.sh OUTDIR [--dry-run]
# Builds bertfast._C for sm_90 there against that machine's torch, runs the GPU-marked tests (the
# GPU-risk ones first: tests/test_gpu_risks.py, tests/test_dropout_exact.py), the benchmark suite in
# reduced mode, each kernel's predicted time (the static model) next to its measured one
# (OUTDIR/predicted_vs_measured.md; the whole static report with BERTFAST_GPU_CHECK_SM90=1), and
# writes OUTDIR/results.json, OUTDIR/summary.md and logs. --dry-run (CPU, CI) runs the same plumbing with
# tiny sizes and no build.
# Time: the whole check fits BERTFAST_GPU_CHECK_BUDGET seconds (default 560, under the device tool's 600 s
# per command): the GPU tests get at most BERTFAST_GPU_TESTS_TIMEOUT (200 s) and always leave the
# benchmarks BERTFAST_BENCH_MIN (240 s); the benchmarks get the rest. Results are written after every
# benchmark, so a cut-short run keeps what it measured; the benchmark files run in order of what they
# decide (attention, the model, the embedding sum and its fused LayerNorm, LayerNorm, bias+GELU).
# BERTFAST_BENCH_K, if set, is passed to the benchmark run as pytest -k (to split a check in two).
# Set BERTFAST_COMMIT to the commit measured (the device copy of the tree has no .git).
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUTDIR [--dry-run]}
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$DRY" = 1 ] && PY=.venv/bin/python
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S), ${SECONDS}s in)"; }
BUDGET=${BERTFAST_GPU_CHECK_BUDGET:-560}
left() { echo $(( BUDGET - SECONDS )); }
min() { echo $(( $1 < $2 ? $1 : $2 )); }

step "environment"
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"; } | tee "$OUT/env.txt"

if [ "$DRY" = 0 ]; then
  step "build bertfast._C for sm_90"
  if ! BERTFAST_CUDA=1 BERTFAST_CUDA_ARCH=90 timeout 300 "$PY" -m pip install -v --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  grep -E "bertfast: |Linking" "$OUT/build.log"
fi
"$PY" -c "import bertfast; bertfast.info()" | tee -a "$OUT/env.txt"

step "GPU-marked tests"
# First the GPU-only risks the interpreter cannot see (issue "Right on the first real GPU": the device a
# launch runs on, CUDA-graph replay of dropout, each kernel's dropout mask read back exactly, the GPU's
# approximate arithmetic, the extension's scalar path and launch errors), then every other GPU test.
FIRST="tests/test_gpu_risks.py tests/test_dropout_exact.py"
if [ "$DRY" = 0 ]; then
  # (CUBLAS_WORKSPACE_CONFIG: deterministic cuBLAS, for the determinism test)
  tests_s=$(min ${BERTFAST_GPU_TESTS_TIMEOUT:-200} $(( $(left) - ${BERTFAST_BENCH_MIN:-240} )))
  if [ "$tests_s" -lt 30 ]; then
    echo "no time left for the GPU tests (${tests_s}s)" | tee "$OUT/gpu_tests.txt"; status=1
  else
    first_s=$(( tests_s / 2 ))
    echo "(time for the tests: ${tests_s}s, the GPU-risk tests first: up to ${first_s}s)"
    # SIGINT at the limit: pytest then stops like on Ctrl-C, still printing what passed and failed and
    # writing the JUnit XML (per-test outcome and seconds: what to budget next time).
    start=$SECONDS
    CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout -s INT -k 15 $first_s "$PY" -m pytest $FIRST -m gpu -q -p no:cacheprovider \
      --timeout=120 -rfEs --durations=8 --junitxml="$OUT/gpu_tests_first.xml" 2>&1 | tail -40 | tee "$OUT/gpu_tests.txt" || status=1
    rest_s=$(( tests_s - (SECONDS - start) ))
    ignore=(); for f in $FIRST; do ignore+=(--ignore "$f"); done
    CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout -s INT -k 15 $rest_s "$PY" -m pytest tests "${ignore[@]}" -m gpu -q -p no:cacheprovider \
      --timeout=120 -rfE --durations=12 --junitxml="$OUT/gpu_tests.xml" 2>&1 | tail -60 | tee -a "$OUT/gpu_tests.txt" || status=1
    grep -qE "passed" "$OUT/gpu_tests.txt" && ! grep -qE "failed|error" "$OUT/gpu_tests.txt" || status=1
  fi
else
  "$PY" -m pytest $FIRST -m gpu --collect-only -q -p no:cacheprovider 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
  "$PY" -m pytest tests -m gpu --collect-only -q -p no:cacheprovider 2>&1 | tail -3 | tee -a "$OUT/gpu_tests.txt"
fi

if [ "${BERTFAST_GPU_CHECK_SM90:-0}" = 1 ]; then
  # The whole static report CI produces without a GPU (tests/test_sm90_compile.py); optional here.
  step "static roofline report (bertfast.analysis.sm90)"
  TRITON_INTERPRET=0 timeout 200 "$PY" -m bertfast.analysis --json "$OUT/sm90.json" 2>&1 | tee "$OUT/sm90.txt" | tail -3 || status=1
fi

step "benchmarks"
MODE=reduced; [ "$DRY" = 1 ] && MODE=dry
bench_s=$(( $(left) - 10 )); [ "$bench_s" -lt 30 ] && bench_s=30
echo "(time for the benchmarks: ${bench_s}s)"
files=()
for name in attention model embedding_sum layer_norm bias_gelu; do files+=("benchmarks/bench_$name.py"); done
for f in benchmarks/bench_*.py; do [[ " ${files[*]} " == *" $f "* ]] || files+=("$f"); done  # any newer ones last
BERTFAST_BENCH_MODE=$MODE BERTFAST_BENCH_JSON="$OUT/results.json" BERTFAST_BENCH_SUMMARY="$OUT/summary.md" \
  timeout -s INT -k 15 $bench_s "$PY" -m pytest "${files[@]}" --benchmark-only -q -p no:cacheprovider --benchmark-columns=median \
  ${BERTFAST_BENCH_K:+-k "$BERTFAST_BENCH_K"} \
  > "$OUT/bench.log" 2>&1 || { status=1; tail -30 "$OUT/bench.log"; }
grep -E "passed|failed" "$OUT/bench.log" | tail -1

step "predicted (static model of the compiled kernels) next to measured"
# Where they differ by more than 25%, the model or the kernel needs a look (the issue's rule).
# (the CPU dry run measures no GPU kernel: it predicts one small example of each kind instead)
SOURCE="$OUT/results.json"; [ "$DRY" = 1 ] && SOURCE=--example
TRITON_INTERPRET=0 timeout 120 "$PY" -m benchmarks.predicted "$SOURCE" --markdown "$OUT/predicted_vs_measured.md" \
  --json "$OUT/predicted_vs_measured.json" > "$OUT/predicted.log" 2>&1 || { status=1; tail -20 "$OUT/predicted.log"; }
[ -f "$OUT/predicted_vs_measured.md" ] && cat "$OUT/predicted_vs_measured.md"

step "summary"
if [ -f "$OUT/summary.md" ]; then cat "$OUT/summary.md"; else echo "no summary.md written"; status=1; fi
exit $status
