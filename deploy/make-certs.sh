#!/usr/bin/env bash
# A private certificate authority for Mosquitto's TLS listeners, for a test or a small plant.
# A plant PKI can replace it: Mosquitto only needs ca.crt, server.crt and server.key, and the
# gateways ca.crt (central-sync puts it in every device bundle).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: deploy/make-certs.sh server [--out DIR] [--days N] NAME [NAME...]
       deploy/make-certs.sh client [--out DIR] [--days N] DEVICE_ID

server  Makes the CA (ca.crt, ca.key) in DIR when it is not there yet, and a server
        certificate (server.crt, server.key) for the broker's host NAMEs: DNS names or IP
        addresses the gateways use to reach it. Run it again to renew the server certificate;
        the CA stays, so gateways keep trusting it.
client  Makes DEVICE_ID.crt and DEVICE_ID.key signed by the CA in DIR, for the optional
        mutual-TLS listener (port 8884 in deploy/mosquitto/edge-mlops.conf).

Options:
  --out DIR   where the files go (default: /etc/mosquitto/edge-mlops/tls)
  --days N    validity of the new certificate (default: 825; the CA: 3650)

Examples:
  sudo deploy/make-certs.sh server plant-server.example 192.168.10.5
  deploy/make-certs.sh server --out ./tls localhost 127.0.0.1
  deploy/make-certs.sh client --out ./tls line3-gw1
USAGE
}

[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in
    -h|--help) usage; exit 0 ;;
    server|client) kind=$1; shift ;;
    *) echo "error: the first argument is server or client, not '$1' (see --help)" >&2; exit 2 ;;
esac
out=/etc/mosquitto/edge-mlops/tls
days=825
names=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?--out needs a folder}; shift 2 ;;
        --days) days=${2:?--days needs a number}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) names+=("$1"); shift ;;
    esac
done
[ ${#names[@]} -ge 1 ] || { echo "error: name the broker's host (server) or the device (client)" >&2; exit 2; }
command -v openssl >/dev/null || { echo "error: openssl is missing: sudo apt-get install -y openssl" >&2; exit 1; }

mkdir -p "$out"
umask 077
cd "$out"
if [ ! -f ca.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=edge-mlops plant CA" -keyout ca.key -out ca.crt \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
    echo "made the CA: $out/ca.crt (give gateways this) and $out/ca.key (keep it offline)"
fi

sign() {  # sign NAME EXTENSIONS: NAME.key + NAME.csr -> NAME.crt
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$3" \
        -keyout "$1.key" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
        -extfile <(printf '%s\n' "$2") -out "$1.crt" 2>/dev/null
    rm -f "$1.csr"
}

if [ "$kind" = server ]; then
    sans=()
    for name in "${names[@]}"; do
        if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then sans+=("IP:$name"); else sans+=("DNS:$name"); fi
    done
    san=$(IFS=,; echo "${sans[*]}")
    sign server "subjectAltName=$san
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature" "${names[0]}"
    chmod 644 ca.crt server.crt
    chmod 640 server.key
    # Mosquitto drops root and runs as its own user: let it read the key.
    if getent group mosquitto >/dev/null && [ "$(id -u)" -eq 0 ]; then chgrp mosquitto server.key; fi
    echo "made $out/server.crt for $san (valid $days days)"
else
    device=${names[0]}
    [[ $device =~ ^[A-Za-z0-9._-]{1,64}$ ]] || { echo "error: device id '$device': letters, digits, . _ -" >&2; exit 2; }
    sign "$device" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature" "$device"
    chmod 644 "$device.crt"
    echo "made $out/$device.crt and $device.key: copy both to the gateway as client.crt and client.key"
fi
