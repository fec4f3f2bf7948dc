// RowReducer (common/row_reduce.h) between shards over gRPC: one owner's step of one row-split
// parameter. Owner 0 leads: its reducer submits its part to this shard's ReduceHub in
// process; every other owner sends its part to the leader's shard with ShardPeer.Reduce
// (proto/dion/v1/peer.proto), deadline `timeout` (dion-server --peer_timeout), and receives
// the sum. The call waits for a connection within its deadline (gRPC wait_for_ready), so a
// slow handshake does not fail a step. The k-th AllReduce of a reducer is round k of
// (parameter, step), so owners that make the same calls in the same order meet in the same
// reductions. With one owner AllReduce returns the part unchanged, without any call.
//
// Errors keep the code the hub or gRPC gave (DEADLINE_EXCEEDED naming the missing owners,
// INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ABORTED, UNAVAILABLE for a leader shutting down or
// still unreachable at the deadline, UNAUTHENTICATED / PERMISSION_DENIED for a token the
// leader refuses, FAILED_PRECONDITION when no peer addresses are configured) with a message
// naming this owner, the leader, the parameter, step, round and tag. Any error means the step
// must be abandoned.
//
// Thread-safety: one GrpcRowReducer is used from one thread at a time (RowReducer's contract);
// distinct reducers share only the PeerEnv's hub, channels and metrics, which are thread-safe.
#ifndef DION_SERVER_PEER_GRPC_ROW_REDUCER_H_
#define DION_SERVER_PEER_GRPC_ROW_REDUCER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/matrix.h"
#include "common/row_reduce.h"
#include "server/peer/peer_channels.h"
#include "server/peer/reduce_hub.h"

namespace dion {

class ShardMetrics;

// What the reducers of one shard share; DionServer owns the pointees (DionServer::peer_env).
struct PeerEnv {
  ReduceHub* hub = nullptr;                // this shard's hub: where it leads reductions
  const PeerChannels* channels = nullptr;  // null: no --peer_addresses
  absl::Duration timeout = absl::Seconds(5);  // a follower's call; the leader's own wait
  ShardMetrics* metrics = nullptr;            // may be null
  // Fault tests only: called when this owner has a reduction's sum; an error discards the
  // sum and fails the reduction here, as if the leader's answer had been lost.
  std::function<absl::Status(const ReduceKey&, absl::string_view tag)> reduced_fault;
};

class GrpcRowReducer final : public RowReducer {
 public:
  // `owner_shards[k]` is the shard index of owner k, in row order (owner 0 leads); `index` is
  // this owner's. REQUIRES: owner_shards not empty, 0 <= index < owner_shards.size(), and
  // `env`'s pointees outlive the reducer.
  // `attempt` numbers the tries of one step (ReduceKey::attempt).
  GrpcRowReducer(std::string parameter, int64_t step, std::vector<int> owner_shards, int index,
                 const PeerEnv& env, int32_t attempt = 0);

  int owners() const override { return static_cast<int>(owner_shards_.size()); }
  int index() const override { return index_; }
  absl::Status AllReduce(absl::string_view tag, MatrixRef part) override;

  // The round index the next AllReduce uses.
  int32_t next_round() const { return next_round_; }

 private:
  absl::Status ReduceAsLeader(const ReduceKey& key, absl::string_view tag, MatrixRef part);
  absl::Status ReduceAsFollower(const ReduceKey& key, absl::string_view tag, MatrixRef part);
  // A failed call's status; a deadline passed while the leader was not connected is
  // UNAVAILABLE (unreachable).
  absl::Status FromCallStatus(const grpc::Status& status) const;
  // `s` with a message naming this owner, the leader and the reduction.
  absl::Status Annotate(const absl::Status& s, const ReduceKey& key, absl::string_view tag) const;

  const std::string parameter_;
  const int64_t step_;
  const int32_t attempt_;
  const std::vector<int> owner_shards_;
  const int index_;
  const PeerEnv env_;
  int32_t next_round_ = 0;
};

}  // namespace dion

#endif  // DION_SERVER_PEER_GRPC_ROW_REDUCER_H_
