#include "worker/shard_link.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

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
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_ms > 100 ? max_ms : 100);
  channel_ = grpc::CreateCustomChannel(options_.address, grpc::InsecureChannelCredentials(), args);
  stub_ = v1::ParameterServer::NewStub(channel_);
}

ShardLink::~ShardLink() { Stop(); }

absl::StatusOr<v1::RegisterModelResponse> ShardLink::Register() {
  grpc::ClientContext context;
  SetDeadline(context, options_.rpc_deadline);
  v1::RegisterModelResponse response;
  grpc::Status status = stub_->RegisterModel(&context, registration_, &response);
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
  v1::PullRequest request;
  for (const std::string& p : parameters) request.add_parameters(p);
  std::unique_ptr<grpc::ClientReader<v1::ParameterValue>> reader = stub_->Pull(&context, request);
  std::vector<v1::ParameterValue> values;
  v1::ParameterValue value;
  while (reader->Read(&value)) values.push_back(std::move(value));
  grpc::Status status = reader->Finish();
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

void ShardLink::Send(v1::Contribution contribution) {
  MutexLock lock(&mu_);
  if (stopping_ || gave_up_) return;  // the client learns of it through on_give_up / Stop
  outbox_.push_back(std::move(contribution));
  cv_.SignalAll();
}

void ShardLink::Stop() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    if (push_context_ != nullptr) push_context_->TryCancel();
    if (subscribe_context_ != nullptr) subscribe_context_->TryCancel();
    cv_.SignalAll();
  }
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

void ShardLink::PushLoop() {
  Backoff backoff(options_.reconnect, options_.seed);
  bool first = true;
  while (!stopping()) {
    // Register first: a shard restarted without a checkpoint has to learn the model again, and
    // a successful call proves the shard is back before a stream is opened.
    if (!first) {
      absl::StatusOr<v1::RegisterModelResponse> registered = Register();
      if (!registered.ok()) {
        if (!WaitToRetry(backoff, registered.status(), "RegisterModel")) return;
        continue;
      }
    }
    grpc::ClientContext context;
    {
      MutexLock lock(&mu_);
      if (stopping_ || gave_up_) return;
      push_context_ = &context;
      push_broken_ = false;
      outbox_.clear();  // on_push_stream_opened queues every unacknowledged contribution again
    }
    std::unique_ptr<grpc::ClientReaderWriter<v1::Contribution, v1::PushAck>> stream =
        stub_->Push(&context);
    if (!first && callbacks_.on_reconnect) callbacks_.on_reconnect();
    first = false;
    if (callbacks_.on_push_stream_opened) callbacks_.on_push_stream_opened();
    const absl::Time opened = absl::Now();
    std::thread reader([&] {
      v1::PushAck ack;
      while (stream->Read(&ack)) callbacks_.on_ack(ack);
      MutexLock lock(&mu_);
      push_broken_ = true;
      cv_.SignalAll();
    });
    while (true) {
      v1::Contribution next;
      {
        MutexLock lock(&mu_);
        while (!stopping_ && !gave_up_ && !push_broken_ && outbox_.empty()) cv_.Wait(&mu_);
        if (stopping_ || gave_up_ || push_broken_) break;
        next = std::move(outbox_.front());
        outbox_.pop_front();
      }
      if (!stream->Write(next)) break;
    }
    context.TryCancel();
    reader.join();
    const absl::Status status = FromGrpc(stream->Finish());
    {
      MutexLock lock(&mu_);
      push_context_ = nullptr;
    }
    if (stopping()) return;
    if (absl::Now() - opened >= kHealthyStream) backoff.Reset(absl::Now());
    if (!WaitToRetry(backoff, status, "the Push stream")) return;
  }
}

void ShardLink::SubscribeLoop() {
  Backoff backoff(options_.reconnect, options_.seed ^ 0x5u);
  bool first = true;
  while (!stopping()) {
    if (!first) {
      absl::StatusOr<v1::RegisterModelResponse> registered = Register();
      if (!registered.ok()) {
        if (!WaitToRetry(backoff, registered.status(), "RegisterModel")) return;
        continue;
      }
    }
    grpc::ClientContext context;
    v1::SubscribeRequest request;
    request.set_worker_id(options_.worker_id);
    if (callbacks_.have) {
      for (v1::ParameterVersion& held : callbacks_.have()) *request.add_have() = std::move(held);
    }
    {
      MutexLock lock(&mu_);
      if (stopping_ || gave_up_) return;
      subscribe_context_ = &context;
    }
    std::unique_ptr<grpc::ClientReader<v1::VersionUpdate>> reader =
        stub_->Subscribe(&context, request);
    if (!first && callbacks_.on_reconnect) callbacks_.on_reconnect();
    first = false;
    const absl::Time opened = absl::Now();
    v1::VersionUpdate update;
    while (reader->Read(&update)) callbacks_.on_update(update);
    const absl::Status status = FromGrpc(reader->Finish());
    {
      MutexLock lock(&mu_);
      subscribe_context_ = nullptr;
    }
    if (stopping()) return;
    if (absl::Now() - opened >= kHealthyStream) backoff.Reset(absl::Now());
    if (!WaitToRetry(backoff, status, "the Subscribe stream")) return;
  }
}

}  // namespace dion
