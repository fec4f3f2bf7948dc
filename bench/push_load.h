// Load generation for bench/push_bench.cc: Push clients that keep a bounded window of
// contributions in flight, a gate that bounds how far acknowledged contributions may run ahead
// of the shard's steps, and the echo baseline's service. Bench-only.
#ifndef DION_BENCH_PUSH_LOAD_H_
#define DION_BENCH_PUSH_LOAD_H_

#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "dion/v1/dion.grpc.pb.h"
#include "push_echo.grpc.pb.h"
#include "server/shard.h"

namespace dion::bench {

// Integer gRPC channel arguments (name, value), e.g. {"grpc.http2.bdp_probe", 0}.
using IntChannelArgs = std::vector<std::pair<std::string, int>>;

// A channel with no message size limits and a TCP connection of its own, plus `extra`;
// plaintext unless `credentials` is given.
inline std::shared_ptr<grpc::Channel> NewChannel(
    const std::string& address, std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
    const IntChannelArgs& extra = {}) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Channels with equal arguments to one address otherwise share a subchannel, i.e. one TCP
  // connection; every client gets its own, as separate worker processes would.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  for (const auto& [name, value] : extra) args.SetInt(name, value);
  return grpc::CreateCustomChannel(
      address, credentials != nullptr ? credentials : grpc::InsecureChannelCredentials(), args);
}

// The contributions `shard` has applied so far, over all its parameters. Waits for a running
// step (the parameter's mutex), which is when the count changes.
inline int64_t ContributionsApplied(const Shard& shard) {
  int64_t applied = 0;
  for (const ParameterStatus& p : shard.store().Statuses()) applied += p.contributions_applied;
  return applied;
}

// Bounds the backlog of a dion run: contributions sent but not yet applied by a step. Without
// it the server acknowledges as fast as it can decode and queues closed batches without limit
// (acks do not wait for steps). A poller thread follows the shard's applied count; Pass()
// blocks a writer while sent - applied >= max_backlog.
// Thread-safety: safe for concurrent use.
class BacklogGate {
 public:
  // `shard` must outlive the gate.
  BacklogGate(const Shard* shard, int64_t max_backlog)
      : BacklogGate([shard] { return ContributionsApplied(*shard); }, max_backlog) {}
  // `applied` gives the shard's contributions applied so far (push_bench's client process
  // reads it from the shard's process); it is polled every millisecond.
  BacklogGate(std::function<int64_t()> applied, int64_t max_backlog)
      : applied_fn_(std::move(applied)), max_backlog_(max_backlog), poller_([this] { Poll(); }) {}
  ~BacklogGate() {
    {
      MutexLock lock(&mu_);
      done_ = true;
    }
    poller_.join();
  }

  // Counts one more contribution sent once the backlog allows it; false when `stop()` turned
  // true while waiting.
  template <typename Stop>
  bool Pass(Stop stop) {
    MutexLock lock(&mu_);
    while (sent_ - applied_ >= max_backlog_) {
      reached_ = true;
      cv_.WaitWithTimeout(&mu_, absl::Milliseconds(5));
      if (stop()) return false;
    }
    ++sent_;
    return true;
  }

  // Whether a writer ever had to wait.
  bool reached() const {
    MutexLock lock(&mu_);
    return reached_;
  }

