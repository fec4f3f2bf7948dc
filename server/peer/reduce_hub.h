// The gathering point of the reductions a shard leads: owner 0 of a row-split parameter leads
// its reductions (docs/server.md, "Peers"). Each owner's part arrives here, the leader's own in
// process and the others' through ShardPeer.Reduce (proto/dion/v1/peer.proto); a reduction,
// named by (parameter, step, round), completes when all `owners` parts arrived. Its sum is
// the parts added in owner order in double precision and rounded to float once, and every
// waiter receives the same matrix.
//
// Failures reach every waiter of the reduction: a part whose shape, tag or owner count
// disagrees with the others is INVALID_ARGUMENT naming what was expected; a part above
// max_part_bytes is RESOURCE_EXHAUSTED; a reduction not complete by the earliest deadline of
// its waiters is DEADLINE_EXCEEDED naming the owners whose parts were missing; Shutdown is
// UNAVAILABLE. More than max_pending reductions (or max_pending_bytes of parts) pending is
// RESOURCE_EXHAUSTED. A part for a reduction that already finished is FAILED_PRECONDITION
// (completed: a part arrived twice) or ABORTED (failed: the message says why): the hub
// remembers the last `finished_memory` finished reductions, so a late part cannot start a
// reduction that would never complete. Nothing waits past its deadline (except for the one
// summation of a reduction whose parts all arrived, which is bounded).
//
// Replays. The sums of each parameter's latest step (every round of its latest attempt to
// complete one) stay here until a reduction of another step or attempt of that parameter
// completes. An owner that sends again the very part it sent to such a reduction (same
// owner, tag, shape and bits) gets the same sum back instead of FAILED_PRECONDITION: a
// follower whose answer was lost after the leader completed the step takes that step again
// and ends where the others did (docs/server.md, "Split parameters"). This keeps at most one
// step's sums per split parameter: (r^2 + n r) floats per Cholesky QR pass.
//
// Thread-safety: safe for concurrent use; Submit blocks its caller until the reduction ends.
#ifndef DION_SERVER_PEER_REDUCE_HUB_H_
#define DION_SERVER_PEER_REDUCE_HUB_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/matrix.h"
#include "common/mutex.h"

namespace dion {

// One reduction: a step's round of one split parameter.
struct ReduceKey {
  std::string parameter;
  int64_t step = 0;   // the version the step produces
  int32_t round = 0;  // 0, 1, 2, ... in call order within the step
  int32_t attempt = 0;  // a retried step's reductions are new ones

  bool operator==(const ReduceKey& other) const {
    return step == other.step && round == other.round && attempt == other.attempt &&
           parameter == other.parameter;
  }
  template <typename H>
  friend H AbslHashValue(H h, const ReduceKey& key) {
    return H::combine(std::move(h), key.parameter, key.step, key.round, key.attempt);
  }
};

// "parameter 'w1' step 7 round 2" (", attempt 1" for a retry) for messages.
std::string DescribeKey(const ReduceKey& key);

// One owner's part of a reduction.
struct ReducePart {
  ReduceKey key;
  std::string tag;  // "gram", "sketch", "R": the same in every part of the key
  int32_t owner = 0;
  int32_t owners = 1;
  Matrix value;
};

// Limits of what a request may name (ShardPeer.Reduce says INVALID_ARGUMENT beyond them).
inline constexpr int32_t kMaxReduceOwners = 1024;
inline constexpr size_t kMaxReduceParameterBytes = 256;
inline constexpr size_t kMaxReduceTagBytes = 64;

// InvalidArgument naming the field when `part` names no valid reduction (empty or over-long
// parameter or tag, negative step or round, owners outside [1, kMaxReduceOwners], owner
// outside [0, owners), an empty value).
absl::Status ValidateReducePart(const ReducePart& part);

struct ReduceHubOptions {
  int64_t max_part_bytes = int64_t{64} << 20;       // one part's float data
  int max_pending = 64;                             // reductions gathering parts
  int64_t max_pending_bytes = int64_t{1} << 30;     // parts held by them, together
  int finished_memory = 4096;                       // finished keys remembered
};

class ReduceHub {
 public:
  explicit ReduceHub(const ReduceHubOptions& options = {}) : options_(options) {}
  ~ReduceHub();  // REQUIRES: no Submit running (Shutdown first)
  ReduceHub(const ReduceHub&) = delete;
  ReduceHub& operator=(const ReduceHub&) = delete;

