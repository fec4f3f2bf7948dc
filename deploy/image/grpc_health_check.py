#!/usr/bin/python3
"""A minimal gRPC health probe: grpc.health.v1.Health/Check against host:port.

  grpc_health_check.py HOST:PORT [--service NAME] [--timeout SECONDS] [--wait SECONDS]
                      [--ca FILE [--server_name NAME] [--cert FILE --key FILE]]

Prints the serving status and exits 0 when it is SERVING, 1 otherwise (NOT_SERVING, an
unknown service, no answer within --wait seconds of retries, or a TLS handshake that fails).
The same check as a Kubernetes native grpc probe or grpc_health_probe (which Debian does not
package), and unlike the native probe it speaks TLS: with --ca it connects over TLS, trusts
only the CA certificates of that PEM file and checks that the server's certificate is valid for
--server_name (default: HOST); --cert and --key present a client certificate, for a shard
that requires one (dion-server --tls_client_ca_file). The health service needs no bearer token
(docs/deploy.md, "TLS and tokens"). Files are read at each run, so a rotated certificate is used
by the next probe.

Needs only python3-grpcio (Debian package): the two messages are encoded by hand, so no
generated health_pb2 or grpcio-health-checking is required.
  HealthCheckRequest  { string service = 1; }
  HealthCheckResponse { ServingStatus status = 1; }  UNKNOWN=0 SERVING=1 NOT_SERVING=2
                                                      SERVICE_UNKNOWN=3
"""
import argparse
import sys
import time

import grpc

STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_request(service):
    data = service.encode()
    if not data:
        return b""
    if len(data) > 127:
        raise ValueError("service name longer than 127 bytes")
    return b"\x0a" + bytes([len(data)]) + data


def decode_status(payload):
    """The varint of field 1 (status); 0 (UNKNOWN) when absent, as proto3 defines."""
    i = 0
    while i < len(payload):
        key = payload[i]
        i += 1
        value, shift = 0, 0
        while True:
            byte = payload[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if key == 0x08:
            return value
        if key & 0x07 != 0:  # only varint fields are expected in this message
            raise ValueError(f"unexpected wire type in HealthCheckResponse: key {key:#x}")
    return 0


def read(path):
    with open(path, "rb") as f:
        return f.read()


def open_channel(target, ca, cert, key, server_name):
    if ca is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key) if key else None,
        certificate_chain=read(cert) if cert else None)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def check(channel, service, timeout):
    with channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=lambda x: x,
                                   response_deserializer=lambda x: x)
        return decode_status(call(encode_request(service), timeout=timeout))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--service", default="")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--wait", type=float, default=0.0,
                        help="keep retrying for this long while there is no answer")
    parser.add_argument("--ca", help="PEM file of the CA certificates to trust: connect with TLS")
    parser.add_argument("--server_name",
                        help="name the server's certificate must be valid for (default: HOST)")
    parser.add_argument("--cert", help="PEM client certificate chain (with --key and --ca)")
    parser.add_argument("--key", help="PEM private key of --cert")
    args = parser.parse_args()
    if (args.cert is None) != (args.key is None) or (args.cert or args.server_name) and not args.ca:
        parser.error("--cert and --key go together, and --cert, --key and --server_name need --ca")
    deadline = time.monotonic() + args.wait
    while True:
        try:
            channel = open_channel(args.target, args.ca, args.cert, args.key, args.server_name)
            status = check(channel, args.service, args.timeout)
            print(f"{args.target}: {STATUS.get(status, status)}")
            return 0 if status == 1 else 1
        except OSError as e:  # an unreadable --ca, --cert or --key: no retry helps
            print(f"{args.target}: {e}")
            return 1
        except grpc.RpcError as e:
            if time.monotonic() >= deadline:
                print(f"{args.target}: no answer: {e.code().name}: {e.details()}")
                return 1
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
