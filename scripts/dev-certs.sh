#!/usr/bin/env bash
# Makes a private CA and a server certificate for localhost and 127.0.0.1 (plus any names
# given), for trying automl's TLS on one machine: scripts/dev-certs.sh DIR [NAME...]
# Writes DIR/ca.crt (what clients trust: tls.ca_file, grpcurl -cacert, AUTOML_CA_FILE),
# DIR/server.crt and DIR/server.key (tls.cert_file, tls.key_file). Needs openssl.
set -euo pipefail
dir=${1:?usage: scripts/dev-certs.sh DIR [NAME...]}
shift
mkdir -p "$dir"
san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do san="$san,DNS:$name"; done
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=automl dev CA" \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$san" >"$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 30 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
chmod 600 "$dir/server.key" "$dir/ca.key"
echo "$dir/ca.crt $dir/server.crt $dir/server.key"
