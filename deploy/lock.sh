#!/usr/bin/env bash
# Regenerate the hash-pinned lock files the install scripts and the Dockerfile install from.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: bash deploy/lock.sh [--upgrade]

Resolves pyproject.toml's dependencies (and setuptools, to build this package) for Python 3.11
and newer on every platform, and writes them with exact versions and the SHA-256 of every
published file:
  deploy/locks/agent.txt    edge-agent: what deploy/install-agent.sh installs
  deploy/locks/central.txt  central-sync with PostgreSQL and `central-sync train`:
                            deploy/install-central.sh, Dockerfile
pip then installs them with --require-hashes: a file on the index that changed after locking,
or a dependency nobody locked, stops the install.

Run it after changing dependencies in pyproject.toml, and commit both files. It needs uv
(pip install uv) and access to PyPI.
  --upgrade  take the newest versions allowed instead of keeping those already locked

Examples:
  bash deploy/lock.sh
  bash deploy/lock.sh --upgrade
USAGE
}

upgrade=()
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --upgrade) upgrade=(--upgrade) ;;
    "") ;;
    *) echo "lock.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
command -v uv >/dev/null || { echo "lock.sh: uv is needed: pip install uv" >&2; exit 1; }
compile() {  # output, extra options...
    local output=$1; shift
    uv pip compile pyproject.toml deploy/locks/build.in "$@" --universal --python-version 3.11 \
        --generate-hashes --custom-compile-command "bash deploy/lock.sh" \
        "${upgrade[@]}" --output-file "$output"
}
compile deploy/locks/agent.txt
compile deploy/locks/central.txt --extra postgres --extra training
echo "lock.sh: wrote deploy/locks/agent.txt and deploy/locks/central.txt"
