// One parameter-server shard, below the network: the parameter store, one batcher per owned
// parameter, the step queue that applies closed batches (server/step_queue.h), the
// broadcaster, push accounting, and the optional metrics and checkpointer (docs/server.md,
// "Step pipeline").
//
// Flow of a contribution: Push (on the caller's thread: validate, offer to the parameter's
// batcher) -> a closed batch goes to the step queue -> a compute thread applies it
// (ParameterStore::ApplyBatch) -> the new version goes to the broadcaster. Steps never run on
// the caller's thread. A deadline thread closes batches whose deadline passed.
//
// Checkpoints (docs/server.md, "Checkpoints"): a checkpoint is cut at one instant, with new
// contributions held off for that instant only: every open batch is closed, every parameter is
// held at the version it has once the batches closed so far are applied
// (server/snapshot_slot.h), the dedup windows and workers are copied, and the write-ahead log
// starts the file of the checkpoint, which thus holds exactly what follows the cut. The
// parameters are then copied and written one by one while pushes and steps go on, so no
// contribution is both acknowledged and missing from the checkpoint and its log. The same
// holds without a log, minus the log. Create() restores the newest valid checkpoint (or the
// cut options.restore_cut, which it then checkpoints at once); a background thread
// checkpoints every `checkpoint_interval`, and Shutdown() takes a last one.
// CheckpointCut() writes a coordinated checkpoint (server/checkpoint/checkpoint_cut.h).
//
// Write-ahead log (with `wal_dir`, server/shard_log.h): a registration, a new worker and an
// accepted contribution are durable (per `wal_sync`) before they are acknowledged, and a closed
// batch before its step is applied; Create() replays the log on top of the restored
// checkpoint, and a checkpoint starts a new log. If the log cannot be written, the shard
// acknowledges nothing more (Unavailable) and applies no further step: restart it.
//
// Backpressure: a Push whose parameter already has `max_pending_batches` closed batches waiting
// waits (holding no lock of the shard) until one is taken, so workers faster than the steps
// are slowed down instead of growing the shard's memory without bound.
//
// Thread-safety: safe for concurrent use. Lock order: checkpoint_mu_ before gate_; a lane's
// snapshot slot before the store.
#ifndef DION_SERVER_SHARD_H_
#define DION_SERVER_SHARD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "server/batcher.h"
#include "server/broadcaster.h"
#include "server/checkpoint/checkpoint_cut.h"
#include "server/checkpoint/checkpointer.h"
#include "server/clock.h"
#include "common/contribution.h"
#include "common/model_table.h"
#include "server/parameter_store.h"
#include "server/push_accounting.h"
#include "server/row_stage.h"
#include "server/shard_log.h"
#include "server/snapshot_slot.h"
#include "server/split_peers.h"
#include "server/step_queue.h"

