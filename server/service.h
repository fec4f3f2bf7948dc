// The gRPC service dion.v1.ParameterServer of one shard (proto/dion/v1/dion.proto). Handlers
// decode, validate and hand off to the Shard; they never run an optimizer step.
//
// Errors, in one place (ToGrpcStatus maps absl codes to the gRPC codes of the same name):
//   - Unary calls and the opening of a server stream (RegisterModel, GetLayout, Subscribe,
//     Pull, Status) fail with the status the shard gives: INVALID_ARGUMENT (malformed table or
//     request), FAILED_PRECONDITION (no model yet, a conflicting table, a parameter of another
//     shard), NOT_FOUND (unknown parameter), PERMISSION_DENIED (optimizer state not allowed).
//   - Push: a contribution that is malformed or not acceptable does NOT end the stream. It is
//     answered with a PushAck REJECTED whose status_code is the code the contribution would have
//     had as a call and whose message says what was wrong: NOT_FOUND unknown parameter;
//     FAILED_PRECONDITION no model registered, worker not registered, parameter of another
//     shard; INVALID_ARGUMENT wrong shape or rank, NaN/Inf, sample_count <= 0, empty worker id,
//     missing payload, a sequence beyond the sequence horizon; OUT_OF_RANGE base_version < 0 or from the future; DATA_LOSS a sequence
//     older than the dedup window (its fate unknown); UNAVAILABLE the shard is shutting down.
//     Only transport-level failures end the stream: a message above the configured maximum
//     size ends the call with RESOURCE_EXHAUSTED (enforced by gRPC itself, before the handler
//     sees it); a message that does not parse as a Contribution (e.g. a worker_id that is not
//     UTF-8) ends it with INVALID_ARGUMENT naming its 1-based position in the stream (PushBytes);
//     an empty stream ends OK with no acks; a client that goes away ends it
//     CANCELLED. Every contribution answered before that is settled (its ack says how),
//     and nothing half-judged remains.
//   - Subscribe ends with UNAVAILABLE when the shard shuts down; the subscriber resubscribes
//     (with its versions in `have`) on the restarted shard.
//   - Pull with min_version waits (without holding any shard lock) for the version; it ends
//     DEADLINE_EXCEEDED shortly before the call's deadline, UNAVAILABLE at shutdown,
//     INVALID_ARGUMENT for a negative min_version.
//   - PushAck.current_version is the parameter's applied version for every result.
//   - Checkpoint (admin): INVALID_ARGUMENT for a malformed run id or cut 0;
//     FAILED_PRECONDITION without a checkpoint directory or model, or for a cut below the
//     newest of its run id; OK with already_written for that newest cut again.
//   - With tokens (ServiceOptions::tokens, server/auth.h) every call of this service is
//     authenticated first: UNAUTHENTICATED without a valid bearer token, PERMISSION_DENIED
//     when its role may not make the call, both before the request changes anything. A Push
//     stream is authenticated when it opens; a contribution as a worker id its token does not
//     list is answered REJECTED with PERMISSION_DENIED. Health checking and reflection are
//     other services and need no token (probes).
//   - No call ends UNKNOWN from an exception (GuardHandler): an allocation that fails ends it
//     RESOURCE_EXHAUSTED, any other exception INTERNAL. A Pull of a parameter whose value does
//     not fit max_pull_message_bytes is RESOURCE_EXHAUSTED before anything is sent.
//
// Thread-safety: safe for concurrent use (gRPC calls handlers from many threads).
#ifndef DION_SERVER_SERVICE_H_
#define DION_SERVER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "dion/v1/dion.grpc.pb.h"
#include "server/auth.h"
#include "server/shard.h"

namespace dion {

class ShardMetrics;

// The one conversion of an absl::Status into a grpc::Status (same code, same message).
grpc::Status ToGrpcStatus(const absl::Status& status);

// Runs the body of the handler of `method` so that no exception leaves it (gRPC would end the
// call UNKNOWN): std::bad_alloc ends it RESOURCE_EXHAUSTED, any other exception INTERNAL, both
// with a message naming the method and the exception.
grpc::Status GuardHandler(absl::string_view method, absl::FunctionRef<grpc::Status()> body);

// The largest ParameterValue Pull sends: a protobuf message must stay below 2 GiB; 1 MiB is
// left for the name, shape and counters.
inline constexpr int64_t kMaxPullMessageBytes = (int64_t{1} << 31) - (int64_t{1} << 20);

struct ServiceOptions {
  // Whether Pull may return optimizer state (include_optimizer_state). An admin operation,
  // off by default (dion-server --allow_optimizer_state_pull); PERMISSION_DENIED when false.
  bool allow_optimizer_state = false;
  // How often an idle Subscribe handler, or a Pull waiting for min_version, checks whether its
  // client went away.
  absl::Duration subscribe_poll = absl::Milliseconds(100);
  // A Pull of a parameter whose value (with optimizer state when asked) is larger is
  // RESOURCE_EXHAUSTED before anything is sent; at most kMaxPullMessageBytes counts.
  int64_t max_pull_message_bytes = kMaxPullMessageBytes;
  // Bearer tokens with roles (server/auth.h); null: no tokens, every caller is admin.
  std::shared_ptr<TokenAuthenticator> tokens;
};

class ParameterServerService final : public v1::ParameterServer::Service {
 public:
  // `shard` (and `metrics`, which may be null) must outlive the service.
  ParameterServerService(Shard* shard, ShardMetrics* metrics, const ServiceOptions& options);

