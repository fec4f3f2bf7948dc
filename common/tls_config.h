// The files and names that configure TLS and bearer tokens (common/tls.h makes credentials of
// them). Plain data without gRPC types, so that worker/client/client.h can carry it.
//
// Thread-safety: plain structs.
#ifndef DION_COMMON_TLS_CONFIG_H_
#define DION_COMMON_TLS_CONFIG_H_

#include <string>

#include "absl/time/time.h"

namespace dion {

struct TlsServerConfig {
  std::string cert_file;       // the shard's certificate chain (PEM); empty: plaintext
  std::string key_file;        // its private key (PEM)
  std::string client_ca_file;  // when set: mTLS, client certificates must chain to this CA
  absl::Duration reload_interval = absl::Seconds(10);
};

struct TlsClientConfig {
  std::string ca_file;    // CA the shards' certificates must chain to; empty: plaintext
  std::string cert_file;  // client certificate for mTLS (with key_file), optional
  std::string key_file;
  // Name the shard's certificate must carry, instead of the host of the address (e.g. when
  // connecting by IP to a certificate issued for a DNS name).
  std::string server_name;
  std::string token_file;  // bearer token sent as `authorization: Bearer <token>`, optional
};

}  // namespace dion

#endif  // DION_COMMON_TLS_CONFIG_H_
