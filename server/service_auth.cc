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
  return AuthorizeCall(options_.tokens.get(), metrics_, context, method, allowed, principal);
}

grpc::Status ParameterServerService::Serve(
    const grpc::ServerContext& context, absl::string_view method,
    std::initializer_list<Role> allowed,
    absl::FunctionRef<grpc::Status(const Principal& caller)> body) {
  return GuardHandler(method, [&] {
    Principal caller;
    grpc::Status s = Authorize(context, method, allowed, &caller);
    return s.ok() ? body(caller) : s;
  });
}

grpc::Status ParameterServerService::RegisterModel(grpc::ServerContext* context,
                                                   const v1::RegisterModelRequest* request,
                                                   v1::RegisterModelResponse* response) {
  return Serve(*context, "RegisterModel", {Role::kWorker, Role::kAdmin},
               [&](const Principal& caller) {
                 return HandleRegisterModel(caller, request, response);
               });
}

grpc::Status ParameterServerService::GetLayout(grpc::ServerContext* context,
                                               const v1::GetLayoutRequest* request,
                                               v1::GetLayoutResponse* response) {
  return Serve(*context, "GetLayout", {Role::kWorker, Role::kReader, Role::kAdmin},
               [&](const Principal&) { return HandleGetLayout(context, request, response); });
}

grpc::Status ParameterServerService::Subscribe(grpc::ServerContext* context,
                                               const v1::SubscribeRequest* request,
                                               grpc::ServerWriter<v1::VersionUpdate>* writer) {
  return Serve(*context, "Subscribe", {Role::kWorker, Role::kAdmin},
               [&](const Principal&) { return HandleSubscribe(context, request, writer); });
}

grpc::Status ParameterServerService::Pull(grpc::ServerContext* context,
                                          const v1::PullRequest* request,
                                          grpc::ServerWriter<v1::ParameterValue>* writer) {
  return Serve(*context, "Pull", {Role::kWorker, Role::kReader, Role::kAdmin},
               [&](const Principal& caller) {
                 return HandlePull(context, caller, request, writer);
               });
}

grpc::Status ParameterServerService::Status(grpc::ServerContext* context,
                                            const v1::StatusRequest* request,
                                            v1::StatusResponse* response) {
  return Serve(*context, "Status", {Role::kWorker, Role::kReader, Role::kAdmin},
               [&](const Principal&) { return HandleStatus(context, request, response); });
}

grpc::Status ParameterServerService::Checkpoint(grpc::ServerContext* context,
                                                const v1::CheckpointRequest* request,
                                                v1::CheckpointResponse* response) {
  return Serve(*context, "Checkpoint", {Role::kAdmin},
               [&](const Principal&) { return HandleCheckpoint(context, request, response); });
}

}  // namespace dion
