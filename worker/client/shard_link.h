// The worker's connection to one shard: a gRPC channel, the Push stream (a sender thread
// writing queued contributions, a reader thread handing acknowledgements back) and the
// Subscribe stream (a thread handing version updates back), each re-opened with exponential
// backoff and jitter when the shard is unavailable. Before re-opening, the link registers the
// model again (RegisterModel is idempotent), so a shard restarted without a checkpoint gets the
// table back. After an outage longer than BackoffOptions::give_up_after the link stops and
// reports a clear error through on_give_up.
//
// The link keeps no contributions of its own: when the Push stream is re-opened it clears its
// queue, starts a new stream generation and calls on_push_stream_opened(generation); the client
// queues every unacknowledged contribution again with its original sequence (the shard's dedup
// makes that safe), except those it already queued in that generation. Send returns the
// generation it queued in, so that nothing is written twice on one stream: two copies of a
// sequence on one stream could be answered "refused" (restored into the residual) and then
// ACCEPTED, which would apply that gradient twice.
//
// Bounded waits: every unary call has the RPC deadline and Stop cancels it; a Push stream whose
// oldest written contribution stays unacknowledged for ack_timeout is cancelled and re-opened
// (a hung shard or a silently dead connection), which re-sends what was in flight.
//
// Thread-safety: Send, Pull, Register and Stop are safe for concurrent use. Callbacks run on
// the link's threads and must not call Stop.
#ifndef DION_WORKER_SHARD_LINK_H_
#define DION_WORKER_SHARD_LINK_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "common/tls_config.h"
#include "dion/v1/dion.grpc.pb.h"
#include "worker/client/backoff.h"

namespace dion {

struct ShardLinkOptions {
  int shard_index = 0;
  std::string address;                              // host:port
  std::string worker_id;
  absl::Duration rpc_deadline = absl::Seconds(10);  // every unary call and each Pull
  // A Push stream with a contribution unacknowledged this long is re-opened.
  absl::Duration ack_timeout = absl::Seconds(30);
  BackoffOptions reconnect;
  int64_t max_message_bytes = 64 << 20;             // largest message accepted from the shard
  uint64_t seed = 0;                                // jitter stream
  // The channel's credentials (common/tls.h; null: plaintext) and the TLS settings they were
  // made of (for the name override).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  TlsClientConfig tls;
};

struct ShardLinkCallbacks {
  std::function<void(const v1::PushAck&)> on_ack;                       // reader thread
  std::function<void(v1::VersionUpdate&)> on_update;                    // subscriber thread
  std::function<std::vector<v1::ParameterVersion>()> have;              // at (re)subscription
  // The Push stream of `generation` is open and the queue is empty: queue what is in flight.
  std::function<void(uint64_t generation)> on_push_stream_opened;      // sender thread
  std::function<void()> on_reconnect;                                   // any stream re-opened
  std::function<void(const absl::Status&)> on_give_up;                  // once
};

class ShardLink {
 public:
  ShardLink(ShardLinkOptions options, v1::RegisterModelRequest registration,
            ShardLinkCallbacks callbacks);
  ~ShardLink();  // Stop()
  ShardLink(const ShardLink&) = delete;
  ShardLink& operator=(const ShardLink&) = delete;

  // RegisterModel with the link's table and worker id, with the RPC deadline. Cancelled once
  // Stop has been called (also a call in progress).
  absl::StatusOr<v1::RegisterModelResponse> Register() ABSL_LOCKS_EXCLUDED(mu_);
  // Full values of `parameters` (empty: every parameter the shard owns), with the RPC deadline.
  // Cancelled once Stop has been called (also a call in progress).
  absl::StatusOr<std::vector<v1::ParameterValue>> Pull(const std::vector<std::string>& parameters)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Starts the Push and Subscribe threads. REQUIRES: called once.
  void Start();
  // Queues a contribution for the Push stream (the caller bounds how many are outstanding).
  // Returns the stream generation it was queued in, or 0 when the link is stopped or gave up
  // (the client learns of that through on_give_up / Stop).
  uint64_t Send(v1::Contribution contribution) ABSL_LOCKS_EXCLUDED(mu_);
  // Ends both streams, cancels unary calls in progress and joins the threads. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_, join_mu_);

