#include "server/peer/grpc_row_reducer.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "dion/v1/peer.grpc.pb.h"
#include "server/metrics.h"
#include "server/peer/reduce_wire.h"

namespace dion {
namespace {

const char* ConnectivityName(grpc_connectivity_state state) {
  switch (state) {
    case GRPC_CHANNEL_IDLE: return "IDLE";
    case GRPC_CHANNEL_CONNECTING: return "CONNECTING";
    case GRPC_CHANNEL_READY: return "READY";
    case GRPC_CHANNEL_TRANSIENT_FAILURE: return "TRANSIENT_FAILURE";
    case GRPC_CHANNEL_SHUTDOWN: return "SHUTDOWN";
  }
  return "unknown";
}

}  // namespace

GrpcRowReducer::GrpcRowReducer(std::string parameter, int64_t step,
                               std::vector<int> owner_shards, int index, const PeerEnv& env,
                               int32_t attempt)
    : parameter_(std::move(parameter)),
      step_(step),
      attempt_(attempt),
      owner_shards_(std::move(owner_shards)),
      index_(index),
      env_(env) {}

absl::Status GrpcRowReducer::AllReduce(absl::string_view tag, MatrixRef part) {
  const ReduceKey key{parameter_, step_, next_round_++, attempt_};
  if (owners() == 1) return absl::OkStatus();
  const absl::Time start = absl::Now();
  absl::Status s =
      index_ == 0 ? ReduceAsLeader(key, tag, part) : ReduceAsFollower(key, tag, part);
  if (s.ok() && env_.reduced_fault) s = env_.reduced_fault(key, tag);
  if (env_.metrics != nullptr) {
    if (s.ok()) {
      env_.metrics->RecordPeerReduction(tag, absl::ToDoubleSeconds(absl::Now() - start));
    } else {
      env_.metrics->RecordPeerFailure(s.code());
    }
  }
  return s.ok() ? s : Annotate(s, key, tag);
}

absl::Status GrpcRowReducer::ReduceAsLeader(const ReduceKey& key, absl::string_view tag,
                                            MatrixRef part) {
  if (env_.hub == nullptr) {
    return absl::FailedPreconditionError("this shard has no reduction hub");
  }
  ReducePart mine{key, std::string(tag), 0, owners(), Matrix(part)};
  absl::StatusOr<std::shared_ptr<const Matrix>> sum =
      env_.hub->Submit(std::move(mine), absl::Now() + env_.timeout);
  if (!sum.ok()) return sum.status();
  part = **sum;
  return absl::OkStatus();
}

absl::Status GrpcRowReducer::ReduceAsFollower(const ReduceKey& key, absl::string_view tag,
                                              MatrixRef part) {
  if (env_.channels == nullptr) {
    return absl::FailedPreconditionError(
        "this shard has no --peer_addresses, so it cannot reach the leader");
  }
  absl::StatusOr<v1::ShardPeer::StubInterface*> stub = env_.channels->Stub(owner_shards_[0]);
  if (!stub.ok()) return stub.status();
  v1::ReduceRequest request;
  ReducePartToProto(key, tag, index_, owners(), part, &request);
  v1::ReduceResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + env_.timeout));
  // A connection that is being (re)established, or a slow TLS handshake, gets the whole
  // deadline rather than failing the step at once.
  context.set_wait_for_ready(true);
  const grpc::Status status = (*stub)->Reduce(&context, request, &response);
  if (env_.metrics != nullptr) {
    env_.metrics->RecordPeerBytes(static_cast<int64_t>(request.ByteSizeLong()),
                                  static_cast<int64_t>(response.ByteSizeLong()));
  }
  if (!status.ok()) return FromCallStatus(status);
  absl::StatusOr<Matrix> sum = ReduceTensorToMatrix(response.sum(), "the leader's sum");
  if (!sum.ok()) return absl::InternalError(sum.status().message());
  if (sum->rows() != part.rows() || sum->cols() != part.cols()) {
    return absl::InternalError(absl::StrCat("the leader answered a ", sum->rows(), " x ",
                                            sum->cols(), " sum for a ", part.rows(), " x ",
                                            part.cols(), " part"));
  }
  part = *sum;
  return absl::OkStatus();
}

absl::Status GrpcRowReducer::FromCallStatus(const grpc::Status& status) const {
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    const grpc_connectivity_state state =
        env_.channels->channel(owner_shards_[0])->GetState(/*try_to_connect=*/false);
    if (state != GRPC_CHANNEL_READY) {
      return absl::UnavailableError(absl::StrCat(
          "the leader could not be reached within --peer_timeout ",
          absl::FormatDuration(env_.timeout), " (connection state ", ConnectivityName(state),
          ")"));
    }
    return absl::DeadlineExceededError(absl::StrCat(
        status.error_message(), " (no answer within --peer_timeout ",
        absl::FormatDuration(env_.timeout), ")"));
  }
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

absl::Status GrpcRowReducer::Annotate(const absl::Status& s, const ReduceKey& key,
                                      absl::string_view tag) const {
  std::string leader = absl::StrCat("shard ", owner_shards_[0]);
  if (env_.channels != nullptr && owner_shards_[0] < env_.channels->size()) {
    absl::StrAppend(&leader, " (", env_.channels->address(owner_shards_[0]), ")");
  }
  return absl::Status(
      s.code(), absl::StrCat("owner ", index_, " of ", owners(), " (shard ",
                             owner_shards_[index_], ") reducing '", tag, "' of ",
                             DescribeKey(key), " led by ", leader, ": ", s.message()));
}

}  // namespace dion
