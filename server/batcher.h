// The batcher of one parameter: collects validated contributions into the batch of the next
// step (docs/server.md, "Batching", "Staleness policies" and "Dedup").
//
// For each contribution it
//   - refuses a base version from the future (OutOfRange, nothing changes);
//   - with differential privacy on, refuses a payload above the clip (InvalidArgument,
//     nothing recorded: CheckClipped in server/dp_noise.h);
//   - refuses (InvalidArgument, nothing recorded) a sequence above SequenceHorizon():
//     accepting it would force the dedup floor so far that every later sequence of the worker
//     would be unknown (a lock-out);
//   - answers DUPLICATE when (worker, sequence) was accepted before (server/sequence_window.h),
//     and refuses (DataLoss, nothing changes) a sequence so far below the dedup window
//     that the window cannot tell whether it was accepted;
//   - computes tau = version() - base_version and answers STALE when tau > max_staleness;
//   - otherwise accepts it with raw weight sample_count * w(tau) and records the sequence.
// Only accepted sequences are remembered: a contribution refused as stale and retried with
// the same sequence is judged again, so a lost STALE ack can never turn into a DUPLICATE that
// would make the worker drop its residual.
//
// A batch closes, whichever comes first, when its samples reach the sample target, when K
// distinct workers contributed, when `deadline` has passed since its first contribution (the
// owner calls CloseIfDue() at deadline()), or when it holds max_contributions. The closed batch
// carries weights samples_i * w(tau_i) normalised to sum 1, and the version it applies to.
//
// Versions: version() is the version the open batch will be applied to. It starts at the
// parameter's version and goes up by one per closed batch, so tau counts exactly the steps
// between the worker's copy and the step that uses its contribution, even while earlier
// closed batches are still being applied. The owner must apply closed batches in order.
//
// Adaptive targets (options.adaptive), so steps neither starve nor pile up:
//   rate      lambda = EWMA over closed batches of samples / (time since the previous close)
//   interval  T      = max(min_step_interval, EWMA of ReportStepDuration())
//   samples target   = clamp(round(lambda * T), min_target_samples, max_target_samples)
//   K                = clamp(workers seen within worker_idle, 1, target_workers)
// i.e. a batch holds about what arrives while the previous step runs, and a K larger than the
// number of live workers does not make every batch wait for the deadline. Until a rate has been
// measured the configured target_samples applies. The deadline stays as configured: it is the
// latency bound.
//
// Thread-safety: safe for concurrent use.
#ifndef DION_SERVER_BATCHER_H_
#define DION_SERVER_BATCHER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "absl/time/time.h"
#include "server/clock.h"
#include "server/dp_noise.h"
#include "common/contribution.h"
#include "server/sequence_window.h"
#include "server/staleness.h"

