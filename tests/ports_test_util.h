// Loopback ports for tests that start shards knowing each other's addresses
// (--peer_addresses): ReserveLoopbackPorts (common/loopback_ports.h), failing the test when
// none can be reserved. Thread-safety: a plain function.
#ifndef DION_TESTS_PORTS_TEST_UTIL_H_
#define DION_TESTS_PORTS_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <vector>

#include "absl/status/statusor.h"
#include "common/loopback_ports.h"

namespace dion::testing {

// `n` distinct free ports on 127.0.0.1, released for the shards; empty (and the test failed)
// when they cannot be reserved.
inline std::vector<int> ReservePorts(int n) {
  absl::StatusOr<std::vector<int>> ports = ReserveLoopbackPorts(n);
  EXPECT_TRUE(ports.ok()) << ports.status();
  return ports.ok() ? *std::move(ports) : std::vector<int>();
}

}  // namespace dion::testing

#endif  // DION_TESTS_PORTS_TEST_UTIL_H_
