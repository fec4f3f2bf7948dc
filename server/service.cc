#include "server/service.h"

#include <algorithm>
#include <filesystem>
#include <exception>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/contribution.h"
#include "server/metrics.h"
#include "server/push_ack_writer.h"
#include "server/parameter_store.h"
#include "server/wire.h"

namespace dion {
namespace {

// How much earlier than the call's deadline a Pull with min_version gives up (at most a
// quarter of the time left).
constexpr absl::Duration kPullDeadlineMargin = absl::Milliseconds(250);

// ResourceExhausted when the ParameterValue of `spec` (with its optimizer state when asked)
// is above `max_bytes`, checked before the shard copies anything for it.
absl::Status CheckFitsOneMessage(const ParamSpec& spec, bool include_state, int64_t max_bytes) {
  const int64_t bytes =
      include_state ? StateBytes(spec) : spec.size() * static_cast<int64_t>(sizeof(float));
  if (bytes <= max_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("parameter '", spec.name, "' is ", bytes, " bytes",
                   include_state ? " with its optimizer state" : "", ", above the ", max_bytes,
                   " bytes one Pull message can carry"));
}

v1::PushResult ToProto(PushOutcome result) {
  switch (result) {
    case PushOutcome::kAccepted: return v1::PUSH_RESULT_ACCEPTED;
    case PushOutcome::kDuplicate: return v1::PUSH_RESULT_DUPLICATE;
    case PushOutcome::kStale: return v1::PUSH_RESULT_STALE;
    case PushOutcome::kRejected: return v1::PUSH_RESULT_REJECTED;
  }
  return v1::PUSH_RESULT_UNSPECIFIED;
}

void CountsToProto(const PushCounts& counts, v1::PushCounts* proto) {
  proto->set_accepted(counts.accepted);
  proto->set_duplicate(counts.duplicate);
  proto->set_stale(counts.stale);
  proto->set_rejected(counts.rejected);
}

void PrivacyToProto(const ShardStatus::Privacy& privacy, v1::PrivacyStatus* proto) {
  proto->set_noise_multiplier(privacy.options.noise_multiplier);
  proto->set_clip(privacy.options.clip);
  proto->set_sampling_rate(privacy.options.sampling_rate);
  proto->set_delta(privacy.options.delta);
  proto->set_steps(privacy.steps);
  proto->set_epsilon(privacy.spent.epsilon);
  proto->set_rdp_order(privacy.spent.order);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share the canonical code numbers 1..16.
  const int code = static_cast<int>(status.code());
  const grpc::StatusCode grpc_code =
      code >= 1 && code <= 16 ? static_cast<grpc::StatusCode>(code) : grpc::StatusCode::UNKNOWN;
  return grpc::Status(grpc_code, std::string(status.message()));
}

grpc::Status GuardHandler(absl::string_view method, absl::FunctionRef<grpc::Status()> body) {
  try {
    return body();
  } catch (const std::bad_alloc& e) {
    return grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat(method, ": the shard could not allocate the memory this call needs (",
                     e.what(), ")"));
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        absl::StrCat(method, ": internal error: ", e.what()));
  } catch (...) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        absl::StrCat(method, ": internal error: an exception of unknown type"));
  }
}

ParameterServerService::ParameterServerService(Shard* shard, ShardMetrics* metrics,
                                               const ServiceOptions& options)
    : shard_(shard), metrics_(metrics), options_(options) {
  // Method 2 of dion.v1.ParameterServer (in proto order) is Push; its handler stays synchronous.
  constexpr int kPushMethod = 2;
  MarkMethodStreamed(
      kPushMethod,
      new grpc::internal::BidiStreamingHandler<ParameterServerService, grpc::ByteBuffer,
                                               grpc::ByteBuffer>(
          [](ParameterServerService* service, grpc::ServerContext* context,
             grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
            return GuardHandler("Push", [&] { return service->PushBytes(context, stream); });
          },
          this));
}

