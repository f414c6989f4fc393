#!/usr/bin/env bash
# Sets everything up (see setup.sh), then runs the demo until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
exec .venv/bin/python deploy/demo.py "$@"
