#!/usr/bin/env bash
# Install everything (first run) and train the quick-start job: Fashion-MNIST, a small CNN,
# 2 local worker processes, synchronous SGD.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/distml run examples/quickstart.toml "$@"
