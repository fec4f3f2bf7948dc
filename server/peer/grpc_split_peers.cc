#include "server/peer/grpc_split_peers.h"

#include <cmath>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/wire.h"
#include "dion/v1/peer.grpc.pb.h"
#include "server/peer/reduce_wire.h"

namespace dion {
namespace {

class GrpcFollowerSteps final : public FollowerSteps {
 public:
  GrpcFollowerSteps(const StepRowsCommand& command, const SplitOwnership& split,
                    const PeerEnv& env) {
    StepRowsToProto(command, &request_);
    const int followers = static_cast<int>(split.owner_shards.size()) - 1;
    replies_.resize(followers, absl::UnknownError("no answer"));
    for (int i = 0; i < followers; ++i) {
      const int shard = split.owner_shards[i + 1];
      threads_.emplace_back([this, i, shard, env] { replies_[i] = Call(shard, env); });
    }
  }
  ~GrpcFollowerSteps() override { Join(); }

  absl::Status Wait() override {
    Join();
    for (const absl::StatusOr<StepRowsReply>& reply : replies_) {
      if (!reply.ok()) return reply.status();
    }
    return absl::OkStatus();
  }

  std::vector<absl::StatusOr<StepRowsReply>> Replies() override {
    Join();
    return replies_;
  }

 private:
  void Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  absl::StatusOr<StepRowsReply> Call(int shard, const PeerEnv& env) const {
    const auto annotate = [&](absl::StatusCode code, absl::string_view message) {
      return absl::Status(code, absl::StrCat("follower shard ", shard, " of '",
                                             request_.parameter(), "', step ",
                                             request_.version(), " attempt ",
                                             request_.attempt(), ": ", message));
    };
    if (env.channels == nullptr) {
      return annotate(absl::StatusCode::kFailedPrecondition,
                      "this shard has no --peer_addresses, so it cannot reach its followers");
    }
    absl::StatusOr<v1::ShardPeer::StubInterface*> stub = env.channels->Stub(shard);
    if (!stub.ok()) return annotate(stub.status().code(), stub.status().message());
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kStepRowsTimeouts * env.timeout));
    context.set_wait_for_ready(true);
    v1::StepRowsResponse response;
    const grpc::Status status = (*stub)->StepRows(&context, request_, &response);
    if (!status.ok()) {
      return annotate(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
    }
    // A step's answer is the step's version; a query's may be the one before it.
    if (response.version() != request_.version() &&
        !(request_.query() && response.version() == request_.version() - 1)) {
      return annotate(absl::StatusCode::kInternal,
                      absl::StrCat("answered version ", response.version()));
    }
    absl::StatusOr<StepRowsReply> reply = StepRowsReplyFromProto(response);
    if (!reply.ok()) return annotate(reply.status().code(), reply.status().message());
    return reply;
  }

  v1::StepRowsRequest request_;
  // Written by threads_[i] only, read after Join.
  std::vector<absl::StatusOr<StepRowsReply>> replies_;
  std::vector<std::thread> threads_;
};

}  // namespace

std::unique_ptr<RowReducer> GrpcSplitPeers::Reducer(const std::string& parameter, int64_t step,
                                                    int32_t attempt,
                                                    const SplitOwnership& split) {
  return std::make_unique<GrpcRowReducer>(parameter, step, split.owner_shards, split.index, env_,
                                          attempt);
}

std::unique_ptr<FollowerSteps> GrpcSplitPeers::StartFollowers(const StepRowsCommand& command,
                                                              const SplitOwnership& split) {
  return std::make_unique<GrpcFollowerSteps>(command, split, env_);
}

