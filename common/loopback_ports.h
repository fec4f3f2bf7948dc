// Free TCP ports on 127.0.0.1 for processes that must know each other's addresses before any
// of them starts (dion-server --peer_addresses: the shards of `dion local` and of the tests).
//
// Thread-safety: a plain function.
#ifndef DION_COMMON_LOOPBACK_PORTS_H_
#define DION_COMMON_LOOPBACK_PORTS_H_

#include <vector>

#include "absl/status/statusor.h"

namespace dion {

// `n` distinct free ports on 127.0.0.1: bound together, so that the kernel hands out distinct
// ones, then released for their users to bind (something else may take one meanwhile, which
// a quiet machine does not). Unavailable naming the port and the system's error when one
// cannot be bound; nothing stays open either way.
absl::StatusOr<std::vector<int>> ReserveLoopbackPorts(int n);

}  // namespace dion

#endif  // DION_COMMON_LOOPBACK_PORTS_H_
