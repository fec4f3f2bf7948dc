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
# OUT_DIR/tokens           dion-server --auth_tokens_file: one `<token> <role> <name>` a line.
# OUT_DIR/worker-token, admin-token, reader-token
#                          one token each (no newline), for dion-worker and `dion checkpoint`
#                          --token_file; 256 random bits each, hex.
# With an existing OUT_DIR/ca.crt and ca.key the CA is kept and only the certificate is
# renewed; existing token files are kept too (rotation: docs/deploy.md). The files are created
# mode 600. Prints the kubectl commands that make the Secrets from them.
set -euo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
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

cat > tls.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:$service
EOF
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc \
  -keyout tls.key -out tls.csr -subj "/CN=$service" 2>/dev/null
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 \
  -extfile tls.ext -out tls.crt 2>/dev/null
rm -f tls.csr tls.ext
echo "make_secrets: certificate $out/tls.crt for $service," \
     "valid until $(openssl x509 -in tls.crt -noout -enddate | cut -d= -f2)"

for role in worker admin reader; do
  if [ ! -s "$role-token" ]; then
    printf '%s' "$(openssl rand -hex 32)" > "$role-token"
  fi
done
if [ ! -s tokens ]; then
  {
    echo "# dion-server --auth_tokens_file: <token> <role> [<name>]; roles worker, reader, admin."
    for role in worker admin reader; do
      echo "$(cat "$role-token") $role $role"
    done
  } > tokens
fi

cat <<EOF
make_secrets: files in $out. Create the Secrets in the job's namespace (NS):
  kubectl -n NS create secret generic dion-tls --from-file=$out/tls.crt \\
      --from-file=$out/tls.key --from-file=$out/ca.crt
  kubectl -n NS create secret generic dion-tokens --from-file=$out/tokens \\
      --from-file=$out/worker-token --from-file=$out/admin-token --from-file=$out/reader-token
(to replace existing ones: add --dry-run=client -o yaml | kubectl apply -f -)
EOF
