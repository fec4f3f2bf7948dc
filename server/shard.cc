#include "server/shard.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/checkpoint/checkpointer.h"
#include "server/metrics.h"

namespace dion {
namespace {

// How long the deadline thread sleeps when no batch has a deadline: it is woken by the first
// contribution of a batch anyway, this only bounds the damage of a missed wake-up.
constexpr absl::Duration kIdleDeadlinePoll = absl::Seconds(1);

bool Periodic(absl::Duration d) {
  return d > absl::ZeroDuration() && d != absl::InfiniteDuration();
}

}  // namespace

absl::Status ValidateShardOptions(const ShardOptions& options) {
  if (absl::Status s = ValidateStoreOptions(options.store); !s.ok()) return s;
  if (absl::Status s = ValidateBatcherOptions(options.batcher); !s.ok()) return s;
  if (options.broadcaster.queue_capacity < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "broadcast queue capacity must be >= 1, got ", options.broadcaster.queue_capacity));
  }
  if (options.compute_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("compute_threads must be >= 1, got ", options.compute_threads));
  }
  if (options.max_pending_batches < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_pending_batches must be >= 1, got ", options.max_pending_batches));
  }
  if (options.checkpoint_keep_last < 1) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint_keep_last must be >= 1, got ",
                                                   options.checkpoint_keep_last));
  }
  if (options.checkpoint_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("checkpoint_interval must not be negative");
  }
  if (options.restore_cut != 0 && options.checkpoint_dir.empty()) {
    return absl::InvalidArgumentError("restore_cut needs a checkpoint directory");
  }
  if (options.clock == nullptr) return absl::InvalidArgumentError("clock must be set");
  if (!options.wal_dir.empty() && options.checkpoint_dir.empty()) {
    return absl::InvalidArgumentError(
        "a write-ahead log needs a checkpoint directory (checkpoints are what truncate it)");
  }
  if (options.wal_sync.mode == LogSync::Mode::kInterval &&
      options.wal_sync.interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the write-ahead log's sync interval must be > 0");
  }
  return absl::OkStatus();
}

Shard::Shard(const ShardOptions& options, ShardMetrics* metrics)
    : options_(options),
      metrics_(metrics),
      steps_(options.compute_threads, options.max_pending_batches),
      accounting_(metrics) {}

absl::StatusOr<std::unique_ptr<Shard>> Shard::Create(const ShardOptions& options,
                                                     ShardMetrics* metrics) {
  if (absl::Status s = ValidateShardOptions(options); !s.ok()) return s;
  std::unique_ptr<Shard> shard(new Shard(options, metrics));
  if (absl::Status s = shard->Start(); !s.ok()) return s;
  MutexLock lock(&shard->shutdown_mu_);
  shard->started_ = true;
  return shard;
}

