#!/usr/bin/env bash
# The main job: set up, then run the bundled MiniLM checkpoint through bertfast and transformers side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
python -m bertfast info
python -m bertfast compare "$@"
