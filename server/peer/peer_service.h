// The gRPC service dion.v1.ShardPeer of one shard (proto/dion/v1/peer.proto): the other owners
// of the row-split parameters this shard leads send their parts of each reduction here, and
// the leaders of the ones it follows send their step commands (StepRows, run by the Shard). A
// handler authenticates the call (role peer or admin with --auth_tokens_file), decodes the
// part and waits in the ReduceHub for the sum, until shortly before the call's deadline (so
// that the hub's DEADLINE_EXCEEDED naming the missing owners reaches the caller rather than
// gRPC's bare one) and never longer than `max_wait`. Status codes: peer.proto.
//
// Thread-safety: safe for concurrent use (gRPC calls handlers from many threads; each waits in
// the hub on its own thread).
#ifndef DION_SERVER_PEER_PEER_SERVICE_H_
#define DION_SERVER_PEER_PEER_SERVICE_H_

#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "dion/v1/peer.grpc.pb.h"
#include "server/auth.h"
#include "server/peer/reduce_hub.h"

namespace dion {

class ShardMetrics;
class Shard;

class ShardPeerService final : public v1::ShardPeer::Service {
 public:
  // `hub` (and `metrics`, which may be null) must outlive the service; `tokens` null: no
  // tokens, every caller may call.
  // `shard` (may be null: StepRows is then FAILED_PRECONDITION) must outlive the service too.
  ShardPeerService(ReduceHub* hub, Shard* shard, std::shared_ptr<TokenAuthenticator> tokens,
                   ShardMetrics* metrics, absl::Duration max_wait);

  grpc::Status Reduce(grpc::ServerContext* context, const v1::ReduceRequest* request,
                      v1::ReduceResponse* response) override;
  grpc::Status StepRows(grpc::ServerContext* context, const v1::StepRowsRequest* request,
                        v1::StepRowsResponse* response) override;

 private:
  // When the hub gives up on this call: before the call's deadline, by a quarter of the time
  // left at most 200 ms, and within max_wait_.
  absl::Time HubDeadline(const grpc::ServerContext& context) const;

  ReduceHub* const hub_;
  Shard* const shard_;
  const std::shared_ptr<TokenAuthenticator> tokens_;
  ShardMetrics* const metrics_;
  const absl::Duration max_wait_;
};

}  // namespace dion

#endif  // DION_SERVER_PEER_PEER_SERVICE_H_