namespace dion {

class ShardMetrics;

struct ShardOptions {
  StoreOptions store;                 // shard index and count
  BatcherOptions batcher;             // one batcher per owned parameter, all alike
  BroadcasterOptions broadcaster;
  int compute_threads = 2;            // threads applying steps (>= 1)
  // Closed batches of one parameter waiting for the compute pool before Push waits (>= 1).
  int max_pending_batches = 4;
  std::string checkpoint_dir;         // empty: no checkpoints
  int checkpoint_keep_last = 3;       // complete checkpoints kept
  // Background checkpoint period; zero or infinite: only on Shutdown() and Checkpoint().
  absl::Duration checkpoint_interval = absl::Minutes(10);
  // Restore the coordinated checkpoint of this cut (>= 1; needs checkpoint_dir) instead of the
  // newest, and of this run id (empty: the only run that has the cut); start fails if absent.
  // The restored state is checkpointed at once, so it is the newest checkpoint from then on.
  uint64_t restore_cut = 0;
  std::string restore_run_id;
  const Clock* clock = Clock::Real(); // for the batchers' deadlines and rates
  // Write-ahead log directory; empty: no log. Needs checkpoint_dir (checkpoints truncate it).
  std::string wal_dir;
  LogSync wal_sync = LogSync::Always();
  RecoverMode wal_recover = RecoverMode::kStrict;
  // The other owners of split parameters (server/split_peers.h; not owned, outlives the
  // shard). Null: a table that gives this shard rows of a split parameter is refused.
  SplitPeers* split_peers = nullptr;
  // Contributions a follower of a split parameter holds staged for its leader's batches, per
  // parameter (server/row_stage.h).
  int64_t max_staged = 4096;
  // A leader's failed step of a split parameter is retried after this, doubling up to
  // split_retry_max, until it succeeds or the shard shuts down.
  absl::Duration split_retry_initial = absl::Milliseconds(50);
  absl::Duration split_retry_max = absl::Seconds(2);
  // Fault tests only: called at the start of every StepRows; an error fails it (this follower
  // takes no part in that step, as if the leader's command had not arrived). Null: none.
  std::function<absl::Status(const StepRowsCommand&)> step_rows_fault;
  // Crash tests only: called by the leader of a split parameter at two points of each step,
  // with the version the step produces: `answered` false once the batch is durable in the log
  // and before any follower is asked, true after the step is applied here (every follower
  // answered, or a follower's sums were used) and before it is committed to the log. Null:
  // none.
  std::function<void(int64_t step, bool answered)> leader_step_hook;
};

// InvalidArgument naming the field.
absl::Status ValidateShardOptions(const ShardOptions& options);

// How a contribution was judged.
struct PushReply {
  PushOutcome result = PushOutcome::kAccepted;  // never kRejected (that is an error status)
  // The parameter's latest applied version when the contribution was judged (what a replica
  // can hold; PushAck.current_version).
  int64_t applied_version = 0;
  // The version the open batch applies to when judged (Batcher::version(), >= applied_version):
  // tau = batch_version - base_version.
  int64_t batch_version = 0;
  int64_t staleness = 0;  // tau, for accepted and stale contributions
  // Submit only: the write-ahead log offset that must be durable before this reply may be
  // sent (WaitDurable); 0 when nothing needs to be.
  uint64_t durable_end = 0;
};

struct ShardStatus {
  struct Parameter {
    ParameterStatus status;  // version, steps, contributions applied
    PushCounts pushes;
  };
  struct Worker {
    std::string worker_id;
    PushCounts pushes;
    double last_loss = 0.0;
  };
  int shard_index = 0;
  int num_shards = 1;
  bool model_registered = false;
  std::string model_name;
  std::vector<Parameter> parameters;  // owned, table order
  std::vector<Worker> workers;        // registered workers, sorted by id
  PushCounts pushes;                  // all pushes, including those refused before a lookup
  int64_t subscribers = 0;
  int64_t failed_steps = 0;           // batches ApplyBatch refused (a bug if ever non-zero)
  int64_t pending_batches = 0;        // closed batches not yet applied (all parameters)
  // The most closed batches one parameter has had waiting at once since the start:
  // max_pending_batches plus at most one per concurrent Push.
  int64_t max_pending_batches_seen = 0;
  int64_t backpressure_waits = 0;     // pushes that waited for their parameter's backlog
  bool wal = false;                   // a write-ahead log is kept
  uint64_t wal_syncs = 0;             // its fdatasyncs since the start
  LogReplayStats wal_replayed;        // what the start replayed
  CutTag newest_cut;                  // of the newest coordinated checkpoint; empty: none
  // The longest a checkpoint's cut held new contributions off since the start (waiting for
  // the gate included): what a checkpoint can make a push wait.
  absl::Duration longest_checkpoint_cut = absl::ZeroDuration();
  // Differential privacy (options.batcher.dp), when on: steps are the owned parameters'
  // versions summed (batches applied since registration), spent what the accountant says.
  struct Privacy {
    DpOptions options;
    int64_t steps = 0;
    PrivacySpent spent;
  };
  std::optional<Privacy> privacy;
};

class Shard {
 public:
  // A shard with the given options, restored from the newest valid checkpoint under
  // options.checkpoint_dir if there is one. InvalidArgument for bad options; the checkpointer's
  // error when checkpoints exist but none can be restored. `metrics` may be null and must
  // otherwise outlive the shard.
  static absl::StatusOr<std::unique_ptr<Shard>> Create(const ShardOptions& options,
                                                       ShardMetrics* metrics = nullptr);
  // Shutdown(), then joins the threads.
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  // ParameterStore::RegisterModel, and the batchers of the owned parameters when new.
  absl::StatusOr<bool> RegisterModel(const ModelTable& table) ABSL_LOCKS_EXCLUDED(gate_);
  // ParameterStore::RegisterWorker; a new worker is logged (when there is a log) first.
  absl::Status RegisterWorker(absl::string_view worker_id) ABSL_LOCKS_EXCLUDED(gate_);

