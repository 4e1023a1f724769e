#!/usr/bin/env bash
# Set up from nothing, then lint, type-check and run the whole test suite in two steps:
#   1. the default suite: every test not marked slow, property tests with a fifth of their
#      examples (hypothesis profile "quick", tests/conftest.py);
#   2. the slow tests (crash loops, large lists, the whole-lunch scenario, long soaks), and the
#      property tests again with all their examples.
# Both run on TEST_WORKERS processes (pytest-xdist; default 3, 0 for one process): one more
# than a 2-core machine's cores, since many tests wait on servers, sockets and child
# processes (docs/architecture.md, "The test suite's time").
# Arguments are passed to pytest: with any, one run does what they select, slow tests included
# (for example `bash scripts/test.sh tests/test_ledger.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
# Byte-code caching on, whatever the caller's environment says: with PYTHONDONTWRITEBYTECODE
# set (as on this project's CI machines), every test process re-compiles every module and
# pytest re-rewrites every test file's asserts, and every terminal or county a test starts
# compiles the project again: collection alone took 16 s a worker instead of 6 s.
unset PYTHONDONTWRITEBYTECODE
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
WORKERS=(-n "${TEST_WORKERS:-3}")
if [ $# -gt 0 ]; then
  .venv/bin/python -m pytest -q "${WORKERS[@]}" "$@"
  exit
fi
# Each step's wall time, and the share of the cores' time the hypervisor gave to other
# machines meanwhile ("steal", /proc/stat): on a shared virtual machine the same suite takes
# a third longer on a busy day, and this line says which kind of day it was.
cpu_ticks() { awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9; exit}' /proc/stat 2>/dev/null || echo "0 0"; }
steal_share() { awk '{t = $4 - $2; printf "%.1f", (t > 0 ? 100 * ($3 - $1) / t : 0)}'; }
step() {
  local name=$1 start=$SECONDS before after
  shift
  before=$(cpu_ticks)
  .venv/bin/python -m pytest -q "${WORKERS[@]}" "$@"
  after=$(cpu_ticks)
  echo "test: $name took $((SECONDS - start)) s; steal $(echo "$before $after" | steal_share) % of the cores' time"
}
echo "test: step 1 of 2: the default suite (-m 'not slow', quick property tests)"
step "step 1" -m "not slow" --hypothesis-profile=quick
echo "test: step 2 of 2: the slow tests and every property test's full count (-m 'slow or hypothesis')"
step "step 2" -m "slow or hypothesis"
