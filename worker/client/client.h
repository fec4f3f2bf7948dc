// The client library a training program uses to train against the dion-ps shards:
//
//   ClientOptions options;
//   options.shard_addresses = {"127.0.0.1:50051", "127.0.0.1:50052"};  // in shard-index order
//   options.worker_id = "worker-0";
//   absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, options);
//   std::vector<Matrix> weights;
//   while (training) {
//     (*client)->CopyWeights(&weights);                 // the replica, in table order
//     ... forward / backward with `weights` -> gradients (table order), loss
//     absl::Status s = (*client)->Submit(gradients, batch_size, loss);
//   }
//   (*client)->Flush(absl::Seconds(30));                // push what is left, wait for acks
//   (*client)->FlushAll(absl::Seconds(5));              // before exiting: the residuals too
//
// Connect registers the model on every shard (idempotent: every worker may do it), checks that
// each address serves the shard index it is listed at and that the layouts agree, pulls the
// initial weights and subscribes to new versions.
//
// Submit accumulates one local step. A Dion matrix goes through its own compressor (residual
// E, warm-started Qw, rank rw = CompressionRank(spec, compression_rank_fraction)); other
// parameters are sent dense. Each parameter has at most max_in_flight unacknowledged pushes;
// while that many are out, further steps accumulate locally instead of queueing messages, so a
// slow link automatically means more local steps per push. A push the shard rejects as not
// applied (shard unavailable, shutting down, restarted) is restored into the residual and goes
// out again with the next Submit or Flush (not straight from the refusal, which could loop at
// network speed), keeping its original base version: the shard bounds and weights its true
// staleness. A push answered STALE is older than the shard's max_staleness, the bound above
// which gradients are not applied: it is dropped and its samples counted (stale_dropped).
// When a Push stream is re-opened, what is in flight is sent again with its sequence, once per
// stream; DUPLICATE answers after such a retry mean "applied before". A push whose fate the
// shard cannot tell (REJECTED DATA_LOSS, older than its dedup window) is dropped rather than
// risk applying it twice, and is a fatal DataLoss error: it only happens when two processes
// share a worker id or sequence numbers are reused.
//
// The replica follows the shards' broadcasts: low-rank steps are applied, and on a checksum
// mismatch, a gap, or a version going backwards (a shard restarted from a checkpoint) the
// parameter is pulled in full.
//
// A parameter split by rows over several shards (docs/worker.md, "Split parameters") is
// compressed whole; each owner is pushed its block of the factors, the followers first and the
// leader (owner of the first rows) only once every follower staged it, and the leader's answer
// settles the contribution (a follower's refusal settles it without the leader). Its replica
// is assembled from the owners' blocks, each with its own version and checksum (a mismatch
// pulls that block from its owner); its version is the minimum over the blocks. Unavailable shards are retried with exponential backoff and
// jitter; after `reconnect.give_up_after` without success, Submit and Flush return
// Unavailable naming the shard.
//
// Thread-safety: safe for concurrent use. Submit and Flush are meant for one training thread;
// CopyWeights and stats may be called from any thread. Lock order: a parameter's accumulator
// lock, then its replica lock, then the client's own. A link's lock (Send) and the change
// lock are leaves: nothing else is taken while holding them, and the link never calls back
// while holding its lock. No lock is held across an RPC.
#ifndef DION_WORKER_CLIENT_H_
#define DION_WORKER_CLIENT_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/layout.h"
#include "common/matrix.h"
#include "common/model_table.h"
#include "common/contribution.h"
#include "common/mutex.h"
#include "common/param_spec.h"
#include "common/tls_config.h"
#include "worker/client/backoff.h"
#include "worker/client/worker_metrics.h"

namespace grpc {
class ChannelCredentials;
}  // namespace grpc