  // Validates a contribution (ParameterStore::Validate codes) and offers it to
  // its parameter's batcher; a batch it completes goes to the compute pool. Waits first while
  // the parameter has max_pending_batches closed batches waiting (backpressure, file comment).
  // Unavailable once shutdown began. Every outcome, errors included, is counted (Status(),
  // metrics).
  // Submit, then WaitDurable: the reply may be sent when this returns.
  absl::StatusOr<PushReply> Push(Contribution contribution) ABSL_LOCKS_EXCLUDED(gate_);
  // Push without the wait for the log: the reply may only be sent after
  // WaitDurable(reply.durable_end) succeeded (server/push_ack_writer.h).
  absl::StatusOr<PushReply> Submit(Contribution contribution) ABSL_LOCKS_EXCLUDED(gate_);
  // Returns once the log is durable through `end` (at once without a log, or for 0);
  // Unavailable, saying that nothing is acknowledged, when the log cannot be written.
  absl::Status WaitDurable(uint64_t end);
  // A follower's part of a step of a split parameter, on the leader's command
  // (ShardPeer.StepRows; docs/protocol.md, "Split parameters"): folds the named staged
  // contributions into its rows and steps with the other owners. Codes: peer.proto's StepRows.
  // Runs on the caller's thread; steps of one parameter are serialised by the store.
  absl::StatusOr<StepRowsReply> StepRows(const StepRowsCommand& command)
      ABSL_LOCKS_EXCLUDED(gate_);
  // Contributions staged on this follower for `parameter` (0 for one it does not follow).
  int64_t StagedContributions(absl::string_view parameter) const ABSL_LOCKS_EXCLUDED(gate_);

  // Counts a contribution the caller refused before Push (e.g. it could not be decoded).
  void CountRejected(absl::string_view worker_id, absl::string_view parameter)
      ABSL_LOCKS_EXCLUDED(gate_);

  // Follows `parameters` (empty: every owned parameter). FailedPrecondition before a model is
  // registered, NotFound / FailedPrecondition for a parameter not in the model / not owned.
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(
      std::vector<std::string> parameters, const absl::flat_hash_map<std::string, int64_t>& have)
      ABSL_LOCKS_EXCLUDED(gate_);

  absl::StatusOr<ParameterSnapshot> Snapshot(absl::string_view parameter,
                                             bool include_state) const {
    return store_->Snapshot(parameter, include_state);
  }

  // What the service needs of the store, with ParameterStore's codes and contracts.
  bool model_registered() const { return store_->model_registered(); }
  absl::StatusOr<ModelInfo> model() const { return store_->model(); }
  // Owned parameters in table order; empty before registration.
  std::vector<std::string> OwnedParameters() const { return store_->OwnedParameters(); }
  // The spec of an owned parameter; it lives as long as the shard.
  absl::StatusOr<const ParamSpec*> FindSpec(absl::string_view parameter) const {
    return store_->FindSpec(parameter);
  }
  // The latest applied version of an owned parameter.
  absl::StatusOr<int64_t> Version(absl::string_view parameter) const {
    return store_->Version(parameter);
  }

  // Waits until `parameter` has reached at least `min_version` (applied) or `deadline` passes,
  // and returns the version reached. Errors: the store's codes for an unknown / foreign
  // parameter or no model (FailedPrecondition); DeadlineExceeded naming the parameter, the
  // version reached and the one wanted; Unavailable once shutdown began. Holds no lock of the
  // shard while it waits, only its own condition variable's mutex.
  absl::StatusOr<int64_t> WaitForVersion(absl::string_view parameter, int64_t min_version,
                                         absl::Time deadline) const
      ABSL_LOCKS_EXCLUDED(version_mu_);
  ShardStatus Status() const;