absl::Status Shard::Start() {
  absl::StatusOr<std::unique_ptr<ParameterStore>> store = ParameterStore::Create(options_.store);
  if (!store.ok()) return store.status();
  store_ = *std::move(store);
  const ParameterStore* s = store_.get();
  VersionSource source;
  source.version = [s](const std::string& parameter) { return s->Version(parameter); };
  source.full_value = [s](const std::string& parameter) -> absl::StatusOr<VersionUpdate> {
    absl::StatusOr<ParameterSnapshot> snapshot = s->Snapshot(parameter, false);
    if (!snapshot.ok()) return snapshot.status();
    VersionUpdate update;
    update.parameter = parameter;
    update.version = snapshot->version;
    update.checksum = snapshot->checksum;
    update.content = std::move(snapshot->X);
    update.rows = snapshot->rows;  // a split parameter's block
    return update;
  };
  broadcaster_ = std::make_unique<Broadcaster>(options_.broadcaster, std::move(source), metrics_);

  if (!options_.wal_dir.empty()) {
    log_ = std::make_unique<ShardLog>(
        ShardLogOptions{options_.wal_dir, options_.wal_sync, options_.wal_recover});
  }
  if (!options_.checkpoint_dir.empty()) {
    MutexLock checkpoint_lock(&checkpoint_mu_);
    checkpointer_ = std::make_unique<Checkpointer>(
        CheckpointerOptions{options_.checkpoint_dir, options_.checkpoint_keep_last});
    cuts_ = &checkpointer_->cuts();
    {
      MutexLock lock(&gate_);
      absl::StatusOr<uint64_t> restored = RestoreFromCheckpoint();
      if (!restored.ok()) return restored.status();
      // A restored cut abandons what followed it, the log included: its state is checkpointed
      // at once (which starts a new log), so the newest checkpoint is then this state.
      if (log_ != nullptr && options_.restore_cut == 0) {
        if (absl::Status s = ReplayLog(*restored); !s.ok()) return s;
      }
      for (const Lane* lane : lane_order_) {
        if (lane->split.has_value() && options_.split_peers == nullptr) {
          return absl::FailedPreconditionError(absl::StrCat(
              "the restored model splits parameter '", lane->batcher->parameter(),
              "' over several shards, whose owners step together over ShardPeer: start this "
              "shard with --peer_addresses (every shard's host:port, in shard-index order)"));
        }
      }
      AttachStepsLocked();
    }
    if (options_.restore_cut != 0) {
      if (absl::Status s = CheckpointLocked().status(); !s.ok()) return s;
    }
  }

  deadline_thread_ = std::thread([this] { DeadlineLoop(); });
  if (checkpointer_ != nullptr && Periodic(options_.checkpoint_interval)) {
    checkpoint_thread_ = std::thread([this] { CheckpointLoop(); });
  }
  return absl::OkStatus();
}

Shard::~Shard() {
  if (absl::Status s = Shutdown(); !s.ok()) {
    std::fprintf(stderr, "dion-server: shutdown: %s\n", s.ToString().c_str());
  }
}

absl::StatusOr<bool> Shard::RegisterModel(const ModelTable& table) {
  if (absl::Status s = CheckSplitServable(table); !s.ok()) return s;
  MutexLock lock(&gate_);
  absl::StatusOr<bool> newly = store_->RegisterModel(table);
  if (!newly.ok() || !*newly) return newly;
  CreateLanesLocked(/*attach_steps=*/true);
  if (log_ != nullptr) {
    if (absl::Status s = log_->LogModel(table); !s.ok()) return s;
  }
  return newly;
}

absl::Status Shard::RegisterWorker(absl::string_view worker_id) {
  ReaderMutexLock lock(&gate_);  // excludes a log rotation
  const bool known = store_->worker_registered(worker_id);
  if (absl::Status s = store_->RegisterWorker(worker_id); !s.ok()) return s;
  if (log_ == nullptr || known) return absl::OkStatus();
  return log_->LogWorker(worker_id);
}

void Shard::WaitForRoom(absl::string_view parameter) {
  StepQueue::LaneId lane;
  {
    ReaderMutexLock lock(&gate_);
    if (shutting_down_ || draining_) return;
    auto it = lanes_.find(parameter);
    if (it == lanes_.end()) return;  // Push refuses it
    lane = it->second->steps;
  }
  const std::optional<absl::Duration> waited = steps_.WaitForRoom(lane);
  if (waited.has_value() && metrics_ != nullptr) {
    metrics_->RecordBackpressure(absl::ToDoubleSeconds(*waited));
  }
}

absl::StatusOr<PushReply> Shard::Push(Contribution contribution) {
  absl::StatusOr<PushReply> reply = Submit(std::move(contribution));
  if (!reply.ok()) return reply;
  if (absl::Status s = WaitDurable(reply->durable_end); !s.ok()) return s;
  return reply;
}

