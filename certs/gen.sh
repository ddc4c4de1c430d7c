#!/bin/sh
# Development PKI for dataloom's TLS and WSS listeners (`make certs`): a CA, a server
# certificate for localhost and 127.0.0.1, and a client certificate for mutual TLS.
# Keeps an existing CA (so clients that trust it keep working) and re-issues the rest.
# Usage: certs/gen.sh [DIR] (default: the directory of this script). Never commit the output.
set -eu

dir=${1:-$(dirname "$0")}
days=${CERT_DAYS:-825}
command -v openssl >/dev/null 2>&1 || {
    echo "make certs needs the openssl command line tool (apt-get install openssl)" >&2
    exit 1
}
mkdir -p "$dir"
cd "$dir"
umask 077

ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"

if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
    # shellcheck disable=SC2086
    openssl req -x509 $ec -days 3650 -subj "/CN=dataloom development CA" \
        -keyout ca.key -out ca.pem \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    echo "created $dir/ca.pem (CA certificate) and $dir/ca.key"
fi

issue() { # name subject extendedKeyUsage [subjectAltName]
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' "$3" > "$1.ext"
    [ -n "${4:-}" ] && printf 'subjectAltName=%s\n' "$4" >> "$1.ext"
    # shellcheck disable=SC2086
    openssl req $ec -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
    echo "created $dir/$1.pem and $dir/$1.key"
}

issue server "/CN=localhost" serverAuth "DNS:localhost,IP:127.0.0.1,IP:::1"
issue client "/CN=dev-client" clientAuth
chmod 644 ca.pem server.pem client.pem
