#include "server/peer/peer_service.h"

#include <algorithm>
#include <utility>

#include "absl/time/clock.h"
#include "common/wire.h"
#include "server/metrics.h"
#include "server/peer/grpc_split_peers.h"
#include "server/peer/reduce_wire.h"
#include "server/shard.h"
#include "server/service.h"

namespace dion {

ShardPeerService::ShardPeerService(ReduceHub* hub, Shard* shard,
                                   std::shared_ptr<TokenAuthenticator> tokens,
                                   ShardMetrics* metrics, absl::Duration max_wait)
    : hub_(hub), shard_(shard), tokens_(std::move(tokens)), metrics_(metrics),
      max_wait_(max_wait) {}

absl::Time ShardPeerService::HubDeadline(const grpc::ServerContext& context) const {
  const absl::Time now = absl::Now();
  absl::Time deadline = now + max_wait_;
  const absl::Time call_deadline = absl::FromChrono(context.deadline());
  if (call_deadline < deadline) {
    const absl::Duration margin =
        std::min(absl::Milliseconds(200), std::max(call_deadline - now, absl::ZeroDuration()) / 4);
    deadline = call_deadline - margin;
  }
  return deadline;
}

grpc::Status ShardPeerService::Reduce(grpc::ServerContext* context,
                                      const v1::ReduceRequest* request,
                                      v1::ReduceResponse* response) {
  return GuardHandler("ShardPeer.Reduce", [&] {
    Principal caller;
    if (grpc::Status s = AuthorizeCall(tokens_.get(), metrics_, *context, "ShardPeer.Reduce",
                                       {Role::kPeer, Role::kAdmin}, &caller);
        !s.ok()) {
      return s;
    }
    if (metrics_ != nullptr) {
      metrics_->RecordPeerBytes(0, static_cast<int64_t>(request->ByteSizeLong()));
    }
    absl::StatusOr<ReducePart> part = ReducePartFromProto(*request);
    if (!part.ok()) return ToGrpcStatus(part.status());
    absl::StatusOr<std::shared_ptr<const Matrix>> sum =
        hub_->Submit(*std::move(part), HubDeadline(*context));
    if (!sum.ok()) return ToGrpcStatus(sum.status());
    MatrixToTensor(**sum, response->mutable_sum());
    if (metrics_ != nullptr) {
      metrics_->RecordPeerBytes(static_cast<int64_t>(response->ByteSizeLong()), 0);
    }
    return grpc::Status::OK;
  });
}

grpc::Status ShardPeerService::StepRows(grpc::ServerContext* context,
                                        const v1::StepRowsRequest* request,
                                        v1::StepRowsResponse* response) {
  return GuardHandler("ShardPeer.StepRows", [&] {
    Principal caller;
    if (grpc::Status s = AuthorizeCall(tokens_.get(), metrics_, *context, "ShardPeer.StepRows",
                                       {Role::kPeer, Role::kAdmin}, &caller);
        !s.ok()) {
      return s;
    }
    if (metrics_ != nullptr) {
      metrics_->RecordPeerBytes(0, static_cast<int64_t>(request->ByteSizeLong()));
    }
    absl::StatusOr<StepRowsCommand> command = StepRowsFromProto(*request);
    if (!command.ok()) return ToGrpcStatus(command.status());
    if (shard_ == nullptr) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this server has no shard");
    }
    absl::StatusOr<StepRowsReply> reply = shard_->StepRows(*command);
    if (!reply.ok()) return ToGrpcStatus(reply.status());
    StepRowsReplyToProto(*reply, response);
    return grpc::Status::OK;
  });
}

}  // namespace dion