namespace dion {

struct BatcherOptions {
  int64_t target_samples = 0;   // close when the batch holds this many samples (0: no target)
  int target_workers = 0;       // close when K distinct workers contributed (0: no target)
  absl::Duration deadline = absl::Milliseconds(50);  // after the first contribution; infinite: off
  int max_contributions = 1024; // close when the batch holds this many contributions
  bool adaptive = true;         // adapt the sample target and K (rule in the file comment)
  absl::Duration min_step_interval = absl::Milliseconds(5);  // adaptive: shortest T
  int64_t min_target_samples = 1;        // adaptive: lower clamp of the sample target
  int64_t max_target_samples = 1 << 20;  // adaptive: upper clamp of the sample target
  double smoothing = 0.2;       // adaptive: EWMA factor in (0, 1] for rate and step duration
  absl::Duration worker_idle = absl::Seconds(10);  // adaptive: a worker counts as live this long
  uint64_t dedup_window = 4096; // sequences remembered per worker (sequence_window.h)
  // Differential privacy (server/dp_noise.h): when enabled, every closed batch gets a fresh
  // Batch::noise_seed and its noise_stddev (BatchNoiseStddev), recorded in the journal with
  // it. Off: noise_seed stays 0.
  DpOptions dp;
  StalenessOptions staleness;
};

// InvalidArgument naming the field; also when no closing rule is active at all.
absl::Status ValidateBatcherOptions(const BatcherOptions& options);

// How far past the shard's clock (in Unix microseconds) a sequence may lie: workers number
// from the wall clock by default (worker/client/client.h first_sequence), with clocks that may
// run ahead of the shard's.
inline constexpr uint64_t kSequenceClockSlackMicros = uint64_t{86'400'000'000};  // one day

// The highest sequence a worker may push for a parameter: max(highest + window, clock in Unix
// microseconds + kSequenceClockSlackMicros), saturating, where `highest` is the highest sequence
// accepted from it for the parameter (0 when none). Anything above is refused.
uint64_t SequenceHorizon(uint64_t highest, uint64_t window, absl::Time now);

// Where a batcher records what it accepts and how its batches close (the shard's write-ahead
// log, server/shard_log.h). Called under the batcher's lock, so one parameter's records are in
// the order of its batcher's decisions. Implementations must be thread-safe: batchers of
// different parameters call concurrently.
class BatchJournal {
 public:
  virtual ~BatchJournal() = default;
  // Before an accepted contribution changes any state; an error refuses the contribution with
  // nothing changed. Returns the log offset that must be durable before the acceptance is
  // acknowledged.
  virtual absl::StatusOr<uint64_t> Accepted(const Contribution& contribution) = 0;
  // When a batch closes (entries in summation order, final weights). Returns the log offset
  // that must be durable before the batch's step is published.
  virtual absl::StatusOr<uint64_t> Closed(const Batch& batch) = 0;
};

// A closed batch as a journal recorded it, for recovery: everything but the contributions.
struct LoggedBatch {
  struct Member {
    std::string worker_id;
    uint64_t sequence = 0;
    int64_t staleness = 0;
    double weight = 0.0;
  };
  std::string parameter;
  int64_t version = 0;
  CloseReason reason = CloseReason::kFlush;
  std::vector<Member> members;  // summation order
  uint64_t noise_seed = 0;      // Batch::noise_seed
  double noise_stddev = 0.0;    // Batch::noise_stddev
};

// The targets in force (after adaptation).
struct BatchTargets {
  int64_t samples = 0;  // 0: none
  int workers = 0;      // 0: none
  absl::Duration deadline;
};

struct OfferResult {
  PushOutcome result = PushOutcome::kAccepted;
  int64_t version = 0;     // version() when the contribution was judged
  int64_t staleness = 0;   // tau
  double weight = 0.0;     // w(tau) (before the sample count and normalisation); 0 unless accepted
  std::optional<Batch> closed;  // the batch this contribution completed, if it did
  // With a journal: the log offset to wait for (BatchJournal) before acknowledging; 0 without.
  uint64_t journal_end = 0;
};

struct BatcherStats {
  int64_t accepted = 0;
  int64_t duplicate = 0;
  int64_t stale = 0;
  int64_t unknown = 0;  // refused: sequence below the dedup window, fate unknown
  int64_t batches = 0;  // closed
  int64_t open_contributions = 0;
  int64_t open_samples = 0;
};

// Dedup state of one worker, for checkpoints.
struct WorkerDedupState {
  std::string worker_id;
  uint64_t floor = 0;
  uint64_t forced_floor = 0;   // SequenceWindow::forced_floor(); <= floor
  std::vector<uint64_t> seen;  // accepted sequences above the floor
};

class Batcher {
 public:
  // `version` is the parameter's current version. `journal` may be null (nothing recorded).
  // REQUIRES: ValidateBatcherOptions(options) ok; clock and journal outlive the batcher.
  Batcher(std::string parameter, const BatcherOptions& options, int64_t version,
          const Clock* clock, BatchJournal* journal = nullptr);

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Judges a validated contribution. Errors, with nothing changed: InvalidArgument for another
  // parameter, OutOfRange for base_version > version(), DataLoss for a sequence whose dedup
  // state is unknown (below a forced floor of its worker's window; the message says so), the
  // journal's error when it cannot record an accepted contribution.
  absl::StatusOr<OfferResult> Offer(ValidatedContribution validated) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether `sequence` of `worker_id` was accepted before (what Offer would answer DUPLICATE).
  // Read-only: lets a shard that no longer accepts anything still tell a client that a re-sent
  // contribution is already in, instead of refusing it and having it applied twice.
  bool AlreadyAccepted(absl::string_view worker_id, uint64_t sequence) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // Closes the open batch if its deadline has passed.
  std::optional<Batch> CloseIfDue() ABSL_LOCKS_EXCLUDED(mu_);
  // Closes the open batch now if it is not empty (shutdown, before a checkpoint).
  std::optional<Batch> Flush() ABSL_LOCKS_EXCLUDED(mu_);
  // When the open batch must close; nullopt when it is empty or has no deadline.
  std::optional<absl::Time> NextDeadline() const ABSL_LOCKS_EXCLUDED(mu_);

  // Feeds the adaptive interval T with the measured duration of a step of this parameter.
  void ReportStepDuration(absl::Duration duration) ABSL_LOCKS_EXCLUDED(mu_);

  int64_t version() const ABSL_LOCKS_EXCLUDED(mu_);
  BatchTargets targets() const ABSL_LOCKS_EXCLUDED(mu_);
  // Smoothed arrival rate in samples per second (0 before two batches closed).
  double arrival_rate() const ABSL_LOCKS_EXCLUDED(mu_);
  BatcherStats stats() const ABSL_LOCKS_EXCLUDED(mu_);
  const std::string& parameter() const { return parameter_; }

  // Recovery from a journal: Restore re-accepts a contribution the log says was accepted (no
  // journal call, no closing rule), RestoreClose closes the open batch as the log recorded it,
  // with the logged weights. DataLoss when the log disagrees with the batcher's state (a
  // sequence seen twice, a base version outside [0, version()], another version or other
  // members); the batcher is then unusable.
  absl::Status Restore(ValidatedContribution contribution) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Batch> RestoreClose(const LoggedBatch& logged) ABSL_LOCKS_EXCLUDED(mu_);

  // Dedup state for checkpoints, sorted by worker id; Import replaces it.
  std::vector<WorkerDedupState> ExportDedup() const ABSL_LOCKS_EXCLUDED(mu_);
  void ImportDedup(const std::vector<WorkerDedupState>& state) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct OpenContribution {
    ValidatedContribution contribution;
    int64_t staleness;
    double raw_weight;  // sample_count * w(tau)
  };

  BatchTargets TargetsLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The reason the open batch must close now, if any.
  std::optional<CloseReason> ShouldCloseLocked(absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Closes the open batch and, with `record`, records it in the journal (if any);
  // *journal_end, when not null, is raised to the offset the journal returned. A journal error
  // is not returned: the journal is broken then, and waiting for its durability reports it.
  Batch CloseLocked(CloseReason reason, absl::Time now, uint64_t* journal_end = nullptr,
                    bool record = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds an accepted contribution to the open batch and records its sequence.
  void AddOpenLocked(ValidatedContribution validated, int64_t staleness, double weight,
                     absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string parameter_;
  const BatcherOptions options_;
  const StalenessPolicy staleness_;
  const Clock* const clock_;
  BatchJournal* const journal_;  // may be null

  mutable Mutex mu_;
  int64_t version_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, SequenceWindow> dedup_ ABSL_GUARDED_BY(mu_);

  // The open batch.
  std::vector<OpenContribution> open_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int> open_workers_ ABSL_GUARDED_BY(mu_);
  int64_t open_samples_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time opened_ ABSL_GUARDED_BY(mu_);

  // Adaptation.
  std::optional<absl::Time> last_close_ ABSL_GUARDED_BY(mu_);
  double rate_ ABSL_GUARDED_BY(mu_) = 0.0;  // samples per second, 0 = not measured yet
  std::optional<double> step_seconds_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Time> last_seen_ ABSL_GUARDED_BY(mu_);

  BatcherStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dion

#endif  // DION_SERVER_BATCHER_H_