grpc::Status ParameterServerService::HandleRegisterModel(const Principal& caller,
                                                         const v1::RegisterModelRequest* request,
                                                         v1::RegisterModelResponse* response) {
  if (metrics_ != nullptr) metrics_->RecordReceivedBytes(request->ByteSizeLong());
  if (!request->worker_id().empty()) {
    if (absl::Status s = ValidateWorkerId(request->worker_id()); !s.ok()) return ToGrpcStatus(s);
    if (!caller.MayActAs(request->worker_id())) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          absl::StrCat("RegisterModel: token '", caller.name,
                                       "' may not act as worker '", request->worker_id(), "'"));
    }
  }
  absl::StatusOr<ModelTable> table = ModelTableFromProto(*request);
  if (!table.ok()) return ToGrpcStatus(table.status());
  // A worker may join the registered table, not register one: before an admin has, it is
  // told to retry (workers may start before the registering one); a different table is
  // refused as a registration it may not make.
  if (caller.role != Role::kAdmin && !shard_->model_registered()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        absl::StrCat("RegisterModel: no model is registered yet, and token '",
                                     caller.name, "' (role ", RoleName(caller.role),
                                     ") may only join a registered one; retry once an admin "
                                     "token has registered the table"));
  }
  absl::StatusOr<bool> newly = shard_->RegisterModel(*table);
  if (!newly.ok() && caller.role != Role::kAdmin && absl::IsFailedPrecondition(newly.status())) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrCat("RegisterModel: the table differs from the registered one (",
                                     newly.status().message(), "); registering a new table "
                                     "needs the admin role (token '", caller.name, "' has role ",
                                     RoleName(caller.role), ")"));
  }
  if (!newly.ok()) return ToGrpcStatus(newly.status());
  if (!request->worker_id().empty()) {
    if (absl::Status s = shard_->RegisterWorker(request->worker_id()); !s.ok()) {
      return ToGrpcStatus(s);
    }
  }
  absl::StatusOr<ModelInfo> model = shard_->model();
  if (!model.ok()) return ToGrpcStatus(model.status());
  response->set_newly_registered(*newly);
  LayoutToProto(model->layout, response->mutable_layout());
  response->set_shard_index(shard_->options().store.shard_index);
  return grpc::Status::OK;
}

grpc::Status ParameterServerService::HandleGetLayout(grpc::ServerContext* context,
                                                     const v1::GetLayoutRequest* request,
                                                     v1::GetLayoutResponse* response) {
  absl::StatusOr<ModelInfo> model = shard_->model();
  if (!model.ok()) return ToGrpcStatus(model.status());
  response->set_model_name(model->model_name);
  LayoutToProto(model->layout, response->mutable_layout());
  response->set_shard_index(shard_->options().store.shard_index);
  for (size_t i = 0; i < model->parameters.size(); ++i) {
    v1::ParameterSpec* proto = response->add_parameters();
    ParameterToProto(model->parameters[i], proto);
    // The value itself is not sent (a client Pulls it); say that there is one, rather than
    // echo the unused init spec (zeros) as if it were how the parameter started.
    if (i < model->initial_value_checksums.size() &&
        model->initial_value_checksums[i].has_value()) {
      proto->mutable_init()->Clear();
      proto->mutable_init()->set_kind(v1::INIT_KIND_EXPLICIT);
    }
  }
  return grpc::Status::OK;
}

void ParameterServerService::AddPushStreams(int64_t delta) {
  const int64_t now = push_streams_.fetch_add(delta) + delta;
  if (metrics_ != nullptr) metrics_->SetConnectedWorkers(now);
}

v1::PushAck ParameterServerService::Judge(const Principal& caller,
                                          const v1::Contribution& request,
                                          uint64_t* durable_end) {
  v1::PushAck ack;
  ack.set_sequence(request.sequence());
  ack.set_parameter(request.parameter());
  // `counted`: Shard::Push counts what it refuses itself.
  const auto reject = [&](const absl::Status& status, bool counted) {
    if (!counted) shard_->CountRejected(request.worker_id(), request.parameter());
    if (metrics_ != nullptr && IsNonFiniteError(status)) metrics_->RecordNonFinitePush();
    ack.set_result(v1::PUSH_RESULT_REJECTED);
    ack.set_status_code(static_cast<int32_t>(status.code()));
    ack.set_message(std::string(status.message()));
    // The applied version, as for every other result; 0 for a parameter this shard lacks.
    ack.set_current_version(shard_->Version(request.parameter()).value_or(0));
    return ack;
  };
  if (!caller.MayActAs(request.worker_id())) {
    if (metrics_ != nullptr) metrics_->RecordAuthFailure("permission_denied");
    return reject(absl::PermissionDeniedError(absl::StrCat(
                      "token '", caller.name, "' may not push as worker '", request.worker_id(),
                      "'")),
                  false);
  }
  // The spec first: it decides how a dense gradient's shape is read, and a missing model or
  // an unknown parameter is the more useful answer than a complaint about the payload.
  absl::StatusOr<const ParamSpec*> spec = shard_->FindSpec(request.parameter());
  if (!spec.ok()) return reject(spec.status(), false);
  // Structure only: Shard::Push validates the values, once.
  absl::StatusOr<Contribution> contribution =
      ContributionFromProto(request, *spec, PayloadValues::kLeaveToValidation);
  if (!contribution.ok()) return reject(contribution.status(), false);
  absl::StatusOr<PushReply> reply = shard_->Submit(*std::move(contribution));
  if (!reply.ok()) return reject(reply.status(), true);
  *durable_end = reply->durable_end;
  ack.set_result(ToProto(reply->result));
  ack.set_current_version(reply->applied_version);
  switch (reply->result) {
    case PushOutcome::kAccepted:
      ack.set_staleness(reply->staleness);
      break;
    case PushOutcome::kDuplicate:
      ack.set_message(absl::StrCat("sequence ", request.sequence(), " of worker '",
                                   request.worker_id(), "' for '", request.parameter(),
                                   "' was accepted before; not applied again"));
      break;
    case PushOutcome::kStale:
      ack.set_staleness(reply->staleness);
      ack.set_message(absl::StrCat(
          "staleness ", reply->staleness, " (version of the open batch ", reply->batch_version,
          " - base_version ", request.base_version(), ") exceeds max_staleness ",
          shard_->options().batcher.staleness.max_staleness,
          "; it is not applied: drop it, and resync if the replica lags"));
      break;
    case PushOutcome::kRejected:  // Push answers an error status instead
      break;
  }
  return ack;
}

