#include "common/tls_flags.h"

#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA certificates the shards' certificates must chain to: connect with TLS "
          "(plaintext when empty)");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM client certificate, for shards that require one (mutual TLS); with "
          "--tls_key_file and --tls_ca_file");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_server_name, "",
          "name the shards' certificates must carry, when it is not the host of their address "
          "(e.g. connecting by IP to a certificate for a DNS name)");
ABSL_FLAG(std::string, token_file, "",
          "file whose first line is the bearer token sent to the shards (only over TLS: needs "
          "--tls_ca_file); re-read when it changes");

namespace dion {

TlsClientConfig TlsClientConfigFromFlags() {
  TlsClientConfig config;
  config.ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  config.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  config.key_file = absl::GetFlag(FLAGS_tls_key_file);
  config.server_name = absl::GetFlag(FLAGS_tls_server_name);
  config.token_file = absl::GetFlag(FLAGS_token_file);
  return config;
}

}  // namespace dion
