// The public handlers of ParameterServerService: each authenticates and authorizes the call
// (docs/server.md, "Security") and runs its body (service.cc) through GuardHandler. Push is
// authorized when its stream opens, in PushBytes.
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/metrics.h"
#include "server/service.h"

namespace dion {

grpc::Status ParameterServerService::Authorize(const grpc::ServerContext& context,
                                               absl::string_view method,
                                               std::initializer_list<Role> allowed,
                                               Principal* principal) {
  if (options_.tokens == nullptr) {
    *principal = Principal{Role::kAdmin, "anyone", {}};
    return grpc::Status::OK;
  }
  absl::StatusOr<Principal> who = options_.tokens->Authenticate(context);
  if (!who.ok()) {
    if (metrics_ != nullptr) metrics_->RecordAuthFailure("unauthenticated");
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        absl::StrCat(method, ": ", who.status().message()));
  }
  for (Role role : allowed) {
    if (who->role == role) {
      *principal = *std::move(who);
      return grpc::Status::OK;
    }
  }
  if (metrics_ != nullptr) metrics_->RecordAuthFailure("permission_denied");
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      absl::StrCat(method, " is not allowed for role ", RoleName(who->role),
                                   " (token '", who->name, "')"));
}

grpc::Status ParameterServerService::RegisterModel(grpc::ServerContext* context,
                                                   const v1::RegisterModelRequest* request,
                                                   v1::RegisterModelResponse* response) {
  return GuardHandler("RegisterModel", [&] {
    Principal caller;
    grpc::Status s = Authorize(*context, "RegisterModel", {Role::kWorker, Role::kAdmin}, &caller);
    return s.ok() ? HandleRegisterModel(caller, request, response) : s;
  });
}

grpc::Status ParameterServerService::GetLayout(grpc::ServerContext* context,
                                               const v1::GetLayoutRequest* request,
                                               v1::GetLayoutResponse* response) {
  return GuardHandler("GetLayout", [&] {
    Principal caller;
    grpc::Status s = Authorize(*context, "GetLayout",
                               {Role::kWorker, Role::kReader, Role::kAdmin}, &caller);
    return s.ok() ? HandleGetLayout(context, request, response) : s;
  });
}

grpc::Status ParameterServerService::Subscribe(grpc::ServerContext* context,
                                               const v1::SubscribeRequest* request,
                                               grpc::ServerWriter<v1::VersionUpdate>* writer) {
  return GuardHandler("Subscribe", [&] {
    Principal caller;
    grpc::Status s = Authorize(*context, "Subscribe", {Role::kWorker, Role::kAdmin}, &caller);
    return s.ok() ? HandleSubscribe(context, request, writer) : s;
  });
}

grpc::Status ParameterServerService::Pull(grpc::ServerContext* context,
                                          const v1::PullRequest* request,
                                          grpc::ServerWriter<v1::ParameterValue>* writer) {
  return GuardHandler("Pull", [&] {
    Principal caller;
    grpc::Status s =
        Authorize(*context, "Pull", {Role::kWorker, Role::kReader, Role::kAdmin}, &caller);
    return s.ok() ? HandlePull(context, caller, request, writer) : s;
  });
}

grpc::Status ParameterServerService::Status(grpc::ServerContext* context,
                                            const v1::StatusRequest* request,
                                            v1::StatusResponse* response) {
  return GuardHandler("Status", [&] {
    Principal caller;
    grpc::Status s =
        Authorize(*context, "Status", {Role::kWorker, Role::kReader, Role::kAdmin}, &caller);
    return s.ok() ? HandleStatus(context, request, response) : s;
  });
}

grpc::Status ParameterServerService::Checkpoint(grpc::ServerContext* context,
                                                const v1::CheckpointRequest* request,
                                                v1::CheckpointResponse* response) {
  return GuardHandler("Checkpoint", [&] {
    Principal caller;
    grpc::Status s = Authorize(*context, "Checkpoint", {Role::kAdmin}, &caller);
    return s.ok() ? HandleCheckpoint(context, request, response) : s;
  });
}

}  // namespace dion
