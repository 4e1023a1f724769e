#!/usr/bin/env bash
# Set up this checkout (Debian packages, .venv) and run the terminal's main job on its
# embedded defaults. For now the main job is the decision core on a small built-in canteen:
# real tokens, real trust lists, a real ledger in ./state-demo, every verdict printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/canteen-terminal demo --state "${CANTEEN_STATE:-state-demo}" "$@"
