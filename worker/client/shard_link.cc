#include "worker/client/shard_link.h"

#include <optional>
#include <utility>

#include "absl/functional/function_ref.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/tls.h"

namespace dion {
namespace {

absl::Status FromGrpc(const grpc::Status& status) {
  // grpc::StatusCode and absl::StatusCode share the canonical code numbers.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

// A stream that stayed open this long ends an outage: the next failure starts a fresh retry
// budget. Shorter-lived streams keep the backoff growing, so a flapping shard is not hammered.
constexpr absl::Duration kHealthyStream = absl::Seconds(5);

// Stream endings that a reconnect cannot fix. RESOURCE_EXHAUSTED ends a stream only for a
// message over the size limit; the shard reports overload per contribution, in its acks.
bool IsPermanentStreamError(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
      return true;
    default:
      return false;
  }
}

}  // namespace

ShardLink::ShardLink(ShardLinkOptions options, v1::RegisterModelRequest registration,
                     ShardLinkCallbacks callbacks)
    : options_(std::move(options)),
      registration_(std::move(registration)),
      callbacks_(std::move(callbacks)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
  // gRPC's own reconnect backoff defaults to a 120 s cap; keep it within ours so a shard that
  // comes back is seen within one of our retry delays.
  const int max_ms = static_cast<int>(absl::ToInt64Milliseconds(options_.reconnect.max_delay));
  // Despite its name, gRPC reads GRPC_ARG_MIN_RECONNECT_BACKOFF_MS as the least time one
  // connection attempt (TCP connect plus the TLS handshake) is given, 20 s by default. At
  // 100 ms, handshakes on a loaded machine were cut off attempt after attempt ("tcp handshaker
  // shutdown", "Handshake read failed") until the client gave up: 4 of 4 dion local runs at a
  // load of 14 on 2 cores. A refused connection still fails at once and is retried after the
  // initial backoff.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 20000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_ms > 100 ? max_ms : 100);
  // Keepalive pings, also on idle streams: a connection that died without a reset (a node gone,
  // a dropped NAT entry) is detected within ~30 s and the link reconnects, instead of a
  // Subscribe stream that silently never delivers again. The shards permit pings this often
  // (server/dion_server.cc).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  AddTlsChannelArguments(options_.tls, &args);
  channel_ = grpc::CreateCustomChannel(
      options_.address,
      options_.credentials != nullptr ? options_.credentials : grpc::InsecureChannelCredentials(),
      args);
  stub_ = v1::ParameterServer::NewStub(channel_);
}

ShardLink::~ShardLink() { Stop(); }

bool ShardLink::TrackCall(grpc::ClientContext* context) {
  MutexLock lock(&mu_);
  if (stopping_) return false;
  calls_.insert(context);
  return true;
}

void ShardLink::UntrackCall(grpc::ClientContext* context) {
  MutexLock lock(&mu_);
  calls_.erase(context);
}

absl::StatusOr<v1::RegisterModelResponse> ShardLink::Register() {
  grpc::ClientContext context;
  SetDeadline(context, options_.rpc_deadline);
  if (!TrackCall(&context)) {
    return absl::CancelledError(absl::StrCat("RegisterModel on shard ", options_.shard_index,
                                             ": the link is stopping"));
  }
  v1::RegisterModelResponse response;
  grpc::Status status = stub_->RegisterModel(&context, registration_, &response);
  UntrackCall(&context);
  if (!status.ok()) {
    absl::Status s = FromGrpc(status);
    return absl::Status(s.code(), absl::StrCat("RegisterModel on shard ", options_.shard_index,
                                               " (", options_.address, "): ", s.message()));
  }
  return response;
}

absl::StatusOr<std::vector<v1::ParameterValue>> ShardLink::Pull(
    const std::vector<std::string>& parameters) {
  grpc::ClientContext context;
  SetDeadline(context, options_.rpc_deadline);
  if (!TrackCall(&context)) {
    return absl::CancelledError(absl::StrCat("Pull from shard ", options_.shard_index,
                                             ": the link is stopping"));
  }
  v1::PullRequest request;
  for (const std::string& p : parameters) request.add_parameters(p);
  std::vector<v1::ParameterValue> values;
  grpc::Status status;
  {
    std::unique_ptr<grpc::ClientReader<v1::ParameterValue>> reader =
        stub_->Pull(&context, request);
    v1::ParameterValue value;
    while (reader->Read(&value)) values.push_back(std::move(value));
    status = reader->Finish();
  }
  UntrackCall(&context);
  if (!status.ok()) {
    absl::Status s = FromGrpc(status);
    return absl::Status(s.code(), absl::StrCat("Pull from shard ", options_.shard_index, " (",
                                               options_.address, "): ", s.message()));
  }
  return values;
}

void ShardLink::Start() {
  {
    MutexLock lock(&mu_);
    if (started_) return;
    started_ = true;
  }
  push_thread_ = std::thread([this] { PushLoop(); });
  subscribe_thread_ = std::thread([this] { SubscribeLoop(); });
}

uint64_t ShardLink::Send(v1::Contribution contribution) {
  MutexLock lock(&mu_);
  if (stopping_ || gave_up_) return 0;  // the client learns of it through on_give_up / Stop
  outbox_.push_back(std::move(contribution));
  cv_.SignalAll();
  return generation_;
}

void ShardLink::Stop() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    if (push_context_ != nullptr) push_context_->TryCancel();
    if (subscribe_context_ != nullptr) subscribe_context_->TryCancel();
    for (grpc::ClientContext* call : calls_) call->TryCancel();
    cv_.SignalAll();
  }
  MutexLock join(&join_mu_);
  if (push_thread_.joinable()) push_thread_.join();
  if (subscribe_thread_.joinable()) subscribe_thread_.join();
}

