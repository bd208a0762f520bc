#!/usr/bin/env bash
# Install distml and what it needs into .venv (pinned versions from constraints.txt),
# plus the Debian packages: the Fashion-MNIST data set, iproute2 (multi-host tests) and,
# with the test extras, chromium (the HTML report's browser test).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

need_apt=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# the HTML report's test opens it in a real headless browser: only for the test extras
case "$extras" in *test*) command -v chromium >/dev/null 2>&1 || need_apt+=(chromium) ;; esac
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  echo "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".${extras}"