  grpc::Status RegisterModel(grpc::ServerContext* context,
                             const v1::RegisterModelRequest* request,
                             v1::RegisterModelResponse* response) override;
  grpc::Status GetLayout(grpc::ServerContext* context, const v1::GetLayoutRequest* request,
                         v1::GetLayoutResponse* response) override;
  // Push is served by PushBytes (the generated typed handler is replaced in the constructor).
  grpc::Status Subscribe(grpc::ServerContext* context, const v1::SubscribeRequest* request,
                         grpc::ServerWriter<v1::VersionUpdate>* writer) override;
  grpc::Status Pull(grpc::ServerContext* context, const v1::PullRequest* request,
                    grpc::ServerWriter<v1::ParameterValue>* writer) override;
  grpc::Status Status(grpc::ServerContext* context, const v1::StatusRequest* request,
                      v1::StatusResponse* response) override;
  // Shard::CheckpointCut, with its codes (proto/dion/v1/dion.proto).
  grpc::Status Checkpoint(grpc::ServerContext* context, const v1::CheckpointRequest* request,
                          v1::CheckpointResponse* response) override;

  // Open Push streams (the connected-workers gauge).
  int64_t push_streams() const { return push_streams_.load(); }

 private:
  // Push over raw messages, parsed here: gRPC's typed Read() answers false both at the end of
  // the stream and for a message that does not parse, and only the latter is an error
  // (INVALID_ARGUMENT naming the message's 1-based position in the stream).
  grpc::Status PushBytes(grpc::ServerContext* context,
                         grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream);
  // The caller's principal when its role is one of `allowed` (every caller is an admin
  // without tokens); UNAUTHENTICATED or PERMISSION_DENIED naming `method` otherwise.
  grpc::Status Authorize(const grpc::ServerContext& context, absl::string_view method,
                         std::initializer_list<Role> allowed, Principal* principal);
  // A public handler: GuardHandler around Authorize, then `body` with the caller.
  grpc::Status Serve(const grpc::ServerContext& context, absl::string_view method,
                     std::initializer_list<Role> allowed,
                     absl::FunctionRef<grpc::Status(const Principal& caller)> body);
  // The handlers' bodies; the public handlers run them through GuardHandler.
  grpc::Status HandleRegisterModel(const Principal& caller,
                                   const v1::RegisterModelRequest* request,
                                   v1::RegisterModelResponse* response);
  grpc::Status HandleGetLayout(grpc::ServerContext* context, const v1::GetLayoutRequest* request,
                               v1::GetLayoutResponse* response);
  grpc::Status HandleSubscribe(grpc::ServerContext* context, const v1::SubscribeRequest* request,
                               grpc::ServerWriter<v1::VersionUpdate>* writer);
  grpc::Status HandlePull(grpc::ServerContext* context, const Principal& caller,
                          const v1::PullRequest* request,
                          grpc::ServerWriter<v1::ParameterValue>* writer);
  grpc::Status HandleStatus(grpc::ServerContext* context, const v1::StatusRequest* request,
                            v1::StatusResponse* response);
  grpc::Status HandleCheckpoint(grpc::ServerContext* context, const v1::CheckpointRequest* request,
                                v1::CheckpointResponse* response);
  // Judges one contribution and says how in the ack, which may be sent once the log is
  // durable through *durable_end (Shard::Submit).
  v1::PushAck Judge(const Principal& caller, const v1::Contribution& request,
                    uint64_t* durable_end);
  void AddPushStreams(int64_t delta);

  Shard* const shard_;
  ShardMetrics* const metrics_;
  const ServiceOptions options_;
  std::atomic<int64_t> push_streams_{0};
};

}  // namespace dion

#endif  // DION_SERVER_SERVICE_H_
