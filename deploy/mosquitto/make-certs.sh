#!/usr/bin/env bash
# Make a self-signed CA and a server certificate for Mosquitto's TLS listener (tls.conf).
#
#   make-certs.sh DIR [HOST]...
#
# Writes DIR/ca.key, DIR/ca.crt, DIR/server.key, DIR/server.crt. The server certificate is
# valid for every HOST given (host names or IP addresses; default: this machine's host name,
# localhost and 127.0.0.1), for 825 days. Give ca.crt to the clients (--mqtt-ca-file) and
# keep ca.key offline. Keys are EC P-256, readable by their owner only.
set -euo pipefail

if [ $# -lt 1 ] || [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
dir=$1
shift
[ $# -gt 0 ] || set -- "$(hostname)" localhost 127.0.0.1
mkdir -p "$dir"
umask 077

san=""
for host in "$@"; do
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then kind=IP; else kind=DNS; fi
    san="${san:+$san,}$kind:$host"
done

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 3650 \
    -subj "/CN=chargebridge MQTT CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=$1" 2>/dev/null
ext=$(mktemp)
trap 'rm -f "$ext" "$dir/server.csr"' EXIT
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$san" >"$ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -out "$dir/server.crt" -days 825 -sha256 -extfile "$ext" 2>/dev/null
rm -f "$dir/ca.srl"
chmod 644 "$dir/ca.crt" "$dir/server.crt"
echo "make-certs.sh: CA $dir/ca.crt, server certificate $dir/server.crt for $san" >&2
