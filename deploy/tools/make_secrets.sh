#!/usr/bin/env bash
# Makes the files of the two Secrets deploy/k8s mounts, by hand (no cert-manager), with the
# openssl command (docs/deploy.md, "TLS and tokens"):
#
#   deploy/tools/make_secrets.sh OUT_DIR [SERVICE]
#
# OUT_DIR/ca.crt, ca.key   a new CA (ECDSA P-256, 10 years). Keep ca.key off the cluster: it
#                          signs the next shard certificate when this one is renewed.
# OUT_DIR/tls.crt, tls.key the shards' certificate (ECDSA P-256, 90 days), signed by that CA,
#                          for server and client authentication, valid for the name SERVICE
#                          (default dion-ps), which workers check with --tls_server_name: one
#                          certificate for every shard, and gRPC accepts no wildcard over a
#                          one-label name (*.dion-ps would not cover dion-ps-0.dion-ps).
# OUT_DIR/client.crt, client.key
#                          the workers' and `dion checkpoint`'s client certificate (client
#                          authentication only, 90 days, same CA), for the Secret
#                          dion-client-tls of deploy/k8s/components/mtls (optional mTLS).
# OUT_DIR/tokens           dion-server --auth_tokens_file: one `<token> <role> <name>` a line.
# OUT_DIR/worker-token, admin-token, reader-token, peer-token
#                          one token each (no newline), for dion-worker and `dion checkpoint`
#                          --token_file and the shards' --peer_token_file; 256 random bits
#                          each, hex.
# With an existing OUT_DIR/ca.crt and ca.key the CA is kept and only the certificates are
# renewed; existing token files are kept too (rotation: docs/deploy.md). The files are created
# mode 600. Prints the kubectl commands that make the Secrets from them.
set -euo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '2,25p' "$0" >&2; exit 2; }
out="$1" service="${2:-dion-ps}"
command -v openssl >/dev/null || { echo "make_secrets: openssl not found" >&2; exit 1; }
mkdir -p "$out"
umask 077
cd "$out"

if [ ! -f ca.crt ] || [ ! -f ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc -days 3650 \
    -keyout ca.key -out ca.crt -subj "/CN=dion-ps CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "make_secrets: new CA $out/ca.crt"
fi

certificate() {  # name (file prefix), subject CN, extended key usage, extra extension line
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=$3" "$4" > "$1.ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc \
    -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
  echo "make_secrets: certificate $out/$1.crt for $2 ($3)," \
       "valid until $(openssl x509 -in "$1.crt" -noout -enddate | cut -d= -f2)"
}
certificate tls "$service" serverAuth,clientAuth "subjectAltName=DNS:$service"
certificate client "$service-client" clientAuth ""

for role in worker admin reader peer; do
  if [ ! -s "$role-token" ]; then
    printf '%s' "$(openssl rand -hex 32)" > "$role-token"
  fi
done
if [ ! -s tokens ]; then
  {
    echo "# dion-server --auth_tokens_file: <token> <role> [<name>]; roles worker, reader, admin, peer."
    for role in worker admin reader peer; do
      echo "$(cat "$role-token") $role $role"
    done
  } > tokens
fi

cat <<EOF
make_secrets: files in $out. Create the Secrets in the job's namespace (NS):
  kubectl -n NS create secret generic dion-tls --from-file=$out/tls.crt \\
      --from-file=$out/tls.key --from-file=$out/ca.crt
  kubectl -n NS create secret generic dion-tokens --from-file=$out/tokens \\
      --from-file=$out/worker-token --from-file=$out/admin-token --from-file=$out/reader-token \\
      --from-file=$out/peer-token
and, with client certificates (deploy/k8s/components/mtls):
  kubectl -n NS create secret generic dion-client-tls --from-file=tls.crt=$out/client.crt \\
      --from-file=tls.key=$out/client.key
(to replace existing ones: add --dry-run=client -o yaml | kubectl apply -f -)
EOF
