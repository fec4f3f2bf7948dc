// Slow links for `dion local --link_rate / --link_delay` (docs/worker.md, "Slow links"): each
// worker runs in a network namespace of its own, joined to the root namespace by a veth pair
// whose two ends are shaped with the kernel's token bucket (tc tbf; egress on each end, so
// both directions have the rate), and reaches the shards only through a LinkRelay in the root
// namespace listening on its veth's root-side address, which adds the one-way delay.
//
// Names and addresses: a run takes the lowest free slot s in [0, 512) (an flock on
// /run/dion-links/slot-<s>.lock, held for the run's life, released by the kernel when the run
// dies); worker j of slot s gets the namespace dion-link-<s>-w<j> and the veths dl<s>w<j>h
// (root side) and dl<s>w<j>n, with the addresses of LinkAddress in 198.18.0.0/15 (the range
// RFC 2544 reserves for benchmarks), so a run touches no address of the machine's networks. Leftovers of a run that died (namespaces and veths of a slot nobody holds) are
// removed when the next run starts.
//
// Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's `ip` and `tc`.
//
// Thread-safety: none; the supervisor's thread owns it (the relay moves bytes on its own
// thread).
#ifndef DION_WORKER_LOCAL_WORKER_LINKS_H_
#define DION_WORKER_LOCAL_WORKER_LINKS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "worker/local/link_relay.h"
#include "worker/local/process.h"

namespace dion {

struct LinkSpec {
  int64_t rate_bits = 0;  // per direction, bits/s; 0: not limited
  absl::Duration delay;   // one-way, added in each direction
  bool enabled() const { return rate_bits > 0 || delay > absl::ZeroDuration(); }
};

// "20mbit", "100mbit", "1gbit", "500kbit", "64000bit" or a plain number of bits/s (decimal
// units, as tc's); "" or "0": 0 (not limited). InvalidArgument otherwise, and for a rate
// outside [64kbit, 40gbit].
absl::StatusOr<int64_t> ParseLinkRate(absl::string_view text);

// "100mbit", "1.5gbit": the rate in the largest unit it is a whole multiple of, else mbit.
std::string FormatLinkRate(int64_t rate_bits);

// The IPv4 address of worker `worker`'s veth in slot `slot`: the root side when `root_side`,
// else the namespace's side (a /30 per worker: 198.<18 + slot/256>.<slot%256>.<4 worker + 1|2>).
std::string LinkAddress(int slot, int worker, bool root_side);

// OK when this process can create links: root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's
// `ip` and `tc`; else FailedPrecondition saying what is missing and what to do.
absl::Status CheckLinkPrerequisites();

class WorkerLinks {
 public:
  static constexpr int kMaxWorkers = 64;  // /30 subnets in a slot's /24

  // Creates the namespaces and shaped veths of `workers` workers (after removing leftovers of
  // dead runs) and starts the relay: worker j reaches shard i at ShardAddresses(j)[i], which
  // leads to `shard_addresses[i]` (loopback, "127.0.0.1:port"). FailedPrecondition saying what
  // to do when not root or `ip` / `tc` is missing, or for a shard address not on loopback;
  // Internal with the failing command and its output otherwise (what was created is removed).
  static absl::StatusOr<std::unique_ptr<WorkerLinks>> Create(
      int workers, const LinkSpec& spec, const std::vector<std::string>& shard_addresses);
  // Stops the relay and removes the veths and namespaces.
  ~WorkerLinks();
  WorkerLinks(const WorkerLinks&) = delete;
  WorkerLinks& operator=(const WorkerLinks&) = delete;

  std::vector<std::string> ShardAddresses(int worker) const;
  // Makes `child` (worker j's dion-worker) run in worker j's namespace, through
  // `ip netns exec`, which execs it (the pid stays the worker's), and verify the shards'
  // certificate for localhost (worker/local/local_security.h), not for the veth's address.
  void PutBehindLink(int worker, ChildSpec* child) const;
  // argv prefix that runs a command in worker j's namespace: {"<ip>", "netns", "exec", ns}.
  std::vector<std::string> ExecPrefix(int worker) const;
  std::string Namespace(int worker) const;
  // "links: 4 workers, 100mbit each way, 10ms one-way delay (namespaces dion-link-0-w*)".
  std::string Describe() const;
  // One line per worker, each starting with `prefix`: the bytes sent and received so far.
  std::string ByteReport(const std::string& prefix) const;
  int slot() const { return slot_; }
  const LinkSpec& spec() const { return spec_; }

  // Bytes worker j sent to the shards and received from them through the relay so far.
  int64_t bytes_sent(int worker) const { return relay_ ? relay_->bytes_to_target(worker) : 0; }
  int64_t bytes_received(int worker) const {
    return relay_ ? relay_->bytes_from_target(worker) : 0;
  }

 private:
  WorkerLinks(int workers, const LinkSpec& spec, std::string ip, std::string tc, int slot,
              int lock_fd);
  absl::Status AddLink(int worker);
  absl::Status StartRelay(const std::vector<std::string>& shard_addresses);

  const int workers_;
  const LinkSpec spec_;
  const std::string ip_;
  const std::string tc_;
  const int slot_;
  const int lock_fd_;
  std::vector<std::string> shard_ports_;  // by shard, after StartRelay
  std::unique_ptr<LinkRelay> relay_;
};

}  // namespace dion

#endif  // DION_WORKER_LOCAL_WORKER_LINKS_H_