 private:
  void Poll() {
    while (true) {
      const int64_t applied = applied_fn_();
      {
        MutexLock lock(&mu_);
        if (done_) return;
        if (applied != applied_) {
          applied_ = applied;
          cv_.SignalAll();
        }
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
  }

  const std::function<int64_t()> applied_fn_;
  const int64_t max_backlog_;
  mutable Mutex mu_;
  CondVar cv_;
  bool reached_ ABSL_GUARDED_BY(mu_) = false;
  int64_t sent_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t applied_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread poller_;
};

// One client: its own channel and one Push stream (dion or echo) with at most `window`
// contributions unacknowledged. A writer thread sends, a reader thread counts the acks.
// Thread-safety: Start / Stop from one thread; the counters may be read from any thread.
class PushClient {
 public:
  using PushStream = grpc::ClientReaderWriter<v1::Contribution, v1::PushAck>;

  // `gate` (may be null) is passed before every write; `base_version` gives its base version.
  // `credentials`: TLS and a token (common/tls.h); null: plaintext. `channel_args`: added to
  // the channel's arguments.
  PushClient(const std::string& address, bool echo, v1::Contribution message, int window,
             BacklogGate* gate, std::function<int64_t()> base_version,
             std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
             const IntChannelArgs& channel_args = {})
      : channel_(NewChannel(address, std::move(credentials), channel_args)),
        message_(std::move(message)),
        window_(window),
        gate_(gate),
        base_version_(std::move(base_version)) {
    if (echo) {
      echo_ = PushEcho::NewStub(channel_);
    } else {
      dion_ = v1::ParameterServer::NewStub(channel_);
    }
  }
  ~PushClient() { Stop(); }

  // Dion only: RegisterModel with `request` (the table, and this client's worker id).
  grpc::Status Register(const v1::RegisterModelRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    v1::RegisterModelResponse response;
    return dion_->RegisterModel(&context, request, &response);
  }

  // Opens the stream; it ends at the latest after `timeout`.
  void Start(absl::Duration timeout) {
    context_.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    stream_ = echo_ != nullptr ? echo_->Push(&context_) : dion_->Push(&context_);
    reader_ = std::thread([this] { ReadLoop(); });
    writer_ = std::thread([this] { WriteLoop(); });
  }

  // Stops writing, waits for the outstanding acks and ends the call.
  grpc::Status Stop() {
    if (stream_ == nullptr || stopped_) return final_;
    {
      MutexLock lock(&mu_);
      stop_ = true;
    }
    cv_.SignalAll();
    writer_.join();  // WritesDone() at its end
    reader_.join();
    final_ = stream_->Finish();
    stopped_ = true;
    return final_;
  }

  // Before Start: also count acks and refusals in `acks` and `refused` (push_bench's client
  // process sums its clients' counters in shared memory for the shard's process to read).
  void CountAlsoIn(std::atomic<int64_t>* acks, std::atomic<int64_t>* refused) {
    extra_acks_ = acks;
    extra_refused_ = refused;
  }

  int64_t acks() const { return acks_.load(std::memory_order_relaxed); }
  bool stopping() const {
    MutexLock lock(&mu_);
    return stop_;
  }
  int64_t refused() const { return refused_.load(std::memory_order_relaxed); }
  std::string first_refusal() const {
    MutexLock lock(&mu_);
    return first_refusal_;
  }

 private:
  void WriteLoop() {
    uint64_t sequence = 0;
    while (true) {
      {
        MutexLock lock(&mu_);
        while (in_flight_ >= window_ && !stop_ && !reader_done_) cv_.Wait(&mu_);
        if (stop_ || reader_done_) break;
        ++in_flight_;  // before the write, so the ack can never arrive first
      }
      if (gate_ != nullptr && !gate_->Pass([this] { return stopping(); })) break;
      message_.set_sequence(++sequence);
      message_.set_base_version(base_version_());
      if (!stream_->Write(message_)) break;  // the call ended (deadline, server gone)
    }
    stream_->WritesDone();
  }

  void ReadLoop() {
    v1::PushAck ack;
    while (stream_->Read(&ack)) {
      if (ack.result() != v1::PUSH_RESULT_ACCEPTED) {
        if (extra_refused_ != nullptr) extra_refused_->fetch_add(1, std::memory_order_relaxed);
        if (refused_.fetch_add(1) == 0) {
          MutexLock lock(&mu_);
          first_refusal_ = absl::StrCat(v1::PushResult_Name(ack.result()), ": ", ack.message());
        }
      }
      acks_.fetch_add(1, std::memory_order_relaxed);
      if (extra_acks_ != nullptr) extra_acks_->fetch_add(1, std::memory_order_relaxed);
      MutexLock lock(&mu_);
      --in_flight_;
      cv_.Signal();
    }
    MutexLock lock(&mu_);
    reader_done_ = true;
    cv_.SignalAll();
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ParameterServer::Stub> dion_;
  std::unique_ptr<PushEcho::Stub> echo_;
  v1::Contribution message_;  // the writer's
  const int window_;
  BacklogGate* const gate_;
  const std::function<int64_t()> base_version_;
  grpc::ClientContext context_;
  std::unique_ptr<PushStream> stream_;
  std::thread writer_, reader_;
  bool stopped_ = false;
  grpc::Status final_;

  mutable Mutex mu_;
  CondVar cv_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool reader_done_ ABSL_GUARDED_BY(mu_) = false;
  std::string first_refusal_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> acks_{0};
  std::atomic<int64_t> refused_{0};
  std::atomic<int64_t>* extra_acks_ = nullptr;  // set before Start, then read only
  std::atomic<int64_t>* extra_refused_ = nullptr;
};

// The echo baseline's handler: parse, answer, nothing else (same sync API as the real service).
class EchoService final : public PushEcho::Service {
 public:
  grpc::Status Push(grpc::ServerContext* context,
                    grpc::ServerReaderWriter<v1::PushAck, v1::Contribution>* stream) override {
    v1::Contribution request;
    v1::PushAck ack;
    while (stream->Read(&request)) {
      ack.set_sequence(request.sequence());
      ack.set_parameter(request.parameter());
      ack.set_result(v1::PUSH_RESULT_ACCEPTED);
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }
};

}  // namespace dion::bench

#endif  // DION_BENCH_PUSH_LOAD_H_
