#!/usr/bin/env bash
# Installs edge-agent on a Debian/Ubuntu gateway from a device bundle that
# `central-sync device add DEVICE` wrote. Idempotent: run it again with a new bundle (after
# `central-sync device rotate DEVICE`) to update the credentials.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: sudo deploy/install-agent.sh BUNDLE.tar.gz [--root DIR] [--venv PATH] [--no-start]

Installs the agent from this checkout and the device bundle BUNDLE.tar.gz (from
`central-sync device add DEVICE` on central):
  user        edge-agent (system user, in group video for USB cameras)
  program     /opt/edge-agent, a virtual environment with this package, dependencies at
              the versions and SHA-256 hashes of deploy/locks/agent.txt
  config      /etc/edge-agent (root:edge-agent, dir 0750, files 0640): edge-agent.yaml,
              mqtt-password, central-signing.pub, ca.crt, client.crt/client.key if bundled
  state       /var/lib/edge-agent (edge-agent:edge-agent, 0750)
  service     /etc/systemd/system/edge-agent.service, enabled and started

An existing /etc/edge-agent/edge-agent.yaml (with this gateway's sources and pipelines) is
never overwritten: the bundle's is written beside it as edge-agent.yaml.new. Credentials,
CA certificate and central's public key are always replaced by the bundle's.

Options:
  --root DIR   install under DIR instead of / (staging, tests): no user is created, no
               ownership changed, systemd untouched; data_dir in the installed
               edge-agent.yaml points to DIR/var/lib/edge-agent so the staged agent can run
  --venv PATH  use this existing environment (it must have bin/edge-agent) instead of
               creating /opt/edge-agent; the service then runs PATH/bin/edge-agent
  --no-start   install and check, but do not enable or start the service
  -h, --help   this text

Examples:
  sudo deploy/install-agent.sh line3-gw1.tar.gz
  sudo deploy/install-agent.sh line3-gw1.tar.gz --no-start      # edit sources first
  deploy/install-agent.sh line3-gw1.tar.gz --root /tmp/stage --venv .venv --no-start
USAGE
}

die() { echo "install-agent: error: $*" >&2; exit 1; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

checkout="$(cd "$(dirname "$0")/.." && pwd)"
# The service's user runs the environment's Python: the system's (not one under /root or
# /home, which that user cannot read) unless PYTHON names another.
python=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; fi
bundle="" root="" venv="" start=yes
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --root) root=${2:?--root needs a folder}; shift 2 ;;
        --venv) venv=${2:?--venv needs the path of a virtual environment}; shift 2 ;;
        --no-start) start=no; shift ;;
        -*) echo "install-agent: error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) [ -z "$bundle" ] || { echo "install-agent: error: one bundle only (see --help)" >&2; exit 2; }
           bundle=$1; shift ;;
    esac
done
[ -n "$bundle" ] || { usage >&2; exit 2; }

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root, e.g. sudo $0 $bundle (or stage it without root: --root DIR)"
fi

# --- the bundle: DEVICE/ with edge-agent.yaml, central-signing.pub, mqtt-password, ... ----------
[ -f "$bundle" ] || die "bundle $bundle not found; make it on central with" \
    "\`central-sync device add DEVICE\` (or \`device rotate DEVICE\`) and copy it here"
if ! listing="$(tar -tvzf "$bundle" 2>/dev/null)"; then
    die "$bundle is not a .tar.gz archive; copy the DEVICE.tar.gz that \`central-sync device add\` wrote again"
