#!/usr/bin/env bash
# The tests: set up, then run the whole CPU suite (Triton kernels under TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
if command -v nvcc >/dev/null 2>&1 && [ "${BERTFAST_CUDA:-}" != "0" ]; then
  export BERTFAST_EXPECT_CUDA_BUILD=1  # tests/test_build.py then checks the CUDA sources were compiled in
fi
export TRITON_INTERPRET=1
# One pytest-xdist worker a core (at most 4; BERTFAST_TEST_WORKERS overrides, 0 runs in this process):
# most of the suite is the single-threaded Triton interpreter.
workers=${BERTFAST_TEST_WORKERS:-$(python -c "import os; print(min(4, len(os.sched_getaffinity(0))))")}
python -m pytest tests -q -n "$workers" "$@"