grpc::Status ParameterServerService::PushBytes(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
  Principal caller;
  if (grpc::Status s = Authorize(*context, "Push", {Role::kWorker, Role::kAdmin}, &caller);
      !s.ok()) {
    return s;
  }
  AddPushStreams(1);
  struct Closer {
    ParameterServerService* service;
    ~Closer() { service->AddPushStreams(-1); }
  } closer{this};
  PushAckWriter acks(shard_, stream, metrics_);
  grpc::ByteBuffer bytes;
  for (int64_t position = 1; stream->Read(&bytes); ++position) {
    v1::Contribution request;
    if (!grpc::SerializationTraits<v1::Contribution>::Deserialize(&bytes, &request).ok()) {
      acks.Finish();  // the acks of the messages before it first
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("message ", position, " of the push stream (counting from 1) is not a "
                       "valid dion.v1.Contribution (e.g. a string field that is not UTF-8); "
                       "the stream ends here, messages after it were not read"));
    }
    if (metrics_ != nullptr) metrics_->RecordReceivedBytes(request.ByteSizeLong());
    uint64_t durable_end = 0;
    v1::PushAck ack = Judge(caller, request, &durable_end);
    if (!acks.Add(std::move(ack), durable_end)) break;
  }
  if (!acks.Finish()) {
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        "the client went away before its acknowledgements were sent");
  }
  if (context->IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the push stream");
  }
  return grpc::Status::OK;
}

grpc::Status ParameterServerService::HandleSubscribe(
    grpc::ServerContext* context, const v1::SubscribeRequest* request,
    grpc::ServerWriter<v1::VersionUpdate>* writer) {
  absl::flat_hash_map<std::string, int64_t> have;
  for (const v1::ParameterVersion& held : request->have()) {
    have[held.parameter()] = held.version();
  }
  std::vector<std::string> parameters(request->parameters().begin(),
                                      request->parameters().end());
  absl::StatusOr<std::unique_ptr<Subscription>> subscription =
      shard_->Subscribe(std::move(parameters), have);
  if (!subscription.ok()) return ToGrpcStatus(subscription.status());
  absl::flat_hash_map<std::string, std::vector<int64_t>> shapes;
  for (const std::string& parameter : (*subscription)->parameters()) {
    absl::StatusOr<const ParamSpec*> spec = shard_->FindSpec(parameter);
    if (!spec.ok()) return ToGrpcStatus(spec.status());
    shapes[parameter] = (*spec)->shape;
  }
  v1::VersionUpdate message;
  while (!context->IsCancelled()) {
    std::optional<std::shared_ptr<const VersionUpdate>> update =
        (*subscription)->Next(options_.subscribe_poll);
    if (!update.has_value()) {
      if ((*subscription)->closed()) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "the shard is shutting down; resubscribe after it restarts");
      }
      continue;
    }
    VersionUpdateToProto(**update, shapes[(*update)->parameter], &message);
    if (metrics_ != nullptr) metrics_->RecordSentBytes(message.ByteSizeLong());
    if (!writer->Write(message)) break;
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "the subscriber went away");
}