absl::Status Shard::WaitDurable(uint64_t end) {
  if (log_ == nullptr || end == 0) return absl::OkStatus();
  // Outside every lock of the shard: concurrent pushes share the log's fdatasync.
  if (absl::Status s = log_->WaitDurable(end); !s.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the write-ahead log could not make the contribution durable, so it is not "
        "acknowledged; restart the shard once its disk is fixed: ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<PushReply> Shard::Submit(Contribution contribution) {
  WaitForRoom(contribution.parameter);
  const std::string worker_id = contribution.worker_id;
  const std::string parameter = contribution.parameter;
  const double loss = contribution.loss;
  ReaderMutexLock lock(&gate_);
  auto lane_it = lanes_.find(parameter);
  Lane* lane = lane_it == lanes_.end() ? nullptr : lane_it->second.get();
  const PushSource source{worker_id, store_->worker_registered(worker_id), parameter,
                          lane != nullptr};
  const auto refuse = [&](const absl::Status& status) {
    accounting_.Count(source, PushOutcome::kRejected, loss);
    return status;
  };
  if (shutting_down_ || draining_) {
    absl::StatusOr<PushReply> reply = RefuseDuringShutdown(lane, contribution);
    if (!reply.ok()) return refuse(reply.status());
    accounting_.Count(source, reply->result, loss);
    return reply;
  }
  absl::StatusOr<ValidatedContribution> valid = store_->Validate(std::move(contribution));
  if (!valid.ok()) return refuse(valid.status());
  if (lane->stage != nullptr) {  // a follower of a split parameter
    absl::StatusOr<PushReply> staged = StageContribution(lane, *std::move(valid));
    if (!staged.ok()) return refuse(staged.status());
    accounting_.Count(source, staged->result, loss);
    return staged;
  }
  // Read before the offer: the batcher's version is never behind it then, whereas a batch this
  // contribution closes may be applied before a later read.
  const int64_t applied_version = store_->Version(parameter).value_or(0);
  absl::StatusOr<OfferResult> offer = lane->batcher->Offer(*std::move(valid));
  if (!offer.ok()) return refuse(offer.status());
  accounting_.Count(source, offer->result, loss);
  if (metrics_ != nullptr && offer->result != PushOutcome::kDuplicate) {
    metrics_->RecordStaleness(offer->staleness);
  }
  PushReply reply{offer->result, applied_version, offer->version, offer->staleness};
  if (log_ != nullptr && offer->result != PushOutcome::kStale) {
    // A duplicate's original may still be on its way to the disk: wait for everything.
    reply.durable_end = offer->result == PushOutcome::kAccepted ? offer->journal_end
                                                                : log_->end_offset();
  }
  HandOver(lane, *offer);
  return reply;
}

absl::StatusOr<PushReply> Shard::RefuseDuringShutdown(const Lane* lane,
                                                      const Contribution& c) const {
  // Dedup before refusing: a re-sent contribution that is already in must be answered
  // DUPLICATE, or the client restores it into its residual and it is applied twice.
  const bool in = lane != nullptr && (lane->stage != nullptr
                                          ? lane->stage->AlreadyStaged(c.worker_id, c.sequence)
                                          : lane->batcher->AlreadyAccepted(c.worker_id,
                                                                           c.sequence));
  if (!in) {
    return absl::UnavailableError("the shard is shutting down; retry on the restarted shard");
  }
  return PushReply{PushOutcome::kDuplicate, store_->Version(c.parameter).value_or(0),
                   lane->batcher->version(), 0};
}

void Shard::HandOver(Lane* lane, OfferResult& offer) {
  if (offer.closed.has_value()) {
    steps_.Enqueue(lane->steps, *std::move(offer.closed));
  } else if (offer.result == PushOutcome::kAccepted) {
    if (std::optional<absl::Time> deadline = lane->batcher->NextDeadline()) {
      WakeDeadlineThread(*deadline);
    }
  }
}

void Shard::CountRejected(absl::string_view worker_id, absl::string_view parameter) {
  bool known_parameter;
  {
    ReaderMutexLock lock(&gate_);
    known_parameter = lanes_.contains(parameter);
  }
  accounting_.Count({worker_id, store_->worker_registered(worker_id), parameter, known_parameter},
                    PushOutcome::kRejected, 0.0);
}

absl::StatusOr<std::unique_ptr<Subscription>> Shard::Subscribe(
    std::vector<std::string> parameters, const absl::flat_hash_map<std::string, int64_t>& have) {
  if (!store_->model_registered()) {
    return absl::FailedPreconditionError("no model is registered; nothing to subscribe to");
  }
  if (parameters.empty()) {
    parameters = store_->OwnedParameters();
  } else {
    std::sort(parameters.begin(), parameters.end());
    parameters.erase(std::unique(parameters.begin(), parameters.end()), parameters.end());
    for (const std::string& parameter : parameters) {
      if (absl::StatusOr<ParamSpec> spec = store_->Spec(parameter); !spec.ok()) {
        return spec.status();
      }
    }
  }
  return broadcaster_->Subscribe(std::move(parameters), have);
}

absl::StatusOr<int64_t> Shard::WaitForVersion(absl::string_view parameter, int64_t min_version,
                                              absl::Time deadline) const {
  MutexLock lock(&version_mu_);
  while (true) {
    absl::StatusOr<int64_t> version = store_->Version(parameter);
    if (!version.ok() || *version >= min_version) return version;
    if (versions_closed_) {
      return absl::UnavailableError(absl::StrCat(
          "the shard is shutting down; parameter '", parameter, "' reached version ", *version,
          " of the ", min_version, " wanted"));
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "parameter '", parameter, "' reached version ", *version, " before the deadline, not ",
          "the ", min_version, " wanted"));
    }
    version_cv_.WaitWithTimeout(&version_mu_, left);
  }
}