bool ShardLink::stopping() const {
  MutexLock lock(&mu_);
  return stopping_ || gave_up_;
}

void ShardLink::GiveUp(const absl::Status& status) {
  {
    MutexLock lock(&mu_);
    if (gave_up_ || stopping_) return;
    gave_up_ = true;
    outbox_.clear();
    cv_.SignalAll();
  }
  if (callbacks_.on_give_up) callbacks_.on_give_up(status);
}

bool ShardLink::WaitToRetry(Backoff& backoff, const absl::Status& last_error, const char* what) {
  if (backoff.Expired(absl::Now())) {
    GiveUp(absl::UnavailableError(absl::StrCat(
        "shard ", options_.shard_index, " at ", options_.address, " stayed unavailable for ",
        absl::FormatDuration(options_.reconnect.give_up_after), " (", backoff.attempts(),
        " attempts); last error on ", what, ": ", last_error.message())));
    return false;
  }
  const absl::Time until = absl::Now() + backoff.NextDelay();
  MutexLock lock(&mu_);
  while (!stopping_ && !gave_up_) {
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    cv_.WaitWithTimeout(&mu_, left);
  }
  return !stopping_ && !gave_up_;
}

absl::Status ShardLink::Reregister(Backoff& backoff) {
  absl::StatusOr<v1::RegisterModelResponse> registered = Register();
  if (registered.ok()) return absl::OkStatus();
  if (!WaitToRetry(backoff, registered.status(), "RegisterModel")) {
    return absl::CancelledError("the link stopped or gave up");
  }
  return registered.status();
}

void ShardLink::ReconnectLoop(uint64_t seed, const char* what,
                              absl::FunctionRef<std::optional<StreamEnd>(bool reopened)> run) {
  Backoff backoff(options_.reconnect, seed);
  bool first = true;
  while (!stopping()) {
    if (!first) {
      const absl::Status registered = Reregister(backoff);
      if (absl::IsCancelled(registered)) return;
      if (!registered.ok()) continue;
    }
    const std::optional<StreamEnd> end = run(/*reopened=*/!first);
    if (!end.has_value() || stopping()) return;
    first = false;
    if (end->healthy) backoff.Reset(absl::Now());
    if (!WaitToRetry(backoff, end->status, what)) return;
  }
}

void ShardLink::PushLoop() {
  ReconnectLoop(options_.seed, "the Push stream",
                [this](bool reopened) { return RunPushStream(reopened); });
}

void ShardLink::SubscribeLoop() {
  ReconnectLoop(options_.seed ^ 0x5u, "the Subscribe stream",
                [this](bool reopened) { return RunSubscribeStream(reopened); });
}

uint64_t ShardLink::BeginPushStream(grpc::ClientContext* context) {
  MutexLock lock(&mu_);
  if (stopping_ || gave_up_) return 0;
  push_context_ = context;
  push_broken_ = false;
  // on_push_stream_opened queues every unacknowledged contribution again, except those queued
  // from here on (they carry this generation).
  outbox_.clear();
  unacknowledged_.clear();
  return ++generation_;
}

void ShardLink::ReadAcks(PushStream& stream, int64_t* acks) {
  v1::PushAck ack;
  while (stream.Read(&ack)) {
    ++*acks;
    {
      MutexLock lock(&mu_);
      if (!unacknowledged_.empty()) unacknowledged_.pop_front();
    }
    callbacks_.on_ack(ack);
  }
  MutexLock lock(&mu_);
  push_broken_ = true;
  cv_.SignalAll();
}

