#!/usr/bin/env bash
# Install what the project needs on a fresh Debian machine, idempotently: the Debian packages (Mosquitto,
# Chromium, promtool, systemd-analyze) when missing, and a venv in .venv with the package and its [dev] extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# binary -> Debian package: the broker the tests and the demo start, the browser tests' Chromium, promtool
# (the `prometheus` package) for the metrics/rules checks, systemd-analyze for the unit checks
need_apt=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have mosquitto || need_apt+=(mosquitto)
have chromium || need_apt+=(chromium)
have promtool || need_apt+=(prometheus)
have systemd-analyze || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # the packages would start their own services (a broker on 1883, a Prometheus on 9090): forbid that while
  # installing (Debian's policy-rc.d), rather than killing processes by name afterwards, which could hit a
  # broker some test started
  policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  trap '[ -n "$policy_added" ] && $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # and keep them from starting at the next boot, where systemd runs
  if [ -d /run/systemd/system ]; then
    for svc in mosquitto prometheus prometheus-node-exporter; do
      $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
  fi
fi
for bin in mosquitto chromium promtool systemd-analyze; do
  have "$bin" || { echo "setup: $bin is still missing after apt-get install" >&2; exit 1; }
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