grpc::Status ParameterServerService::HandlePull(grpc::ServerContext* context,
                                                const Principal& caller,
                                                const v1::PullRequest* request,
                                                grpc::ServerWriter<v1::ParameterValue>* writer) {
  if (request->include_optimizer_state() && caller.role != Role::kAdmin) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrCat("Pull with include_optimizer_state needs the admin role "
                                     "(token '", caller.name, "' has role ",
                                     RoleName(caller.role), ")"));
  }
  if (request->include_optimizer_state() && !options_.allow_optimizer_state) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "Pull with include_optimizer_state is an admin operation, disabled on "
                        "this shard; start it with --allow_optimizer_state_pull to allow it");
  }
  std::vector<std::string> parameters(request->parameters().begin(),
                                      request->parameters().end());
  if (parameters.empty()) {
    if (!shard_->model_registered()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no model is registered");
    }
    parameters = shard_->OwnedParameters();
  }
  if (request->min_version() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("min_version must be >= 0 (0: the current version), got ",
                                     request->min_version()));
  }
  // Every name is checked before anything is sent, so a bad request sends nothing.
  for (const std::string& parameter : parameters) {
    absl::StatusOr<const ParamSpec*> spec = shard_->FindSpec(parameter);
    if (!spec.ok()) return ToGrpcStatus(spec.status());
    if (absl::Status s = CheckFitsOneMessage(**spec, request->include_optimizer_state(),
                                             std::min(options_.max_pull_message_bytes,
                                                      kMaxPullMessageBytes));
        !s.ok()) {
      return ToGrpcStatus(s);
    }
  }
  if (request->min_version() > 0) {
    // Answer a little before the call's deadline, so the message naming the parameter reaches
    // the client before its own timer ends the call with a bare DEADLINE_EXCEEDED.
    const absl::Time now = absl::Now();
    const absl::Time call_deadline = absl::FromChrono(context->deadline());
    const absl::Time deadline =
        call_deadline - std::min(kPullDeadlineMargin, (call_deadline - now) / 4);
    for (const std::string& parameter : parameters) {
      // In slices, so a client that goes away does not hold the handler until the deadline.
      while (true) {
        if (context->IsCancelled()) {
          return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
        }
        const absl::Time until = std::min(deadline, absl::Now() + options_.subscribe_poll);
        absl::StatusOr<int64_t> reached =
            shard_->WaitForVersion(parameter, request->min_version(), until);
        if (reached.ok()) break;
        if (!absl::IsDeadlineExceeded(reached.status()) || until >= deadline) {
          return ToGrpcStatus(reached.status());
        }
      }
    }
  }
  v1::ParameterValue message;
  for (const std::string& parameter : parameters) {
    absl::StatusOr<ParameterSnapshot> snapshot =
        shard_->Snapshot(parameter, request->include_optimizer_state());
    if (!snapshot.ok()) return ToGrpcStatus(snapshot.status());
    message.Clear();
    SnapshotToProto(*snapshot, &message);
    if (metrics_ != nullptr) metrics_->RecordSentBytes(message.ByteSizeLong());
    if (!writer->Write(message)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
  }
  return grpc::Status::OK;
}

grpc::Status ParameterServerService::HandleStatus(grpc::ServerContext* context,
                                                  const v1::StatusRequest* request,
                                                  v1::StatusResponse* response) {
  const ShardStatus status = shard_->Status();
  response->set_shard_index(status.shard_index);
  response->set_num_shards(status.num_shards);
  response->set_model_registered(status.model_registered);
  response->set_model_name(status.model_name);
  for (const ShardStatus::Parameter& p : status.parameters) {
    v1::ParameterStatus* proto = response->add_parameters();
    proto->set_parameter(p.status.parameter);
    proto->set_optimizer(OptimizerKindToProto(p.status.optimizer));
    proto->set_version(p.status.version);
    proto->set_steps(p.status.steps);
    proto->set_contributions_applied(p.status.contributions_applied);
    proto->set_samples_applied(p.status.samples_applied);
    proto->set_lr_scale(p.status.lr_scale);
    CountsToProto(p.pushes, proto->mutable_pushes());
  }
  for (const ShardStatus::Worker& w : status.workers) {
    v1::WorkerStatus* proto = response->add_workers();
    proto->set_worker_id(w.worker_id);
    CountsToProto(w.pushes, proto->mutable_pushes());
    proto->set_last_loss(w.last_loss);
  }
  CountsToProto(status.pushes, response->mutable_pushes());
  response->set_subscribers(status.subscribers);
  response->set_checkpoint_run_id(status.newest_cut.run_id);
  response->set_checkpoint_cut(status.newest_cut.cut);
  if (status.privacy.has_value()) PrivacyToProto(*status.privacy, response->mutable_privacy());
  return grpc::Status::OK;
}

grpc::Status ParameterServerService::HandleCheckpoint(grpc::ServerContext* context,
                                                      const v1::CheckpointRequest* request,
                                                      v1::CheckpointResponse* response) {
  absl::StatusOr<CutCheckpoint> written =
      shard_->CheckpointCut(CutTag{request->run_id(), request->cut()});
  if (!written.ok()) return ToGrpcStatus(written.status());
  response->set_directory(std::filesystem::path(written->path).filename().string());
  response->set_run_id(written->tag.run_id);
  response->set_cut(written->tag.cut);
  for (const auto& [parameter, version] : written->versions) {
    v1::ParameterVersion* proto = response->add_versions();
    proto->set_parameter(parameter);
    proto->set_version(version);
  }
  response->set_already_written(written->already_written);
  return grpc::Status::OK;
}

}  // namespace dion