namespace {

void SumsToProto(const std::vector<StepSum>& sums,
                 google::protobuf::RepeatedPtrField<v1::StepSum>* proto) {
  for (const StepSum& sum : sums) {
    v1::StepSum* s = proto->Add();
    s->set_tag(sum.tag);
    MatrixToTensor(sum.value, s->mutable_value());
  }
}

absl::StatusOr<std::vector<StepSum>> SumsFromProto(
    const google::protobuf::RepeatedPtrField<v1::StepSum>& proto) {
  std::vector<StepSum> sums;
  for (int i = 0; i < proto.size(); ++i) {
    if (proto[i].tag().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sum ", i, " has no tag"));
    }
    absl::StatusOr<Matrix> value =
        ReduceTensorToMatrix(proto[i].value(), absl::StrCat("sum ", i, " ('", proto[i].tag(), "')"));
    if (!value.ok()) return value.status();
    sums.push_back({proto[i].tag(), *std::move(value)});
  }
  return sums;
}

}  // namespace

void StepRowsToProto(const StepRowsCommand& command, v1::StepRowsRequest* request) {
  request->Clear();
  request->set_parameter(command.batch.parameter);
  request->set_version(command.batch.version + 1);
  request->set_attempt(command.attempt);
  request->set_lr_scale(command.lr_scale);
  for (const LoggedBatch::Member& member : command.batch.members) {
    v1::StepMember* m = request->add_members();
    m->set_worker_id(member.worker_id);
    m->set_sequence(member.sequence);
    m->set_weight(member.weight);
    m->set_staleness(member.staleness);
  }
  request->set_query(command.query);
  SumsToProto(command.sums, request->mutable_sums());
}

absl::StatusOr<StepRowsCommand> StepRowsFromProto(const v1::StepRowsRequest& request) {
  const auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("StepRows of '", request.parameter(),
                                                   "' version ", request.version(), ": ",
                                                   parts...));
  };
  if (request.parameter().empty()) return bad("the parameter name is empty");
  if (request.version() < 1) return bad("version must be >= 1");
  if (request.attempt() < 0) return bad("attempt must be >= 0, got ", request.attempt());
  if (!(request.lr_scale() > 0 && std::isfinite(request.lr_scale()))) {
    return bad("lr_scale must be finite and > 0, got ", request.lr_scale());
  }
  if (request.members().empty()) return bad("a batch must have members");
  StepRowsCommand command;
  command.batch.parameter = request.parameter();
  command.batch.version = request.version() - 1;
  command.attempt = request.attempt();
  command.lr_scale = request.lr_scale();
  double sum = 0;
  absl::flat_hash_set<std::pair<std::string, uint64_t>> seen;
  for (const v1::StepMember& m : request.members()) {
    if (m.worker_id().empty()) return bad("a member has no worker_id");
    if (!seen.insert({m.worker_id(), m.sequence()}).second) {
      return bad("member '", m.worker_id(), "' sequence ", m.sequence(), " is named twice");
    }
    if (!(m.weight() > 0 && std::isfinite(m.weight()))) {
      return bad("member '", m.worker_id(), "' has weight ", m.weight(), ", expected > 0");
    }
    if (m.staleness() < 0) return bad("member '", m.worker_id(), "' has negative staleness");
    sum += m.weight();
    command.batch.members.push_back({m.worker_id(), m.sequence(), m.staleness(), m.weight()});
  }
  if (std::abs(sum - 1.0) > 1e-6) return bad("the members' weights sum to ", sum, ", expected 1");
  if (request.query() && !request.sums().empty()) return bad("a query carries no sums");
  command.query = request.query();
  absl::StatusOr<std::vector<StepSum>> sums = SumsFromProto(request.sums());
  if (!sums.ok()) return bad(sums.status().message());
  command.sums = *std::move(sums);
  return command;
}

void StepRowsReplyToProto(const StepRowsReply& reply, v1::StepRowsResponse* response) {
  response->Clear();
  response->set_version(reply.version);
  response->set_checksum(reply.checksum);
  SumsToProto(reply.sums, response->mutable_sums());
}

absl::StatusOr<StepRowsReply> StepRowsReplyFromProto(const v1::StepRowsResponse& response) {
  absl::StatusOr<std::vector<StepSum>> sums = SumsFromProto(response.sums());
  if (!sums.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the answer's ", sums.status().message()));
  }
  return StepRowsReply{response.version(), response.checksum(), *std::move(sums)};
}

}  // namespace dion
