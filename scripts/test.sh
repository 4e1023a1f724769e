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
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
WORKERS=(-n "${TEST_WORKERS:-3}")
if [ $# -gt 0 ]; then
  .venv/bin/python -m pytest -q "${WORKERS[@]}" "$@"
  exit
fi
echo "test: step 1 of 2: the default suite (-m 'not slow', quick property tests)"
.venv/bin/python -m pytest -q "${WORKERS[@]}" -m "not slow" --hypothesis-profile=quick
echo "test: step 2 of 2: the slow tests and every property test's full count (-m 'slow or hypothesis')"
.venv/bin/python -m pytest -q "${WORKERS[@]}" -m "slow or hypothesis"
