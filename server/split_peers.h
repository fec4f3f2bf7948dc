// What a shard needs from the other owners of the split parameters it holds rows of
// (docs/server.md, "Split parameters"): a RowReducer for its part of each step, and, on the
// leader (owner 0), a way to make every follower take the step of a batch it closed. The gRPC
// implementation is server/peer/grpc_split_peers.h; tests may substitute their own.
//
// Thread-safety: implementations are safe for concurrent use.
#ifndef DION_SERVER_SPLIT_PEERS_H_
#define DION_SERVER_SPLIT_PEERS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "common/row_reduce.h"
#include "server/batcher.h"
#include "server/parameter_store.h"

namespace dion {

// The sum of one reduction of a step, as every owner received it (peer.proto StepSum).
struct StepSum {
  std::string tag;
  Matrix value;
};

// The leader's command to its followers: fold exactly `batch`'s members (staged on each
// follower) into their rows of M, and take the step producing version batch.version + 1.
struct StepRowsCommand {
  LoggedBatch batch;     // parameter, the version the batch applies to, members and weights
  int32_t attempt = 0;   // 0, 1, ...: a retry's reductions are new ones (ReduceKey::attempt)
  double lr_scale = 1.0; // the leader's learning-rate schedule factor for this step
  // Take no step; answer the version and the latest step's sums (a restarted leader's
  // question, docs/server.md "Split parameters").
  bool query = false;
  // Non-empty: the step's sums in call order, known already; the follower takes the step with
  // them and reduces nothing.
  std::vector<StepSum> sums;
};

// A follower's answer.
struct StepRowsReply {
  int64_t version = 0;    // its rows' version after the step (a query: its version)
  uint64_t checksum = 0;  // of its rows
  // The sums of the step that produced `version` when the follower holds them (it took that
  // step itself, as its latest); else empty.
  std::vector<StepSum> sums;
};

// Commands sent to the followers, answered in the background.
class FollowerSteps {
 public:
  virtual ~FollowerSteps() = default;
  // Waits for every follower's answer; the first error (naming the follower's shard), or OK.
  virtual absl::Status Wait() = 0;
  // Waits, then every follower's answer in owner order (owner 1 first).
  virtual std::vector<absl::StatusOr<StepRowsReply>> Replies() = 0;
};

class SplitPeers {
 public:
  virtual ~SplitPeers() = default;
  // This shard's reducer for `attempt` of the step that produces `step` of `parameter`.
  virtual std::unique_ptr<RowReducer> Reducer(const std::string& parameter, int64_t step,
                                              int32_t attempt,
                                              const SplitOwnership& split) = 0;
  // Sends `command` to every owner of `split` but owner 0 (this shard, the leader) at once.
  virtual std::unique_ptr<FollowerSteps> StartFollowers(const StepRowsCommand& command,
                                                        const SplitOwnership& split) = 0;
};

}  // namespace dion

#endif  // DION_SERVER_SPLIT_PEERS_H_
