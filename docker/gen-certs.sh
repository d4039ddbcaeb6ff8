#!/bin/sh
# Makes what a TLS + token deployment of the Python worker needs, in OUT_DIR:
#   ca.pem, ca.key          a private certificate authority (keep ca.key off the worker hosts)
#   worker.pem, worker.key  the worker's server certificate, valid for the NAMEs given
#   client.pem, client.key  a client certificate for mutual TLS (the TS worker, the healthcheck)
#   token                   the shared token every call carries
# Existing files are kept, so running it again (the compose `certs` job does on every start) changes nothing;
# a second GPU host needs only a new worker certificate: run it with that host's names into a copy of OUT_DIR
# that holds ca.pem/ca.key but no worker.pem.
#   docker/gen-certs.sh OUT_DIR [NAME ...]      NAMEs default to: localhost 127.0.0.1
set -eu
out=${1:?usage: gen-certs.sh OUT_DIR [NAME ...]}
shift
[ $# -gt 0 ] || set -- localhost 127.0.0.1
mkdir -p "$out"
cd "$out"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
serial() { echo "0x$(openssl rand -hex 16)"; }

# sign NAME KEY CSR_SUBJECT EXTFILE DAYS: a certificate for KEY signed by the CA.
sign() {
  openssl req -new -key "$2" -subj "$3" -out "$tmp/req.csr"
  openssl x509 -req -in "$tmp/req.csr" -CA ca.pem -CAkey ca.key -set_serial "$(serial)" \
    -days "$5" -extfile "$4" -out "$1" 2>/dev/null
}

if [ ! -f ca.pem ]; then
  newkey ca.key
  openssl req -x509 -new -key ca.key -subj "/CN=vlmflow worker CA" -days 3650 -set_serial "$(serial)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
fi

if [ ! -f worker.pem ]; then
  san=""
  for name in "$@"; do
    case "$name" in
      *[!0-9.]* | "") case "$name" in *:*) kind=IP ;; *) kind=DNS ;; esac ;;
      *) kind=IP ;;
    esac
    san="${san:+$san,}$kind:$name"
  done
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
    "$san" >"$tmp/server.ext"
  newkey worker.key
  sign worker.pem worker.key "/CN=$1" "$tmp/server.ext" 825
fi

if [ ! -f client.pem ]; then
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$tmp/client.ext"
  newkey client.key
  sign client.pem client.key "/CN=vlmflow-ts-worker" "$tmp/client.ext" 825
fi

[ -f token ] || openssl rand -hex 32 >token
chmod 600 ./*.key token
chmod 644 ./*.pem
echo "gen-certs: $out is ready (ca.pem, worker.pem/.key, client.pem/.key, token)"