ShardStatus Shard::Status() const {
  ShardStatus status;
  status.shard_index = options_.store.shard_index;
  status.num_shards = options_.store.num_shards;
  absl::StatusOr<ModelInfo> model = store_->model();
  status.model_registered = model.ok();
  if (model.ok()) status.model_name = model->model_name;
  const std::vector<ParameterStatus> parameters = store_->Statuses();
  const std::vector<std::string> workers = store_->workers();
  const PushTally tally = accounting_.Tally();
  status.pushes = tally.total;
  for (const ParameterStatus& p : parameters) {
    auto it = tally.parameters.find(p.parameter);
    status.parameters.push_back({p, it == tally.parameters.end() ? PushCounts{} : it->second});
  }
  for (const std::string& worker_id : workers) {  // sorted by id
    auto it = tally.workers.find(worker_id);
    const WorkerPushCounts counts = it == tally.workers.end() ? WorkerPushCounts{} : it->second;
    status.workers.push_back({worker_id, counts.pushes, counts.last_loss});
  }
  status.subscribers = broadcaster_->subscribers();
  const StepQueueStats steps = steps_.stats();
  status.failed_steps = steps.failed;
  status.pending_batches = steps.pending;
  status.max_pending_batches_seen = steps.max_pending_seen;
  status.backpressure_waits = steps.backpressure_waits;
  status.wal = log_ != nullptr;
  if (log_ != nullptr) status.wal_syncs = log_->syncs();
  status.wal_replayed = replayed_;
  if (cuts_ != nullptr) status.newest_cut = cuts_->newest();
  status.longest_checkpoint_cut = absl::Nanoseconds(longest_cut_ns_.load());
  if (options_.batcher.dp.enabled()) status.privacy = PrivacyOf(parameters);
  return status;
}

void Shard::FlushAndDrain() {
  for (Lane* lane : lane_order_) {
    if (std::optional<Batch> batch = lane->batcher->Flush()) {
      steps_.Enqueue(lane->steps, *std::move(batch));
    }
  }
  steps_.Drain();
}

void Shard::Drain() {
  ReaderMutexLock lock(&gate_);
  FlushAndDrain();
}

void Shard::DrainBeforeShutdown(absl::Time deadline) {
  {
    MutexLock lock(&gate_);
    if (shutting_down_ || draining_) return;
    draining_ = true;
  }
  // Half the grace at most: the last checkpoint needs the rest. Blocks staged for a batch a
  // leader will not take (its push was refused there) would otherwise hold the whole grace.
  const absl::Time until = absl::Now() + (deadline - absl::Now()) / 2;
  give_up_ns_.store(absl::ToUnixNanos(until));
  steps_.ReleaseWaiters();
  {
    MutexLock shutdown_lock(&shutdown_mu_);
    if (!started_) return;
  }
  {
    ReaderMutexLock lock(&gate_);
    for (Lane* lane : lane_order_) {
      if (std::optional<Batch> batch = lane->batcher->Flush()) {
        steps_.Enqueue(lane->steps, *std::move(batch));
      }
    }
  }
  steps_.Drain();  // outside gate_: a checkpoint's cut waiting for it must not stall StepRows
  int64_t staged = StagedTotal();
  while (staged > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
    staged = StagedTotal();
  }
  if (staged > 0) {
    std::fprintf(stderr,
                 "dion-server: shutting down with %lld contribution(s) staged for steps that "
                 "the leaders of their split parameters did not take in time; %s\n",
                 static_cast<long long>(staged),
                 log_ != nullptr ? "the last checkpoint's log keeps them for the next start"
                                 : "without a write-ahead log they are lost here");
  }
}

