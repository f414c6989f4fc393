#!/usr/bin/env bash
# Installs central-sync and a secured Mosquitto on a Debian/Ubuntu plant server. Idempotent:
# run it again after updating the checkout; keys, passwords and certificates stay.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: sudo deploy/install-central.sh --broker-host NAME [--broker-host NAME...]
                                      [--root DIR] [--venv PATH] [--no-start]

Installs from this checkout:
  packages    mosquitto, mosquitto-clients, openssl, python3-venv (apt-get, when missing)
  user        central-sync (system user)
  program     /opt/central-sync, a virtual environment with this package (and psycopg),
              dependencies at the versions and SHA-256 hashes of deploy/locks/central.txt
  config      /etc/central-sync/central-sync.yaml (written once; yours is never replaced)
  state       /var/lib/central-sync: SQLite database, artifacts, keys, device bundles
  broker      /etc/mosquitto/conf.d/edge-mlops.conf (deploy/mosquitto/edge-mlops.conf):
              TLS on 8883 for the gateways, plain MQTT on 127.0.0.1:1883 only, no anonymous
              access; accounts in /etc/mosquitto/edge-mlops (passwd, acl: central-sync
              writes them), certificates in /etc/mosquitto/edge-mlops/tls from
              deploy/make-certs.sh unless server.crt is there already (a plant PKI's)
  keys        central's signing key (`central-sync keys init`) and its broker login
              (`central-sync broker init`), each made once
  services    central-sync.service, mosquitto-accounts.path (rereads the accounts), both
              enabled and started, and Mosquitto restarted with the new configuration

--broker-host names the broker as the gateways reach it (DNS name or IP address): the first
goes into each device bundle, all into the server certificate.

Options:
  --root DIR   install under DIR instead of / (staging, tests): no packages, no user, no
               ownership changes, systemd untouched; paths in the config point into DIR
  --venv PATH  use this existing environment (it must have bin/central-sync) instead of
               creating /opt/central-sync
  --no-start   install, but do not enable or start the services
  -h, --help   this text

Examples:
  sudo deploy/install-central.sh --broker-host mqtt.plant.example --broker-host 192.168.10.5
  deploy/install-central.sh --broker-host localhost --root /tmp/stage --venv .venv --no-start
USAGE
}

die() { echo "install-central: error: $*" >&2; exit 1; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

checkout="$(cd "$(dirname "$0")/.." && pwd)"
# The service's user runs the environment's Python: the system's (not one under /root or
# /home, which that user cannot read) unless PYTHON names another.
python=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; fi
hosts=() root="" venv="" start=yes
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --broker-host) hosts+=("${2:?--broker-host needs a name}"); shift 2 ;;
        --root) root=${2:?--root needs a folder}; shift 2 ;;
        --venv) venv=${2:?--venv needs the path of a virtual environment}; shift 2 ;;
        --no-start) start=no; shift ;;
        *) echo "install-central: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#hosts[@]} -ge 1 ] || { echo "install-central: error: name the broker as gateways reach it: --broker-host NAME (see --help)" >&2; exit 2; }
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root, e.g. sudo $0 --broker-host ${hosts[0]} (or stage it: --root DIR)"
fi
if [ -n "$root" ]; then
    mkdir -p "$root"
    root="$(cd "$root" && pwd)"
fi
owned() { [ -z "$root" ]; }  # a real install sets owners and touches the system

etc="$root/etc/central-sync"
state="$root/var/lib/central-sync"
accounts="$root/etc/mosquitto/edge-mlops"
units="$root/etc/systemd/system"

# Debian's mosquitto.conf sets only pid, persistence and logging and includes conf.d, where
# edge-mlops.conf sets listeners and accounts. One that sets them itself would clash.
main="$root/etc/mosquitto/mosquitto.conf"
if [ -f "$main" ]; then
    grep -Eq '^[[:space:]]*include_dir[[:space:]]+/etc/mosquitto/conf\.d/?[[:space:]]*$' "$main" \
        || die "$main does not include conf.d, so edge-mlops.conf would be ignored: add the" \
               "line 'include_dir /etc/mosquitto/conf.d' to it (as Debian's has) and run this again"
    clashing="$(grep -En '^[[:space:]]*(listener|port|allow_anonymous|password_file|acl_file|per_listener_settings)[[:space:]]' "$main" || true)"
    [ -z "$clashing" ] || die "$main sets what edge-mlops.conf sets (listeners and accounts):" \
        "$(echo "$clashing" | tr '\n' ';') remove those lines (Debian's mosquitto.conf has none) and run this again"
fi

# --- packages and user -----------------------------------------------------------------------
if owned; then
    missing=()
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
    command -v openssl >/dev/null || missing+=(openssl)
    "$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    if [ ${#missing[@]} -gt 0 ]; then
        say "Installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! getent passwd central-sync >/dev/null; then
        say "Creating the system user central-sync"
        useradd --system --user-group --home-dir /var/lib/central-sync --no-create-home \
            --shell /usr/sbin/nologin --comment "central-sync (edge MLOps)" central-sync
    fi
fi

# --- the program -----------------------------------------------------------------------------
if [ -n "$venv" ]; then
    [ -x "$venv/bin/central-sync" ] || die "--venv $venv: $venv/bin/central-sync not found;" \
        "install this package there (pip install '$checkout[postgres,training]') or leave --venv out"
    venv="$(cd "$venv" && pwd)"
