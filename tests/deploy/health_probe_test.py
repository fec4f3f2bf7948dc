#!/usr/bin/python3
"""deploy/image/grpc_health_check.py, the shards' exec probe in deploy/k8s, over TLS (ctest
deploy_health_probe).

  health_probe_test.py --source_root DIR

Makes the Secrets' files with deploy/tools/make_secrets.sh (twice: a second, foreign CA),
serves grpc.health.v1.Health/Check on 127.0.0.1 from this process (Python gRPC, plaintext,
TLS, TLS requiring client certificates) and runs the probe as the kubelet would, checking its
exit code: SERVING through TLS with the right CA and the Service name the certificate is for,
and a failure for a foreign CA, a name the certificate does not cover (a shard's own name:
hence --tls_server_name=dion-ps on the workers), plaintext against TLS, a missing or foreign
client certificate when one is required, a server presenting the client-only certificate, and
NOT_SERVING. Needs python3-grpcio and the openssl
command; ~5 s idle, ~20 s on a loaded machine.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from concurrent import futures

import grpc

SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"  # HealthCheckResponse{status}


class HealthServer:
    """A grpc.health.v1 server on 127.0.0.1 answering `status` to every Check."""

    def __init__(self, status, credentials=None):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: status)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler}),))
        address = "127.0.0.1:0"
        self.port = (self.server.add_secure_port(address, credentials) if credentials
                     else self.server.add_insecure_port(address))
        self.server.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.stop(None)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source_root", required=True)
    args = parser.parse_args()
    probe = os.path.join(args.source_root, "deploy/image/grpc_health_check.py")
    make = os.path.join(args.source_root, "deploy/tools/make_secrets.sh")
    failures = []

    with tempfile.TemporaryDirectory() as tmp:
        ours, foreign = os.path.join(tmp, "ours"), os.path.join(tmp, "foreign")
        for d in (ours, foreign):
            subprocess.run(["bash", make, d], check=True, capture_output=True, timeout=60)
        f = lambda name: os.path.join(ours, name)  # noqa: E731
        ca, crt, key = f("ca.crt"), f("tls.crt"), f("tls.key")
        pair = [(read(key), read(crt))]
        tls = grpc.ssl_server_credentials(pair)
        mtls = grpc.ssl_server_credentials(pair, root_certificates=read(ca),
                                           require_client_auth=True)

        def expect(what, server, expected, *options):
            run = subprocess.run([sys.executable, probe, f"127.0.0.1:{server.port}",
                                  "--timeout=3", *options],
                                 capture_output=True, text=True, timeout=30)
            ok = run.returncode == expected
            print(f"{'ok  ' if ok else 'FAIL'} {what}: exit {run.returncode} "
                  f"(expected {expected}): {(run.stdout + run.stderr).strip()}")
            if not ok:
                failures.append(what)

        with HealthServer(SERVING) as s:
            expect("plaintext probe, plaintext server", s, 0)
            expect("TLS probe, plaintext server", s, 1, f"--ca={ca}", "--server_name=dion-ps")
        with HealthServer(SERVING, tls) as s:
            expect("TLS, our CA, the Service name", s, 0, f"--ca={ca}", "--server_name=dion-ps")
            expect("TLS, our CA, a shard's name (not in the certificate)", s, 1, f"--ca={ca}",
                   "--server_name=dion-ps-3.dion-ps")
            expect("TLS, a foreign CA", s, 1, f"--ca={os.path.join(foreign, 'ca.crt')}",
                   "--server_name=dion-ps")
            expect("plaintext probe, TLS server", s, 1)
            expect("TLS, --cert without --key (usage error)", s, 2, f"--ca={ca}", f"--cert={crt}")
        with HealthServer(SERVING, mtls) as s:
            expect("mTLS server, no client certificate", s, 1, f"--ca={ca}",
                   "--server_name=dion-ps")
            expect("mTLS server, the shard's certificate as client certificate", s, 0,
                   f"--ca={ca}", "--server_name=dion-ps", f"--cert={crt}", f"--key={key}")
            expect("mTLS server, the workers' client certificate", s, 0, f"--ca={ca}",
                   "--server_name=dion-ps", f"--cert={f('client.crt')}",
                   f"--key={f('client.key')}")
            expect("mTLS server, a foreign client certificate", s, 1, f"--ca={ca}",
                   "--server_name=dion-ps", f"--cert={os.path.join(foreign, 'tls.crt')}",
                   f"--key={os.path.join(foreign, 'tls.key')}")
        client_pair = [(read(f("client.key")), read(f("client.crt")))]
        with HealthServer(SERVING, grpc.ssl_server_credentials(client_pair)) as s:
            expect("TLS, a server presenting the client-only certificate", s, 1, f"--ca={ca}",
                   "--server_name=dion-ps-client")
        with HealthServer(NOT_SERVING, tls) as s:
            expect("TLS, NOT_SERVING", s, 1, f"--ca={ca}", "--server_name=dion-ps")

    if failures:
        print(f"FAIL {len(failures)} cases: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
