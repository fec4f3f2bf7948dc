// The warning dion-server prints when it serves plaintext gRPC on an address other machines
// can reach (docs/server.md, "Security").
//
// Thread-safety: a pure function.
#ifndef DION_SERVER_PLAINTEXT_WARNING_H_
#define DION_SERVER_PLAINTEXT_WARNING_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace dion {

// Whether the host of `listen` ("host:port", "[v6]:port") is a loopback address: localhost,
// 127.0.0.0/8 or ::1. Anything else (0.0.0.0, [::], a name, an interface address) is not.
bool IsLoopbackListenAddress(absl::string_view listen);

// The warning for serving `listen` without TLS, saying what to set; nullopt with TLS or on a
// loopback address.
std::optional<std::string> PlaintextWarning(absl::string_view listen, bool tls);

}  // namespace dion

#endif  // DION_SERVER_PLAINTEXT_WARNING_H_
