// SplitPeers (server/split_peers.h) over gRPC: reducers are GrpcRowReducer; the leader's step
// commands are ShardPeer.StepRows calls (proto/dion/v1/peer.proto), one thread per follower,
// each with the deadline of a whole step (kStepRowsTimeouts x --peer_timeout) and
// wait_for_ready, so a follower that is being reconnected gets the whole deadline.
//
// Thread-safety: safe for concurrent use; the PeerEnv's pointees must outlive it.
#ifndef DION_SERVER_PEER_GRPC_SPLIT_PEERS_H_
#define DION_SERVER_PEER_GRPC_SPLIT_PEERS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "dion/v1/peer.pb.h"
#include "server/peer/grpc_row_reducer.h"
#include "server/split_peers.h"

namespace dion {

// A StepRows call may take this many --peer_timeout: the follower's step runs several
// reductions, each bounded by the timeout.
inline constexpr int kStepRowsTimeouts = 8;

class GrpcSplitPeers final : public SplitPeers {
 public:
  explicit GrpcSplitPeers(const PeerEnv& env) : env_(env) {}

  std::unique_ptr<RowReducer> Reducer(const std::string& parameter, int64_t step,
                                      int32_t attempt, const SplitOwnership& split) override;
  std::unique_ptr<FollowerSteps> StartFollowers(const StepRowsCommand& command,
                                                const SplitOwnership& split) override;

 private:
  const PeerEnv env_;
};

// The wire form of a command, and back. FromProto checks what the proto comments promise
// (InvalidArgument naming the field): a parameter name, version >= 1, attempt >= 0, members
// with worker ids, weights positive and summing to 1, lr_scale finite and > 0, sums with tags
// and 2-D values of 4 * rows * cols bytes, none on a query.
void StepRowsToProto(const StepRowsCommand& command, v1::StepRowsRequest* request);
absl::StatusOr<StepRowsCommand> StepRowsFromProto(const v1::StepRowsRequest& request);
// The wire form of an answer, and back (InvalidArgument for a malformed sum).
void StepRowsReplyToProto(const StepRowsReply& reply, v1::StepRowsResponse* response);
absl::StatusOr<StepRowsReply> StepRowsReplyFromProto(const v1::StepRowsResponse& response);

}  // namespace dion

#endif  // DION_SERVER_PEER_GRPC_SPLIT_PEERS_H_
