// How fast this process's uplink to its shards carries what it sends, read from the kernel
// rather than from acknowledgements (the adaptive push rank's link rate, push_rank.h).
//
// An acknowledged push measures the whole round trip: the push's bytes on the worker's uplink,
// then the shard's queue and fold, then the ack on the downlink behind every broadcast version.
// Only the first part depends on the push rank. The kernel measures exactly that part for each
// TCP connection: Linux's TCP_INFO reports `tcpi_delivery_rate`, the rate at which the peer
// acknowledged the latest flight of data this side sent (data over the longer of the flight's
// send and acknowledgement intervals). A flight that crossed the bottleneck back to back
// measures the bottleneck's rate; a small or sparse one (the sender had little to send) can
// measure less, and the first bytes after an idle spell can pass a token bucket's burst at the
// wire's speed: the push-rank controller takes a low quantile of each window and the larger of
// two windows (push_rank.h).
//
// The probe finds the process's TCP sockets connected to the shards (it lists /proc/self/fd
// and compares each socket's peer with the shards' resolved addresses, an IPv4 one also in its
// v4-mapped IPv6 form, as gRPC's dual-stack sockets report it: gRPC does not hand out its
// sockets) and, at each Sample, returns the delivery rates of the connections that
// delivered new bytes since the last Sample. Sockets are looked up again when a connection is
// replaced (a reconnect) and at most once per kRescanInterval otherwise.
//
// Linux only; elsewhere, or when no socket matches, Sample returns nothing and available()
// says why.
//
// Thread-safety: safe for concurrent use (one leaf lock).
#ifndef DION_WORKER_UPLINK_PROBE_H_
#define DION_WORKER_UPLINK_PROBE_H_

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/mutex.h"

namespace dion {

inline constexpr absl::Duration kRescanInterval = absl::Seconds(1);

struct DeliverySample {
  double bytes_per_second = 0;  // tcpi_delivery_rate
  uint64_t bytes_acked = 0;     // tcpi_bytes_acked: everything the peer acknowledged so far
};

// The kernel's view of TCP socket `fd`; an error when it is not a TCP socket (or not Linux).
absl::Status ReadDeliverySample(int fd, DeliverySample* sample);

class UplinkProbe {
 public:
  // `peers`: "host:port" as the links dial them (names are resolved here, once; "ipv4:" and
  // "ipv6:" prefixes and bracketed IPv6 hosts are understood). Peers that do not resolve are
  // left out.
  explicit UplinkProbe(const std::vector<std::string>& peers);

  // The delivery rates (bytes/s) of the connections that delivered new bytes since the last
  // call; empty when none did.
  std::vector<double> Sample(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether any peer resolved and, after the first Sample, whether a socket was found.
  absl::Status available() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Peer {
    sockaddr_storage address{};
    socklen_t length = 0;
  };
  struct Tracked {
    int fd = -1;
    uint64_t bytes_acked = 0;
  };
  bool IsPeer(int fd) const;
  void Rescan() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::vector<Peer> peers_;  // immutable after construction
  mutable Mutex mu_;
  std::vector<Tracked> tracked_ ABSL_GUARDED_BY(mu_);
  absl::Time last_scan_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool scanned_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace dion

#endif  // DION_WORKER_UPLINK_PROBE_H_