int64_t Shard::StagedTotal() const {
  ReaderMutexLock lock(&gate_);
  int64_t staged = 0;
  for (const Lane* lane : lane_order_) {
    if (lane->stage != nullptr) staged += lane->stage->size();
  }
  return staged;
}

void Shard::BeginShutdown() {
  {
    MutexLock lock(&gate_);
    shutting_down_ = true;
  }
  give_up_ns_.store(INT64_MIN);
  steps_.ReleaseWaiters();
  {
    MutexLock lock(&version_mu_);
    versions_closed_ = true;
    version_cv_.SignalAll();
  }
  broadcaster_->Shutdown();
}

absl::Status Shard::Shutdown(absl::Time deadline) {
  MutexLock shutdown_lock(&shutdown_mu_);
  if (shut_down_) return absl::OkStatus();
  shut_down_ = true;
  BeginShutdown();
  // With a log, a checkpoint under way (and the last one) may be abandoned at the deadline.
  if (log_ != nullptr && deadline != absl::InfiniteFuture()) {
    write_deadline_ns_.store(absl::ToUnixNanos(deadline));
  }
  {
    MutexLock lock(&deadline_mu_);
    stop_threads_ = true;
    deadline_cv_.SignalAll();
  }
  if (checkpoint_thread_.joinable()) checkpoint_thread_.join();
  if (deadline_thread_.joinable()) deadline_thread_.join();
  absl::Status status;
  {
    MutexLock checkpoint_lock(&checkpoint_mu_);
    // A shard that never started accepted nothing, and its lanes may have no steps attached.
    if (started_ && checkpointer_ != nullptr && store_->model_registered()) {
      status = LastCheckpoint();
    } else if (started_) {
      ReaderMutexLock lock(&gate_);
      FlushAndDrain();
    }
  }
  steps_.Stop();
  return status;
}

void Shard::WakeDeadlineThread(absl::Time deadline) {
  MutexLock lock(&deadline_mu_);
  if (deadline < deadline_wake_) {
    deadline_poke_ = true;
    deadline_cv_.SignalAll();
  }
}

absl::Time Shard::CloseDueBatches() {
  absl::Time earliest = absl::InfiniteFuture();
  ReaderMutexLock lock(&gate_);
  for (Lane* lane : lane_order_) {
    if (std::optional<Batch> batch = lane->batcher->CloseIfDue()) {
      steps_.Enqueue(lane->steps, *std::move(batch));
    }
    if (std::optional<absl::Time> deadline = lane->batcher->NextDeadline()) {
      earliest = std::min(earliest, *deadline);
    }
  }
  return earliest;
}

void Shard::DeadlineLoop() {
  while (true) {
    const absl::Time earliest = CloseDueBatches();
    MutexLock lock(&deadline_mu_);
    if (stop_threads_) return;
    if (deadline_poke_) {  // a batch opened while we were scanning
      deadline_poke_ = false;
      continue;
    }
    // Deadlines are in the batchers' clock; sleep the same span of real time.
    const absl::Duration wait =
        earliest == absl::InfiniteFuture()
            ? kIdleDeadlinePoll
            : std::clamp(earliest - options_.clock->Now(), absl::ZeroDuration(), kIdleDeadlinePoll);
    deadline_wake_ = absl::Now() + wait;
    if (wait > absl::ZeroDuration()) {
      const absl::Time until = deadline_wake_;
      while (!stop_threads_ && !deadline_poke_ && absl::Now() < until) {
        deadline_cv_.WaitWithTimeout(&deadline_mu_, until - absl::Now());
      }
    }
    deadline_wake_ = absl::InfiniteFuture();
    deadline_poke_ = false;
    if (stop_threads_) return;
  }
}

}  // namespace dion