fi
names="$(tar -tzf "$bundle" 2>/dev/null)"
device=${names%%$'\n'*}
device=${device%%/*}
[[ $device =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "$bundle does not hold a DEVICE/ folder as central writes it"
while read -r mode _ _ _ _ name _; do
    case "$mode" in d*|-*) ;; *) die "$bundle holds $name, which is not a plain file or folder; refusing it" ;; esac
    [[ $name == "$device" || $name == "$device/" || $name =~ ^"$device"/[A-Za-z0-9._-]+$ ]] \
        || die "$bundle holds $name outside $device/; refusing it"
done <<< "$listing"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar -xzf "$bundle" -C "$work" --no-same-owner --no-same-permissions
from="$work/$device"
for required in edge-agent.yaml central-signing.pub mqtt-password; do
    [ -f "$from/$required" ] || die "$bundle lacks $device/$required; make a new bundle on" \
        "central with \`central-sync device rotate $device\`"
done
grep -Eq "^device_id: *[\"']?$device[\"']? *(#.*)?$" "$from/edge-agent.yaml" \
    || die "$device/edge-agent.yaml does not say device_id: $device; make a new bundle on central"
[ -f "$from/client.crt" ] && has_crt=yes || has_crt=no
[ -f "$from/client.key" ] && has_key=yes || has_key=no
[ "$has_crt" = "$has_key" ] \
    || die "$bundle has only one of client.crt and client.key; make a new bundle on central"
credentials=(mqtt-password central-signing.pub)
for optional in ca.crt client.crt client.key; do
    [ -f "$from/$optional" ] && credentials+=("$optional")
done

if [ -n "$root" ]; then
    mkdir -p "$root"
    root="$(cd "$root" && pwd)"
fi
etc="$root/etc/edge-agent"
state="$root/var/lib/edge-agent"
unit="$root/etc/systemd/system/edge-agent.service"
owned() { [ -z "$root" ]; }  # real install: set owners; staging (--root): leave them

# --- the user --------------------------------------------------------------------------------
if owned; then
    if ! getent passwd edge-agent >/dev/null; then
        say "Creating the system user edge-agent"
        useradd --system --user-group --home-dir /var/lib/edge-agent --no-create-home \
            --shell /usr/sbin/nologin --comment "edge-agent (edge MLOps)" edge-agent
    fi
    if getent group video >/dev/null; then
        usermod -a -G video edge-agent
    else
        echo "install-agent: no group video here: USB cameras (/dev/video*) need it" >&2
    fi
fi

# --- the program -----------------------------------------------------------------------------
if [ -n "$venv" ]; then
    [ -x "$venv/bin/edge-agent" ] || die "--venv $venv: $venv/bin/edge-agent not found; install" \
        "this package there (pip install $checkout) or leave --venv out"
    venv="$(cd "$venv" && pwd)"
    case "$venv" in /home/*|/root/*) [ -n "$root" ] || echo "install-agent: warning: the" \
        "service cannot see $venv (ProtectHome=yes); use /opt/edge-agent" >&2 ;; esac
else
    venv="$root/opt/edge-agent"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "Python 3.11 or newer is needed (apt-get install -y python3 python3-venv)"
    "$python" -c 'import ensurepip, venv' 2>/dev/null || die "python3-venv is missing: apt-get install -y python3-venv"
    if [ ! -x "$venv/bin/python" ]; then
        say "Creating the virtual environment $venv"
        "$python" -m venv "$venv"
    fi
    say "Installing edge-agent from $checkout into $venv (locked versions, hashes checked)"
    # Every dependency from the lock, each file checked against its SHA-256; then this
    # package alone, built with the locked setuptools: nothing unpinned comes from the index.
    "$venv/bin/python" -m pip install --quiet --require-hashes \
        -r "$checkout/deploy/locks/agent.txt"
    "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation --upgrade "$checkout"
fi
agent="$venv/bin/edge-agent"
if owned && ! runuser -u edge-agent -- "$agent" --help >/dev/null 2>&1; then
    die "the user edge-agent cannot run $agent (its Python is $(readlink -f "$venv/bin/python"));" \
        "use the system's Python: apt-get install -y python3 python3-venv, remove $venv and" \
        "run this again (or name one with PYTHON=/usr/bin/python3.11)"
fi

# --- configuration and credentials -----------------------------------------------------------
install -d -m 0750 "$etc"
owned && chown root:edge-agent "$etc" && chmod 0750 "$etc"
put() {  # put SOURCE TARGET: a file 0640 root:edge-agent, replaced in one step
    install -m 0640 "$1" "$2.tmp.$$"
    owned && chown root:edge-agent "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
}
for name in "${credentials[@]}"; do
    put "$from/$name" "$etc/$name"
done
new_config="$work/edge-agent.yaml"
if [ -n "$root" ]; then
    # Staged: the agent keeps its state in the staging tree, not in the real /var/lib.
    sed -E "s#^data_dir: */var/lib/edge-agent *(\#.*)?\$#data_dir: $state#" "$from/edge-agent.yaml" > "$new_config"
else
    cp "$from/edge-agent.yaml" "$new_config"
fi
config_note=""
if [ ! -f "$etc/edge-agent.yaml" ]; then
    put "$new_config" "$etc/edge-agent.yaml"
    config_note="wrote $etc/edge-agent.yaml: add this gateway's sources and pipelines to it"
elif cmp -s "$new_config" "$etc/edge-agent.yaml"; then
    rm -f "$etc/edge-agent.yaml.new"
    config_note="$etc/edge-agent.yaml is the bundle's, unchanged"
else
    put "$new_config" "$etc/edge-agent.yaml.new"
    config_note="kept your $etc/edge-agent.yaml; the bundle's is beside it as edge-agent.yaml.new (compare: diff $etc/edge-agent.yaml $etc/edge-agent.yaml.new)"
fi

# --- state and service -----------------------------------------------------------------------
install -d -m 0750 "$state"
owned && chown edge-agent:edge-agent "$state" && chmod 0750 "$state"
install -d -m 0755 "$(dirname "$unit")"
sed "s#^ExecStart=/opt/edge-agent/bin/edge-agent #ExecStart=$agent #" \
    "$checkout/deploy/systemd/edge-agent.service" > "$work/edge-agent.service"
install -m 0644 "$work/edge-agent.service" "$unit"

say "Checking $etc/edge-agent.yaml"
as_agent=()
owned && command -v runuser >/dev/null && as_agent=(runuser -u edge-agent --)
if ! "${as_agent[@]}" "$agent" check-config -c "$etc/edge-agent.yaml"; then
    die "the configuration does not pass (see above); fix $etc/edge-agent.yaml, check it with" \
        "\`$agent check-config -c $etc/edge-agent.yaml\` and run this again; nothing was started"
fi

say "Installed edge-agent for $device"
echo "  $config_note"
echo "  credentials: ${credentials[*]} in $etc"
echo "  state:       $state"
echo "  service:     $unit"
if [ "$start" = yes ] && [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if systemctl is-active --quiet edge-agent; then
        systemctl restart edge-agent   # it reads the new credentials at start
        echo "  restarted edge-agent"
    else
        systemctl enable --now edge-agent
        echo "  enabled and started edge-agent"
    fi
    echo "  follow it with: journalctl -u edge-agent -f   (systemctl status edge-agent)"
elif [ -n "$root" ]; then
    echo "  staged under $root; run it there with: $agent launch --supervise -c $etc/edge-agent.yaml"
elif [ -d /run/systemd/system ]; then
    echo "  start it with: systemctl daemon-reload && systemctl enable --now edge-agent"
else
    echo "  systemd is not running here; start it with:"
    echo "  runuser -u edge-agent -- $agent launch --supervise -c $etc/edge-agent.yaml"
fi
if [ -L "$state/agent/current" ]; then
    # An agent release central sent runs instead of this install until it is taken back.
    echo "  note: the agent runs release $(basename "$(readlink "$state/agent/current")") that" \
        "central sent; to run this install instead: central-sync agent rollback --device" \
        "$device (or remove $state/agent/current and restart edge-agent)"
fi