else
    venv="$root/opt/central-sync"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "Python 3.11 or newer is needed; this is $("$python" --version)"
    [ -x "$venv/bin/python" ] || { say "Creating the virtual environment $venv"; "$python" -m venv "$venv"; }
    say "Installing central-sync from $checkout into $venv (locked versions, hashes checked)"
    # Every dependency from the lock, each file checked against its SHA-256; then this
    # package alone, built with the locked setuptools: nothing unpinned comes from the index.
    "$venv/bin/python" -m pip install --quiet --require-hashes \
        -r "$checkout/deploy/locks/central.txt"
    "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation --upgrade "$checkout"
fi
central="$venv/bin/central-sync"
if owned && ! runuser -u central-sync -- "$central" --help >/dev/null 2>&1; then
    die "the user central-sync cannot run $central (its Python is $(readlink -f "$venv/bin/python"));" \
        "use the system's Python: apt-get install -y python3 python3-venv, remove $venv and" \
        "run this again (or name one with PYTHON=/usr/bin/python3.11)"
fi

# --- Mosquitto: configuration, accounts folder, certificates ---------------------------------
install -d -m 0755 "$root/etc/mosquitto/conf.d"
sed "s#/etc/mosquitto/edge-mlops#$accounts#g" "$checkout/deploy/mosquitto/edge-mlops.conf" \
    > "$root/etc/mosquitto/conf.d/edge-mlops.conf.tmp"
mv -f "$root/etc/mosquitto/conf.d/edge-mlops.conf.tmp" "$root/etc/mosquitto/conf.d/edge-mlops.conf"
# central-sync writes the accounts; the set-group-id bit gives every new file group mosquitto.
install -d -m 2750 "$accounts"
owned && chown central-sync:mosquitto "$accounts" && chmod 2750 "$accounts"
for name in passwd acl; do
    [ -f "$accounts/$name" ] || install -m 0640 /dev/null "$accounts/$name"
    owned && chown central-sync:mosquitto "$accounts/$name"
done
if [ ! -f "$accounts/tls/server.crt" ]; then
    say "Making a private CA and the broker's certificate for ${hosts[*]}"
    bash "$checkout/deploy/make-certs.sh" server --out "$accounts/tls" "${hosts[@]}"
fi
chmod 0755 "$accounts/tls"
owned && chgrp mosquitto "$accounts/tls/server.key"

# --- central's configuration and state -------------------------------------------------------
install -d -m 0750 "$etc" "$state"
owned && chown root:central-sync "$etc" && chown central-sync:central-sync "$state"
if [ ! -f "$etc/central-sync.yaml" ]; then
    cat > "$etc/central-sync.yaml.tmp" <<YAML
# central-sync on this plant server (written by deploy/install-central.sh; yours from now on).
# All options, commented: deploy/central-sync.example.yaml in the checkout.
central_id: central

broker:
  host: 127.0.0.1             # Mosquitto's loopback listener on this machine
  port: 1883
  username: central
  password_file: $state/keys/mqtt-password   # \`central-sync broker init\` writes it

# For a plant group, PostgreSQL: postgresql://central:\${CENTRAL_DB_PASSWORD}@db:5432/central
database_url: sqlite:///$state/central.db
artifact_dir: $state/artifacts
signing_key_path: $state/keys/signing.key

provisioning:                 # \`central-sync device add|rotate|remove\`
  password_file: $accounts/passwd
  acl_file: $accounts/acl
  bundle_dir: $state/bundles
  gateway_broker_host: ${hosts[0]}
  gateway_broker_port: 8883
  ca_file: $accounts/tls/ca.crt

web:
  host: 127.0.0.1             # put a TLS reverse proxy in front to open it to the plant
  port: 8000
YAML
    install -m 0640 "$etc/central-sync.yaml.tmp" "$etc/central-sync.yaml"
    rm -f "$etc/central-sync.yaml.tmp"
    owned && chown root:central-sync "$etc/central-sync.yaml"
fi
as_central=()
owned && as_central=(runuser -u central-sync --)
config="$etc/central-sync.yaml"
if [ ! -f "$state/keys/signing.key" ]; then
    say "Creating central's signing key"
    "${as_central[@]}" "$central" keys init -c "$config"
fi
if [ ! -f "$state/keys/mqtt-password" ]; then
    say "Creating central's broker login"
    "${as_central[@]}" "$central" broker init -c "$config" --by install-central
fi

# --- services --------------------------------------------------------------------------------
install -d -m 0755 "$units"
sed "s#^ExecStart=/opt/central-sync/bin/central-sync #ExecStart=$central #" \
    "$checkout/deploy/systemd/central-sync.service" > "$units/central-sync.service"
cp "$checkout/deploy/systemd/mosquitto-accounts.path" "$checkout/deploy/systemd/mosquitto-accounts.service" "$units/"
chmod 0644 "$units/central-sync.service" "$units"/mosquitto-accounts.*

say "Installed central-sync"
echo "  config:   $config"
echo "  state:    $state"
echo "  broker:   $root/etc/mosquitto/conf.d/edge-mlops.conf (TLS 8883; accounts in $accounts)"
echo "  CA:       $accounts/tls/ca.crt goes into every device bundle; keep ca.key offline"
if [ "$start" = yes ] && owned && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now mosquitto-accounts.path
    systemctl restart mosquitto
    systemctl enable central-sync
    systemctl restart central-sync
    echo "  started mosquitto and central-sync: journalctl -u central-sync -f"
elif owned; then
    echo "  systemd is not running here; start Mosquitto and central with:"
    echo "  mosquitto -c /etc/mosquitto/mosquitto.conf -d && runuser -u central-sync -- $central serve -c $config"
else
    echo "  staged under $root; run: $central serve -c $config"
fi
echo "  next: $central users add admin --role admin -c $config"
echo "        $central device add GATEWAY_ID --labels LINE -c $config"
