// The command-line flags of a client's TLS and bearer token, shared by dion-worker and `dion`
// (its checkpoint driver and the children `dion local` starts):
//   --tls_ca_file, --tls_cert_file, --tls_key_file, --tls_server_name, --token_file.
//
// Thread-safety: read the flags after parsing, from any thread.
#ifndef DION_COMMON_TLS_FLAGS_H_
#define DION_COMMON_TLS_FLAGS_H_

#include "common/tls_config.h"

namespace dion {

TlsClientConfig TlsClientConfigFromFlags();

}  // namespace dion

#endif  // DION_COMMON_TLS_FLAGS_H_