ShardLink::NextPush ShardLink::TakeNextPush(v1::Contribution* next) {
  MutexLock lock(&mu_);
  while (!stopping_ && !gave_up_ && !push_broken_) {
    // The oldest unacknowledged write bounds the wait: a shard that stopped answering (or a
    // connection that died without a reset) must not hold the in-flight pushes.
    if (!unacknowledged_.empty()) {
      const absl::Duration left = unacknowledged_.front() + options_.ack_timeout - absl::Now();
      if (left <= absl::ZeroDuration()) return NextPush::kAckTimedOut;
      if (!outbox_.empty()) break;
      cv_.WaitWithTimeout(&mu_, left);
    } else {
      if (!outbox_.empty()) break;
      cv_.Wait(&mu_);
    }
  }
  if (stopping_ || gave_up_ || push_broken_) return NextPush::kStreamEnded;
  *next = std::move(outbox_.front());
  outbox_.pop_front();
  unacknowledged_.push_back(absl::Now());
  return NextPush::kWrite;
}

ShardLink::NextPush ShardLink::WritePushes(PushStream& stream) {
  while (true) {
    v1::Contribution next;
    const NextPush taken = TakeNextPush(&next);
    if (taken != NextPush::kWrite) return taken;
    if (!stream.Write(next)) return NextPush::kWriteFailed;
  }
}

std::optional<ShardLink::StreamEnd> ShardLink::RunPushStream(bool reopened) {
  grpc::ClientContext context;
  const uint64_t generation = BeginPushStream(&context);
  if (generation == 0) return std::nullopt;
  std::unique_ptr<PushStream> stream = stub_->Push(&context);
  if (reopened && callbacks_.on_reconnect) callbacks_.on_reconnect();
  if (callbacks_.on_push_stream_opened) callbacks_.on_push_stream_opened(generation);
  const absl::Time opened = absl::Now();
  int64_t acks = 0;  // read by this thread after the reader is joined
  std::thread reader([&] { ReadAcks(*stream, &acks); });
  const NextPush ended = WritePushes(*stream);
  // Cancel only a stream that is still up (stop, ack timeout): cancelling one the shard ended
  // would replace the shard's status, which says why, with CANCELLED.
  bool broken;
  {
    MutexLock lock(&mu_);
    broken = push_broken_;
  }
  if (!broken && ended != NextPush::kWriteFailed) context.TryCancel();
  reader.join();
  absl::Status status = FromGrpc(stream->Finish());
  {
    MutexLock lock(&mu_);
    push_context_ = nullptr;
  }
  const bool ack_timed_out = ended == NextPush::kAckTimedOut;
  if (ack_timed_out) {
    status = absl::DeadlineExceededError(absl::StrCat(
        "a push stayed unacknowledged for ", absl::FormatDuration(options_.ack_timeout)));
  } else if (IsPermanentStreamError(status.code()) && !stopping()) {
    GiveUpOnPushStream(status);
    return std::nullopt;
  }
  // A stream that timed out without a single acknowledgement made no progress: it does not end
  // the outage, so a shard that accepts streams but never answers is given up on.
  const bool healthy = absl::Now() - opened >= kHealthyStream && (!ack_timed_out || acks > 0);
  return StreamEnd{std::move(status), healthy};
}

void ShardLink::GiveUpOnPushStream(const absl::Status& status) {
  // Re-sending cannot fix these: the same contributions would fail again until give_up_after,
  // and the error would then blame an outage.
  GiveUp(absl::Status(
      status.code(),
      absl::StrCat("shard ", options_.shard_index, " at ", options_.address,
                   " ended the Push stream with ", absl::StatusCodeToString(status.code()), ": ",
                   status.message(),
                   status.code() == absl::StatusCode::kResourceExhausted
                       ? " (a contribution is larger than the gRPC message limit: raise "
                         "--max_message_bytes on the shards and the workers, or lower the "
                         "rank fraction)"
                       : "")));
}

std::optional<ShardLink::StreamEnd> ShardLink::RunSubscribeStream(bool reopened) {
  grpc::ClientContext context;
  v1::SubscribeRequest request;
  request.set_worker_id(options_.worker_id);
  if (callbacks_.have) {
    for (v1::ParameterVersion& held : callbacks_.have()) *request.add_have() = std::move(held);
  }
  {
    MutexLock lock(&mu_);
    if (stopping_ || gave_up_) return std::nullopt;
    subscribe_context_ = &context;
  }
  std::unique_ptr<grpc::ClientReader<v1::VersionUpdate>> reader =
      stub_->Subscribe(&context, request);
  if (reopened && callbacks_.on_reconnect) callbacks_.on_reconnect();
  const absl::Time opened = absl::Now();
  v1::VersionUpdate update;
  while (reader->Read(&update)) callbacks_.on_update(update);
  absl::Status status = FromGrpc(reader->Finish());
  {
    MutexLock lock(&mu_);
    subscribe_context_ = nullptr;
  }
  return StreamEnd{std::move(status), absl::Now() - opened >= kHealthyStream};
}

}  // namespace dion