  const ShardLinkOptions& options() const { return options_; }

 private:
  using PushStream = grpc::ClientReaderWriter<v1::Contribution, v1::PushAck>;
  // How one stream ended: its status and whether it lived long enough (and made progress) to
  // end the outage, which resets the backoff.
  struct StreamEnd {
    absl::Status status;
    bool healthy = false;
  };
  // Why WritePushes stopped writing.
  enum class NextPush { kWrite, kStreamEnded, kAckTimedOut, kWriteFailed };

  // The thread body shared by the Push and Subscribe streams: runs `run` (reopened: false the
  // first time) until stopping or giving up; between runs it re-registers the model and waits
  // out the backoff. `run` returns nullopt when the link stops or gave up.
  void ReconnectLoop(uint64_t seed, const char* what,
                     absl::FunctionRef<std::optional<StreamEnd>(bool reopened)> run);
  void PushLoop();
  void SubscribeLoop();
  // One Push stream from opening to its end; the reader thread hands acks to on_ack.
  std::optional<StreamEnd> RunPushStream(bool reopened);
  // Starts a new stream generation with `context` cancellable by Stop and an empty queue;
  // 0 when stopping or after giving up.
  uint64_t BeginPushStream(grpc::ClientContext* context) ABSL_LOCKS_EXCLUDED(mu_);
  void ReadAcks(PushStream& stream, int64_t* acks) ABSL_LOCKS_EXCLUDED(mu_);
  // Writes queued contributions until the stream ends, an ack times out or a write fails.
  NextPush WritePushes(PushStream& stream) ABSL_LOCKS_EXCLUDED(mu_);
  // Waits for the next queued contribution (kWrite, moved into `next`) or the end.
  NextPush TakeNextPush(v1::Contribution* next) ABSL_LOCKS_EXCLUDED(mu_);
  // The shard ended the Push stream with an error re-sending cannot fix.
  void GiveUpOnPushStream(const absl::Status& status);
  std::optional<StreamEnd> RunSubscribeStream(bool reopened);
  // Sleeps for the backoff's next delay or until Stop; false when the outage budget is spent
  // (after reporting it) or when stopping.
  bool WaitToRetry(Backoff& backoff, const absl::Status& last_error, const char* what);
  // Before a stream is re-opened: registers the model again (a shard restarted without a
  // checkpoint has to learn it again, and a successful call proves the shard is back). Ok: go
  // on; Cancelled: the link stopped or gave up (return); another error: after the backoff wait,
  // try again.
  absl::Status Reregister(Backoff& backoff);
  void GiveUp(const absl::Status& status);
  bool stopping() const ABSL_LOCKS_EXCLUDED(mu_);
  // Makes a unary call's context cancellable by Stop; false (do not call) when stopping.
  bool TrackCall(grpc::ClientContext* context) ABSL_LOCKS_EXCLUDED(mu_);
  void UntrackCall(grpc::ClientContext* context) ABSL_LOCKS_EXCLUDED(mu_);

  const ShardLinkOptions options_;
  const v1::RegisterModelRequest registration_;
  const ShardLinkCallbacks callbacks_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ParameterServer::Stub> stub_;

  mutable Mutex mu_;
  CondVar cv_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool gave_up_ ABSL_GUARDED_BY(mu_) = false;
  bool push_broken_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<v1::Contribution> outbox_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // of the current Push stream, from 1
  // When each contribution written on the current Push stream and not yet acknowledged was
  // written (acks come in order).
  std::deque<absl::Time> unacknowledged_ ABSL_GUARDED_BY(mu_);
  // The contexts of the open streams and unary calls, so Stop can cancel them.
  grpc::ClientContext* push_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  grpc::ClientContext* subscribe_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::flat_hash_set<grpc::ClientContext*> calls_ ABSL_GUARDED_BY(mu_);

  Mutex join_mu_;  // serialises joining the threads (Stop from two threads)
  std::thread push_thread_;
  std::thread subscribe_thread_;
};

}  // namespace dion

#endif  // DION_WORKER_SHARD_LINK_H_
