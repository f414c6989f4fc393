#!/usr/bin/env bash
# Sets up everything the agent, central, the demo and the tests need, idempotently:
# Mosquitto (installed with apt-get when missing and running as root), a virtual
# environment in .venv and this package with its development extras. With --test, also what
# only the tests use: GStreamer's RTSP server (a real RTSP camera), Debian's Chromium and
# Playwright (the operator page's browser test; Playwright never downloads a browser), and a
# PostgreSQL server for central's tests when none answers.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "Missing system packages: $*" >&2
        echo "Install them with:  sudo apt-get install -y $*  and run this again." >&2
        exit 1
    fi
    say "Installing system packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    missing+=(mosquitto)
fi
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
# deploy/make-certs.sh makes the broker's certificates (the security tests too).
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
# --test: also what only the tests need (a real RTSP camera: GStreamer's RTSP server).
if [ "${1:-}" = "--test" ] && ! /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' >/dev/null 2>&1; then
    missing+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)
fi
extras=dev
if [ "${1:-}" = "--test" ]; then
    extras=dev,browser
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    # systemd-analyze verify checks the shipped units (nothing is started).
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Python 3.11 or newer is needed; this is $(python3 --version)." >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    say "Creating the virtual environment in .venv"
    python3 -m venv .venv
fi

stamp=.venv/.installed-from-pyproject
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
        || { [ "$extras" = dev,browser ] && ! .venv/bin/python -c 'import playwright' 2>/dev/null; }; then
    say "Installing Python packages into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$extras]"
    touch "$stamp"
fi
# --test: central's tests also run against PostgreSQL. A server already answering (on
# 127.0.0.1:5432 or the local socket) is used as it is; otherwise Debian's is installed and
# started, with a role for this user and a database "test" (reached over the local socket).
postgres_answers() {
    python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 2)' 2>/dev/null \
        || [ -S /var/run/postgresql/.s.PGSQL.5432 ]
}
if [ "${1:-}" = "--test" ] && ! postgres_answers; then
    command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
    say "Starting PostgreSQL"
    service postgresql start >/dev/null 2>&1 || pg_ctlcluster "$(ls /etc/postgresql | sort -V | tail -1)" main start
    me="$(id -un)"
    su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname = '$me'\"" | grep -q 1 \
        || su postgres -c "createuser --superuser '$me'"
    su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 \
        || su postgres -c "createdb -O '$me' test"
fi
say "Set up: .venv ready, $(.venv/bin/python --version), mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')"
