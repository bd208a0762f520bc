#!/usr/bin/env bash
# Create or delete a rate-limited test bed of network-namespace hosts (needs root).
#   scripts/testbed.sh up [--hosts 2] [--rate 100mbit] [--tag tb1]   # prints JSON: namespaces, addresses
#   scripts/testbed.sh down --tag tb1                                 # kills what runs inside, deletes all
# Run a command on a host: ip netns exec dmlh0tb1 env GLOO_SOCKET_IFNAME=eth0 CMD ...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m distml.runtime.testbed "$@"
