#!/usr/bin/env bash
# Install everything (first run) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "[test]"
# two test processes, each test file in one of them (module fixtures run once): the
# multi-process tests leave the CPUs idle much of the time (process starts, rendezvous,
# timeouts), so two at once fit the suite's budget of 2 cores; `-n 0` runs serially
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
