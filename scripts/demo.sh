#!/usr/bin/env bash
# Run the full demo on this machine (installs what is missing first): plant simulators, exchange, MQTT
# broker, controller and dashboard on 127.0.0.1. Ctrl-C stops everything. Extra arguments go to `bess-edge demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/bess-edge demo "$@"