  // Closes every open batch and waits until every closed batch is applied (for tests and
  // tools; pushes continue meanwhile).
  void Drain() ABSL_LOCKS_EXCLUDED(gate_);

  // Writes a checkpoint now (see the file comment) and returns its directory.
  // FailedPrecondition without a checkpoint directory or before a model is registered.
  absl::StatusOr<std::string> Checkpoint() ABSL_LOCKS_EXCLUDED(checkpoint_mu_, gate_);
  // Writes the coordinated checkpoint `cut` now, as Checkpoint(), and says what it holds.
  // InvalidArgument for a bad run id or cut 0 (ValidateCutRequest); FailedPrecondition as
  // Checkpoint(), and for a cut below the newest of its run id (naming both); the newest cut
  // of its run id again is answered with that checkpoint (already_written), writing nothing.
  absl::StatusOr<CutCheckpoint> CheckpointCut(const CutTag& cut)
      ABSL_LOCKS_EXCLUDED(checkpoint_mu_, gate_);

  // The first phase of a graceful shutdown of a shard with peers (DionServer::Shutdown):
  // refuses new contributions as BeginShutdown does, applies every accepted one (the steps of
  // split parameters it leads with their followers, which still answer meanwhile), then waits
  // until no contribution is staged here for another leader's step; all within half the time
  // to `deadline` (the rest is the last checkpoint's). StepRows and subscriptions are still
  // served. A split step still failing then is given up (logged). Idempotent; a no-op once
  // shutdown began.
  void DrainBeforeShutdown(absl::Time deadline) ABSL_LOCKS_EXCLUDED(gate_);
  // Refuses new contributions (Unavailable), also those waiting for room in their parameter's
  // backlog, and closes every subscription. Idempotent.
  void BeginShutdown() ABSL_LOCKS_EXCLUDED(gate_);
  // BeginShutdown, applies every accepted contribution, writes a last checkpoint (when
  // configured and a model is registered) and stops the threads. Idempotent; returns the
  // checkpoint's status. With a write-ahead log, a checkpoint still being written at
  // `deadline` (the periodic one under way, then the last one) is abandoned: the log, made
  // durable, holds what it would have held, and the status is OK.
  absl::Status Shutdown(absl::Time deadline = absl::InfiniteFuture())
      ABSL_LOCKS_EXCLUDED(gate_, checkpoint_mu_);

  const ParameterStore& store() const { return *store_; }  // tests and tools
  const Broadcaster& broadcaster() const { return *broadcaster_; }
  const ShardOptions& options() const { return options_; }

 private:
  // One owned parameter: its batcher and its lane in the step queue.
  struct Lane {
    std::unique_ptr<Batcher> batcher;
    OptimizerKind optimizer = OptimizerKind::kAdamW;
    StepQueue::LaneId steps = 0;
    bool attached = false;  // `steps` is set
    std::unique_ptr<SnapshotSlot> snapshot;  // holds the parameter for a checkpoint
    // A split parameter's owner: its place among the owners; a follower's staged
    // contributions (its batcher stays empty: the leader batches).
    std::optional<SplitOwnership> split;
    std::unique_ptr<RowStage> stage;
    std::atomic<bool> stepping{false};  // a follower's StepRows is under way (one at a time)
    // The latest step of a split parameter taken here, with its reductions' sums: a
    // follower's (taken, or replayed from its log), which a restarted leader may ask for
    // (StepRowsCommand::query); the leader's last commit (applied, or replayed from its commit
    // record), which catches up a follower found a version behind and is logged again at a
    // checkpoint's cut. The step produced version latest->batch.version + 1.
    mutable Mutex latest_mu;
    mutable std::optional<StepRowsCommand> latest ABSL_GUARDED_BY(latest_mu);
    // A leader after a restart: its batches closed in the log but not committed there
    // (replay collects them in `recovered`, Start() hands them to the step queue). Their steps
    // may have been taken by the followers already: ApplySplit asks them first for versions
    // below recovered_below. Set before the lane's steps are attached, read-only after.
    std::vector<Batch> recovered;
    int64_t recovered_below = 0;
    bool leads() const { return split.has_value() && split->index == 0; }
  };