namespace dion {

// Wire messages and the link to one shard: defined by the library's private headers, so that a
// program including this header does not compile against gRPC or the generated protocol code.
namespace v1 {
class ParameterValue;
class ParameterVersion;
class PushAck;
class VersionUpdate;
}  // namespace v1
class ShardLink;
class PushRankController;
class UplinkProbe;
struct AckOutcome;

// How an acknowledged push was settled (ClientOptions::on_acknowledged).
enum class PushFate {
  kApplied,       // ACCEPTED, or DUPLICATE (applied before)
  kRestored,      // rejected as not applied: back in the residual, re-sent with its base version
  kDroppedStale,  // STALE: older than the shard's max_staleness; dropped
};

struct ClientOptions {
  std::vector<std::string> shard_addresses;  // host:port of shard 0, 1, ... in order
  std::string worker_id;                     // unique per worker; registered with every shard
  double compression_rank_fraction = 0.25;   // rank rw: CompressionRank below
  // Adaptive push rank (docs/worker.md "Adaptive push rank"): compression_rank_fraction is where
  // it starts and the highest it goes; the client halves it (and doubles it back) so that its
  // pushes use at most half of the uplink's measured rate (library header push_rank.h).
  bool auto_compression_rank = false;
  // Unacknowledged pushes per parameter, in [1, kMaxUnacknowledgedSpan] (2048, defined in the
  // library's gradient_accumulator.h).
  int max_in_flight = 2;
  absl::Duration rpc_deadline = absl::Seconds(10);  // every unary call
  // A Push stream whose oldest push stays unacknowledged this long is re-opened (the shard
  // hangs, or the connection died silently); in-flight pushes are re-sent. Keep it above
  // rpc_deadline: a resync pull after a rejection runs on the thread that reads the acks.
  absl::Duration ack_timeout = absl::Seconds(30);
  BackoffOptions reconnect;                  // retry of unavailable shards, and when to give up
  bool verify_checksums = true;              // check every applied low-rank step
  // Keep each replica's last change so CopyWeights can extrapolate (a trainer's lookahead);
  // doubles the replicas' memory.
  bool track_last_step = false;
  int64_t max_message_bytes = 64 << 20;
  // TLS and the bearer token of the connections to the shards (common/tls_config.h); the
  // default is plaintext without a token.
  TlsClientConfig tls;
  uint64_t seed = 1;                         // compressor warm starts and jitter
  // Differential privacy (docs/privacy.md): clip every local step's gradient and every
  // contribution to Frobenius norm dp_clip, per parameter, before compression and error
  // feedback. 0: off (no clipping, bit-identical to a client without the option).
  double dp_clip = 0.0;
  // First sequence number of every parameter. 0 picks the wall clock in microseconds, so a
  // worker restarted with the same id never reuses a sequence the shard has already seen.
  uint64_t first_sequence = 0;
  WorkerMetrics* metrics = nullptr;          // optional; not owned
  // Optional observer of every acknowledged contribution (payload in the mean units of the
  // wire) and how it was settled (not called for one whose fate is unknown, see above). Runs
  // on a link thread with the parameter's accumulator locked: keep it short. For monitoring
  // and tests.
  std::function<void(const Contribution&, PushFate)> on_acknowledged;
};

// Counters since Connect (also exported through WorkerMetrics when set).
struct ClientStats {
  int64_t pushes = 0;            // contributions sent (first sends, not re-sends)
  int64_t accepted = 0;
  int64_t duplicates = 0;
  int64_t refused = 0;           // rejected as not applied, restored into the residual
  int64_t stale_dropped = 0;     // answered STALE, dropped (PushFate::kDroppedStale)
  int64_t stale_dropped_samples = 0;  // the samples those carried
  int64_t resyncs = 0;           // full pulls after a gap, mismatch or version going back
  int64_t reconnects = 0;
  int64_t local_steps = 0;       // Submit calls
  int64_t sent_bytes = 0;        // payload bytes of first sends (serialized Contribution)
  int64_t dense_bytes = 0;       // what dense float32 gradients for those pushes would cost
  // The other direction: serialized bytes of the versions the shards broadcast (low-rank steps
  // and full values) and of the full values pulled to resync, and what one dense float32
  // value per such message would cost.
  int64_t received_bytes = 0;
  int64_t received_dense_bytes = 0;
  // Staleness tau of accepted pushes, as the shards reported it: a histogram with one bin per
  // value 0 .. kStalenessBins - 2 and a last bin for everything above.
  static constexpr int kStalenessBins = 9;
  std::array<int64_t, kStalenessBins> staleness{};
  int64_t staleness_sum = 0;
  // The push-rank fraction in use (compression_rank_fraction unless auto_compression_rank),
  // and with auto_compression_rank: its changes so far and the uplink rate it was chosen from
  // (the TCP delivery rate to the shards, push_rank.h; 0 until measured).
  bool adaptive_push_rank = false;
  double push_rank_fraction = 0;
  int64_t push_rank_changes = 0;
  double uplink_rate_bytes_per_second = 0;
};

// What Client::FlushAll pushed and what it could not. Norms are Frobenius norms, over all
// parameters together, in the accumulators' sum units (sums over samples of the gradients).
struct FlushReport {
  int residuals = 0;              // Dion parameters whose residual E was non-zero at the start
  double residual_norm = 0;       // the norm of those residuals
  int64_t pushes = 0;             // contributions taken while flushing
  // Pushes that carried only a residual, with sample_count 1 each (the smallest the protocol
  // allows: E's samples were counted by the pushes that left it behind).
  int64_t residual_only_pushes = 0;
  int64_t stale_dropped_samples = 0;  // dropped as stale while flushing
  // Left when FlushAll returned (all 0 after OkStatus): pushes still unacknowledged, and the
  // samples and norm of everything neither applied nor dropped (in flight, pending, residuals).
  int64_t unacknowledged = 0;
  int64_t unsettled_samples = 0;
  double unsettled_norm = 0;
};

// The rank of the factors (P, R) pushed for a Dion parameter of shape m x n at
// `compression_rank_fraction`: fraction * min(m, n) rounded, at least 1, and at most the
// break-even rank floor(m n / (m + n)), above which (m + n) r floats would cost more than the
// dense gradient's m n (at fraction 1 the pushes are then about dense-sized, not larger).
int CompressionRank(const ParamSpec& spec, double fraction);

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ModelTable& table,
                                                         const ClientOptions& options);
  ~Client();  // Close()
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // The parameter table (the order of CopyWeights and Submit) and where each one lives.
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const Layout& layout() const { return layout_; }

  // Copies every parameter of the replica into `weights` (resized to the table; each rows x
  // cols, 1-D parameters as 1 x n). Returns the sum of the parameters' versions (a cheap
  // "has anything changed" signal). With `lookahead` k > 0 (finite) and track_last_step, each
  // copy is extrapolated along the replica's last change, X + k (X - X_prev)
  // (Replica::Extrapolate): the point a trainer takes its gradient at. Evaluations pass 0.
  int64_t CopyWeights(std::vector<Matrix>* weights, double lookahead = 0) const;
  // The same into caller-owned views (table order, each rows x cols), e.g. a binding's numpy
  // arrays over a framework's tensors, so the weights are copied once. InvalidArgument (nothing
  // written) for a wrong count or shape.
  absl::StatusOr<int64_t> CopyWeightsInto(absl::Span<MatrixRef> weights,
                                          double lookahead = 0) const;
  bool tracks_last_step() const { return options_.track_last_step; }
  // The replica's version of parameter `index` of the table.
  int64_t version(int index) const;

  // One local step: `gradients` in table order (each rows x cols), the step's mean gradients
  // over `samples` > 0 samples, and its training loss. InvalidArgument (nothing accumulated)
  // for a wrong count, shape, non-finite value or samples <= 0; the client's fatal error
  // (Unavailable after giving up on a shard, or a contribution a shard rejected as malformed)
  // once there is one; else FailedPrecondition after Close.
  absl::Status Submit(absl::Span<const Matrix> gradients, int64_t samples, double loss);
  // The same over views of caller-owned memory (a binding's numpy arrays), without a copy.
  absl::Status Submit(absl::Span<const ConstMatrixRef> gradients, int64_t samples, double loss);
  // Pushes everything accumulated and waits until every push is acknowledged (refused ones
  // re-sent), or `timeout` (DeadlineExceeded). The fatal error, or FailedPrecondition once
  // closed, as for Submit (also when it happens during the wait).
  absl::Status Flush(absl::Duration timeout);
  // For a worker about to exit (SIGTERM): like Flush, and each Dion parameter's residual E goes
  // out whole too, as a full-rank factorisation (GradientAccumulator::TakeWhole; split into
  // several pushes when one would exceed max_message_bytes / 2), so nothing accumulated is
  // lost. OkStatus once everything was applied (or dropped as stale); else the error Flush
  // would return. `report` (optional) says what was pushed and, on an error, what is lost.
  absl::Status FlushAll(absl::Duration timeout, FlushReport* report = nullptr);
  // Waits until the replica version of every parameter i is above `versions[i]` (table order,
  // one per parameter): OkStatus; the client's fatal error if it fails meanwhile, else
  // FailedPrecondition if it is closed meanwhile; DeadlineExceeded naming the first
  // parameter still at or below its version after `timeout`. Woken by every applied update,
  // not by polling.
  absl::Status WaitForVersionsAbove(absl::Span<const int64_t> versions,
                                    absl::Duration timeout) const;

  ClientStats stats() const;
  // The first fatal error, OkStatus while there is none.
  absl::Status status() const;
  // Stops the links, cancelling calls in progress (it does not wait for RPC deadlines).
  // Idempotent; accumulated and in-flight gradients are dropped. Submit, Flush and
  // WaitForVersionsAbove then return FailedPrecondition (or the fatal error, if there was
  // one), and calls waiting in Flush or WaitForVersionsAbove return at once.
  void Close();

  // For tests: the sum, in the accumulator's sum units, of what is neither accepted nor in
  // flight for parameter `index` (see GradientAccumulator::Outstanding).
  Matrix Outstanding(int index) const;

 private:
  struct Parameter;
  Client(const ModelTable& table, const ClientOptions& options, Layout layout);
  // Connect's steps after validation: the links, registration with every shard, the initial
  // weights, then the links' streams.
  absl::Status Start(const ModelTable& table);
  void CreateLinks(const ModelTable& table);
  // Registers the model with shard `s` (retried while it is unavailable) and checks that it
  // is shard `s` of the listed count and places the parameters where this client does.
  absl::Status RegisterWith(int s);
  // Pulls every parameter (and block of a split one) shard `s` owns into the replicas.
  absl::Status PullInitialWeights(int s);
  // Sets p's replica (its block held by shard `s`, when split) to a value pulled from `s`.
  // FailedPrecondition for rows that are not s's block; Replica::Set's errors.
  // REQUIRES: s holds p (or a block of it).
  absl::Status SetPulled(Parameter& p, int s, const v1::ParameterValue& value);
  // SetPulled's steps: the pulled value checked and decoded (the block's shape when split),
  // then set as the part of the replica `s` holds (REQUIRES p.replica_mu), and whether that
  // part is in sync (REQUIRES p.replica_mu).
  absl::StatusOr<Matrix> DecodePulled(const Parameter& p, int s,
                                      const v1::ParameterValue& value) const;
  absl::Status SetPart(Parameter& p, int s, int64_t version, const Matrix& X,
                       uint64_t checksum);
  bool PartInSync(const Parameter& p, int s) const;
  // Takes and sends the next contribution of `p` if one is due (`whole`: with its residual,
  // GradientAccumulator::TakeWhole); whether one was sent. REQUIRES: p.accumulator_mu.
  bool MaybeSend(Parameter& p, bool whole = false);
  // Flush and FlushAll: sends (`whole`: residuals too) and waits until nothing is unsettled.
  // Counts in `residual_only_pushes` the pushes that carried nothing but a residual.
  absl::Status FlushUntilSettled(absl::Duration timeout, bool whole,
                                 int64_t* residual_only_pushes);
  // What FlushAll leaves unsettled, into `report`.
  void CountUnsettled(FlushReport& report) const;
  Parameter* Find(absl::string_view name) const;
  // A split parameter's pushes (client_split.cc; REQUIRES p.accumulator_mu): sends owner
  // `owner`'s block of `c` (an index into p.owners) and returns its serialized bytes; queues
  // on `shard`'s new Push stream `generation` the blocks still awaited from it; and advances
  // the commit by `shard`'s answer `ack`: true when that answer settles the contribution
  // (the leader's, or a follower's refusal), after sending the leader its block when it was
  // the last follower to stage it.
  int64_t SendBlock(Parameter& p, const Contribution& c, int owner);
  void ResendBlocks(Parameter& p, int shard, uint64_t generation);
  bool SplitAnswerSettles(Parameter& p, int shard, const v1::PushAck& ack,
                          const AckOutcome& outcome);
  void OnAck(int shard, const v1::PushAck& ack);
  void OnUpdate(int shard, v1::VersionUpdate& update);
  // Pulls the parameter from `shard` (of a split parameter: that owner's block) and replaces
  // it in the replica, unless the replica changed meanwhile and that part is in sync (an
  // update that arrived during the pull is at least as new).
  void Resync(Parameter& p, int shard, const char* reason);
  // Counts `bytes` received for p (a broadcast version or a pulled value) in the stats.
  void CountReceived(const Parameter& p, int64_t bytes);
  // Queues the in-flight pushes of `shard` on its Push stream of `generation`.
  void ResendInFlight(int shard, uint64_t generation);
  void Fail(const absl::Status& status);
  // The fatal error if there is one, else FailedPrecondition once closed, else OkStatus.
  absl::Status Usable() const;
  std::vector<v1::ParameterVersion> Have(int shard) const;
  // Change notification for the waits above (Flush, WaitForVersionsAbove): every
  // acknowledgement, applied update, resync and failure bumps a counter. A waiter reads the
  // counter, checks its condition, then waits until the counter moves (or `deadline`), so a
  // change between the check and the wait is never missed. change_mu_ is a leaf lock.
  void NotifyChange();
  uint64_t ChangeCount() const;
  void WaitForChange(uint64_t seen, absl::Time deadline) const;

  const ClientOptions options_;
  std::vector<ParamSpec> specs_;
  Layout layout_;
  std::vector<std::unique_ptr<Parameter>> parameters_;  // table order
  absl::flat_hash_map<std::string, int> index_of_;      // name -> table index
  // Of options_.tls, made once by Connect and shared by the links.
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  std::vector<std::unique_ptr<ShardLink>> links_;
  std::unique_ptr<PushRankController> push_rank_;  // null unless auto_compression_rank
  std::unique_ptr<UplinkProbe> uplink_;            // likewise: push_rank_'s link rate

  mutable Mutex mu_;
  absl::Status fatal_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  ClientStats stats_ ABSL_GUARDED_BY(mu_);

  mutable Mutex change_mu_;
  mutable CondVar change_cv_;
  uint64_t changes_ ABSL_GUARDED_BY(change_mu_) = 0;
};

}  // namespace dion

#endif  // DION_WORKER_CLIENT_H_