  // Adds `part` to its reduction and blocks until the reduction completes (the sum) or fails
  // (the errors in the file comment), by `deadline` at the latest. Invalid parts change no
  // state.
  absl::StatusOr<std::shared_ptr<const Matrix>> Submit(ReducePart part, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Fails every pending reduction with UNAVAILABLE and refuses new parts. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  // Reductions gathering parts; the parts of `key` already here (0 when it is not pending).
  int pending() const ABSL_LOCKS_EXCLUDED(mu_);
  // Parts answered with a retained sum (Replays, in the file comment) so far.
  int64_t replays() const ABSL_LOCKS_EXCLUDED(mu_);
  int parts_arrived(const ReduceKey& key) const ABSL_LOCKS_EXCLUDED(mu_);
  const ReduceHubOptions& options() const { return options_; }

 private:
  struct Reduction;
  struct Finished {
    bool completed = false;
    absl::Status failure;  // when not completed
  };
  // A completed reduction of its parameter's latest step, for replays: the sum, and what
  // each owner sent (the tag, and WeightsChecksum of the part by owner).
  struct Retained {
    ReduceKey key;
    std::string tag;
    std::vector<uint64_t> fingerprints;
    std::shared_ptr<const Matrix> sum;
  };

  // Finds or starts the reduction of part.key and adds the part; the reduction to wait on,
  // or the error that refused the part (failing the reduction when the file comment says so).
  absl::StatusOr<std::shared_ptr<Reduction>> Join(ReducePart& part, uint64_t fingerprint,
                                                  absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The retained sum of part.key when this part is one its reduction summed; else null.
  std::shared_ptr<const Matrix> ReplayLocked(const ReducePart& part, uint64_t fingerprint)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Keeps `retained` as one of its parameter's latest sums, dropping the sums of the
  // parameter's other steps and attempts.
  void RetainLocked(Retained retained) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The status a part of the already finished `key` gets.
  absl::Status FinishedError(const ReduceKey& key, const Finished& finished, int32_t owner) const;
  // Ends `r` with `failure` for every waiter (and remembers it) when it still gathers parts.
  void FailLocked(const std::shared_ptr<Reduction>& r, absl::Status failure)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records how `key` ended (also a key refused before its reduction started), forgetting
  // the oldest beyond options_.finished_memory.
  void Remember(const ReduceKey& key, Finished finished) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes `r` from the pending set and remembers how it ended.
  void Retire(const std::shared_ptr<Reduction>& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sums the parts of `r` (all arrived) outside the lock and completes it.
  std::shared_ptr<const Matrix> Complete(const std::shared_ptr<Reduction>& r)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Waits for `r` to end; fails it with DEADLINE_EXCEEDED when its deadline passes first.
  void AwaitLocked(const std::shared_ptr<Reduction>& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const ReduceHubOptions options_;

  // State below is protected by mu_.
  mutable Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<ReduceKey, std::shared_ptr<Reduction>> pending_ ABSL_GUARDED_BY(mu_);
  int64_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<ReduceKey, Finished> finished_ ABSL_GUARDED_BY(mu_);
  std::deque<ReduceKey> finished_order_ ABSL_GUARDED_BY(mu_);  // oldest first
  // By parameter: the sums of its latest completed step and attempt (not bounded by
  // finished_memory: one step's worth per split parameter).
  absl::flat_hash_map<std::string, std::vector<Retained>> retained_ ABSL_GUARDED_BY(mu_);
  int64_t replays_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace dion

#endif  // DION_SERVER_PEER_REDUCE_HUB_H_