  Shard(const ShardOptions& options, ShardMetrics* metrics);

  absl::Status Start() ABSL_LOCKS_EXCLUDED(gate_);
  // Restores the newest valid checkpoint (if any) and returns its number (0: none).
  absl::StatusOr<uint64_t> RestoreFromCheckpoint() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_);
  // Replays the write-ahead log after checkpoint `checkpoint` and opens it for appending
  // (server/shard_persistence.cc).
  absl::Status ReplayLog(uint64_t checkpoint) ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_);
  LogReplayHandler ReplayHandlerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_);
  // Creates the lanes of the owned parameters that have none; with `attach_steps` also their
  // step-queue lanes (at the parameters' versions then; a replay attaches after it).
  void CreateLanesLocked(bool attach_steps) ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_);
  void AttachStepsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_);
  // The cut of checkpoint `sequence` (file comment): its contents, whose parameters are taken
  // from the lanes' snapshot slots (until `keep_going` fails), and the log's switch to
  // wal-<sequence>.log. Holds gate_ for the cut only (server/shard_persistence.cc).
  absl::StatusOr<CheckpointContents> TakeCut(uint64_t sequence,
                                                   std::function<absl::Status()> keep_going)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(checkpoint_mu_) ABSL_LOCKS_EXCLUDED(gate_);
  // Shutdown's checkpoint: CheckpointLocked, or with a log, past write_deadline_, nothing more
  // than making the log durable (the status is OK then).
  absl::Status LastCheckpoint() ABSL_EXCLUSIVE_LOCKS_REQUIRED(checkpoint_mu_)
      ABSL_LOCKS_EXCLUDED(gate_);
  // Releases what the slots hold for an abandoned checkpoint.
  void DisarmSnapshots() ABSL_LOCKS_EXCLUDED(gate_);
  // After a checkpoint: the logs of pruned checkpoints removed.
  void PruneLogs() ABSL_EXCLUSIVE_LOCKS_REQUIRED(checkpoint_mu_);
  // DeadlineExceeded once write_deadline_ has passed.
  absl::Status KeepWriting() const;
  // Backpressure: returns once `parameter` has fewer than max_pending_batches closed batches
  // waiting, or at once for an unknown parameter or during shutdown.
  void WaitForRoom(absl::string_view parameter) ABSL_LOCKS_EXCLUDED(gate_);
  // The answer to a push while shutting down: DUPLICATE when it is already in, else Unavailable.
  absl::StatusOr<PushReply> RefuseDuringShutdown(const Lane* lane, const Contribution& c) const
      ABSL_SHARED_LOCKS_REQUIRED(gate_);
  // Hands the batch `offer` closed to the step queue, or wakes the deadline thread for the
  // batch it opened.
  void HandOver(Lane* lane, OfferResult& offer) ABSL_SHARED_LOCKS_REQUIRED(gate_);
  // Flushes every batcher and waits until the step queue is idle. REQUIRES: gate_ held
  // (shared or exclusive; exclusive guarantees nothing new arrives).
  void FlushAndDrain() ABSL_SHARED_LOCKS_REQUIRED(gate_);
  // Writes a checkpoint with `cut` (file comment) and returns its directory.
  absl::StatusOr<std::string> CheckpointLocked(const CutTag& cut = {})
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(checkpoint_mu_) ABSL_LOCKS_EXCLUDED(gate_);
  // Applies one closed batch of `lane` (on a compute thread) and publishes the new version.
  absl::Status ApplyOne(const Lane* lane, Batch batch);
  // ApplyOne of a split parameter's leader (server/shard_step.cc): its rows' step with every
  // follower's, retried until it succeeds or the shard shuts down.
  absl::Status ApplySplit(const Lane* lane, Batch batch);
  // After the leader committed `command`'s step while a follower's answer was an error (its
  // reply lost, or its last reduction's sum): sends the same command again, with backoff,
  // until every follower answers (it takes the step from the hub's retained sums, or from
  // the command's own sums when it has them, or says it already has) or the shard shuts down.
  void CatchUpFollowers(const StepRowsCommand& command, const SplitOwnership& split,
                        absl::Status failure);
  // Whether a failed split step is retried no more: shutdown began, or the drain's deadline
  // passed (DrainBeforeShutdown). Takes no lock.
  bool GivingUp() const;
  // Sleeps `backoff`, or until GivingUp() becomes true if that comes first.
  void SleepUntilRetry(absl::Duration backoff) const;
  // Replays a logged step of a split parameter (ReplayHandlerLocked): skipped when the
  // checkpoint holds it, else applied with the logged sums, to a follower's staged blocks or
  // to the leader's batch replayed before it. DataLoss when it does not fit the rows' version,
  // the staged blocks or the batch.
  absl::Status ReplaySplitStepLocked(Lane& lane, const LoggedSplitStep& step)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_);
  // ReplaySplitStepLocked of the leader, whose rows are at `version`: the first batch in
  // Lane::recovered, applied with the logged sums.
  absl::Status ReplayLeaderStepLocked(Lane& lane, const LoggedSplitStep& step, int64_t version)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_);
  // A leader's step applied here (`committed`, its sums included): kept as Lane::latest and,
  // with a log, recorded there (under the lane's latest_mu, so a checkpoint's cut logs it
  // again if the record went to the file before the cut) and made durable (an error is
  // reported; the log refuses everything after it).
  void CommitLeaderStep(const Lane& lane, StepRowsCommand committed);
  // A copy of Lane::latest (its sums included).
  static std::optional<StepRowsCommand> LatestOf(const Lane& lane);
  // After a failed attempt of the leader's step from `version`: a follower a version behind
  // (its answer to the last step was lost before a restart of this leader, or its disk lost
  // that step) takes the last committed step from its sums (Lane::latest). Best effort:
  // errors are left to the next attempt.
  void CatchUpFromLastCommit(const Lane& lane, int64_t version);
  // A leader's batch closed before a restart (Lane::recovered_below): asks every follower
  // where it stands. OK with no sums when none took the step (the step is taken as usual);
  // the step's sums when one took it and holds them; an error otherwise (retried).
  absl::StatusOr<std::vector<StepSum>> AskFollowers(const StepRowsCommand& command,
                                                    const SplitOwnership& split);
  // The follower's answer to a leader's query (StepRowsCommand::query).
  absl::StatusOr<StepRowsReply> AnswerQuery(const Lane& lane, const StepRowsCommand& command);
  // Lane::latest := `step` (its sums included).
  static void KeepLatest(const Lane& lane, StepRowsCommand step);
  // FailedPrecondition when the latest step kept here (Lane::latest) is for `batch`'s version
  // but was another batch (the leader lost its batch and closed another one for the same
  // version); OK otherwise. The sums are not copied.
  static absl::Status CheckLatestBatch(const Lane& lane, const LoggedBatch& batch);
  static absl::Status CheckLatestBatchLocked(const Lane& lane, const LoggedBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lane.latest_mu);
  // The sums of the step that applied `batch` when it is the latest kept here (empty when
  // none is kept for that version); CheckLatestBatch's FailedPrecondition.
  static absl::StatusOr<std::vector<StepSum>> LatestSums(const Lane& lane,
                                                         const LoggedBatch& batch);
  // At a checkpoint's cut, after SwitchTo: every staged block and every leader's latest
  // commit (Lane::latest) into the new log file; *end is the last record's end (unchanged
  // when there is none).
  absl::Status RelogAtCutLocked(uint64_t* end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_);
  // StepRows once its command is judged: collects the members, steps with the other owners,
  // logs the step with its sums (write-ahead log), releases the members and publishes.
  absl::StatusOr<StepRowsReply> TakeFollowerStep(Lane& lane, const StepRowsCommand& command,
                                                 absl::Time start) ABSL_LOCKS_EXCLUDED(gate_);
  // Contributions staged here for the steps of split parameters other shards lead.
  int64_t StagedTotal() const ABSL_LOCKS_EXCLUDED(gate_);
  // After a step: wakes version waiters, publishes `outcome`'s update, records metrics.
  void PublishStep(const Lane& lane, StepOutcome outcome, absl::Time start);
  // FailedPrecondition when `table` gives this shard rows of a split parameter that it cannot
  // serve: no split_peers, or differential privacy on.
  absl::Status CheckSplitServable(const ModelTable& table) const;
  // Submit of a follower's contribution: staged for the leader's batches.
  absl::StatusOr<PushReply> StageContribution(Lane* lane, ValidatedContribution contribution)
      ABSL_SHARED_LOCKS_REQUIRED(gate_);
  void RecordStep(const Lane& lane, const StepStats& stats, int64_t version,
                  absl::Duration broadcast);
  // ShardStatus::privacy from the owned parameters' statuses. REQUIRES: dp enabled.
  ShardStatus::Privacy PrivacyOf(const std::vector<ParameterStatus>& parameters) const;

  void DeadlineLoop() ABSL_LOCKS_EXCLUDED(gate_, deadline_mu_);
  // Closes the batches whose deadline passed and returns the earliest deadline left.
  absl::Time CloseDueBatches() ABSL_LOCKS_EXCLUDED(gate_);
  void CheckpointLoop() ABSL_LOCKS_EXCLUDED(deadline_mu_);
  void WakeDeadlineThread(absl::Time deadline) ABSL_LOCKS_EXCLUDED(deadline_mu_);

  const ShardOptions options_;
  ShardMetrics* const metrics_;
  std::unique_ptr<ParameterStore> store_;
  std::unique_ptr<ShardLog> log_;  // null without a write-ahead log; set once in Start()
  LogReplayStats replayed_;        // set once in Start()
  std::unique_ptr<Broadcaster> broadcaster_;
  StepQueue steps_;
  PushAccounting accounting_;

  // Shared by every Push and by the deadline thread while they offer and enqueue; exclusive
  // for registration, checkpoints and the start of shutdown, which must see no contribution
  // between accepting it and enqueueing its batch.
  mutable Mutex gate_;
  absl::flat_hash_map<std::string, std::unique_ptr<Lane>> lanes_ ABSL_GUARDED_BY(gate_);
  std::vector<Lane*> lane_order_ ABSL_GUARDED_BY(gate_);  // store's OwnedParameters() order
  bool shutting_down_ ABSL_GUARDED_BY(gate_) = false;
  bool draining_ ABSL_GUARDED_BY(gate_) = false;  // DrainBeforeShutdown: pushes refused

  // WaitForVersion sleeps on version_cv_; every applied step and the start of shutdown wake
  // it. Versions themselves are read from the store (atomics) under version_mu_, after the
  // step stored them, so no wake-up is missed.
  mutable Mutex version_mu_;
  mutable CondVar version_cv_;
  bool versions_closed_ ABSL_GUARDED_BY(version_mu_) = false;

  // The deadline and checkpoint threads sleep on deadline_cv_.
  Mutex deadline_mu_;
  CondVar deadline_cv_;
  absl::Time deadline_wake_ ABSL_GUARDED_BY(deadline_mu_) = absl::InfiniteFuture();
  bool deadline_poke_ ABSL_GUARDED_BY(deadline_mu_) = false;
  bool stop_threads_ ABSL_GUARDED_BY(deadline_mu_) = false;
  std::thread deadline_thread_;
  std::thread checkpoint_thread_;

  // Serialises checkpoints; guards the checkpointer.
  Mutex checkpoint_mu_ ABSL_ACQUIRED_BEFORE(gate_);
  std::unique_ptr<Checkpointer> checkpointer_ ABSL_PT_GUARDED_BY(checkpoint_mu_);
  const CutIndex* cuts_ = nullptr;  // the checkpointer's (thread-safe); set once in Start()
  // A checkpoint being written gives up at this time (absl::ToUnixNanos); Shutdown lowers it.
  std::atomic<int64_t> write_deadline_ns_{INT64_MAX};
  std::atomic<int64_t> give_up_ns_{INT64_MAX};  // GivingUp() from then (Unix ns)
  std::atomic<int64_t> longest_cut_ns_{0};  // ShardStatus::longest_checkpoint_cut
  Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  // Start() completed. A shard whose start failed (e.g. a log it could not replay) is
  // destroyed without a last checkpoint, which would bury the state it could not restore.
  bool started_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace dion

#endif  // DION_SERVER_SHARD_H_
