#!/usr/bin/env bash
# Sets everything up (see setup.sh), then runs the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --test
printf '\033[1m==> %s\033[0m\n' "ruff check"
.venv/bin/ruff check .
printf '\033[1m==> %s\033[0m\n' "lint-imports (boundaries: pyproject.toml [tool.importlinter])"
.venv/bin/lint-imports --no-cache
printf '\033[1m==> %s\033[0m\n' "pytest"
# Central's tests run on SQLite and PostgreSQL: here a missing PostgreSQL fails them.
EDGE_MLOPS_REQUIRE_POSTGRES=1 .venv/bin/python -m pytest "$@"
