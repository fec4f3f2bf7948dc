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

int64_t PushCounts::*CountField(PushResult result) {
  switch (result) {
    case PushResult::kAccepted: return &PushCounts::accepted;
    case PushResult::kDuplicate: return &PushCounts::duplicate;
    case PushResult::kStale: return &PushCounts::stale;
  }
  return &PushCounts::rejected;
}

bool Periodic(absl::Duration d) { return d > absl::ZeroDuration() && d != absl::InfiniteDuration(); }

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
  if (options.clock == nullptr) return absl::InvalidArgumentError("clock must be set");
  return absl::OkStatus();
}

Shard::Shard(const ShardOptions& options, ShardMetrics* metrics)
    : options_(options), metrics_(metrics) {}

absl::StatusOr<std::unique_ptr<Shard>> Shard::Create(const ShardOptions& options,
                                                     ShardMetrics* metrics) {
  if (absl::Status s = ValidateShardOptions(options); !s.ok()) return s;
  std::unique_ptr<Shard> shard(new Shard(options, metrics));
  if (absl::Status s = shard->Start(); !s.ok()) return s;
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
    return update;
  };
  broadcaster_ = std::make_unique<Broadcaster>(options_.broadcaster, std::move(source), metrics_);

  if (!options_.checkpoint_dir.empty()) {
    MutexLock checkpoint_lock(&checkpoint_mu_);
    checkpointer_ = std::make_unique<Checkpointer>(
        CheckpointerOptions{options_.checkpoint_dir, options_.checkpoint_keep_last});
    MutexLock lock(&gate_);
    if (absl::Status s = RestoreFromCheckpoint(); !s.ok()) return s;
  }

  for (int i = 0; i < options_.compute_threads; ++i) {
    compute_threads_.emplace_back([this] { ComputeLoop(); });
  }
  deadline_thread_ = std::thread([this] { DeadlineLoop(); });
  if (checkpointer_ != nullptr && Periodic(options_.checkpoint_interval)) {
    checkpoint_thread_ = std::thread([this] { CheckpointLoop(); });
  }
  return absl::OkStatus();
}

absl::Status Shard::RestoreFromCheckpoint() {
  checkpoint_mu_.AssertHeld();
  absl::StatusOr<ShardCheckpoint> checkpoint = checkpointer_->LoadNewest();
  if (absl::IsNotFound(checkpoint.status())) return absl::OkStatus();  // a fresh start
  if (!checkpoint.ok()) return checkpoint.status();
  for (const std::string& skipped : checkpoint->skipped) {
    std::fprintf(stderr, "dion-server: skipped checkpoint: %s\n", skipped.c_str());
  }
  if (absl::Status s = Checkpointer::RestoreInto(*checkpoint, *store_); !s.ok()) return s;
  CreateLanesLocked();
  for (size_t i = 0; i < checkpoint->parameters.size() && i < checkpoint->dedup.size(); ++i) {
    auto it = lanes_.find(checkpoint->parameters[i].spec.name);
    if (it == lanes_.end()) {
      return absl::DataLossError(absl::StrCat("checkpoint ", checkpoint->path,
                                              " has dedup state of unknown parameter '",
                                              checkpoint->parameters[i].spec.name, "'"));
    }
    it->second->batcher->ImportDedup(checkpoint->dedup[i]);
  }
  std::fprintf(stderr, "dion-server: restored checkpoint %s (%zu parameters)\n",
               checkpoint->path.c_str(), checkpoint->parameters.size());
  return absl::OkStatus();
}

void Shard::CreateLanesLocked() {
  for (const std::string& name : store_->OwnedParameters()) {
    const ParamSpec spec = store_->Spec(name).value();
    const int64_t version = store_->Version(name).value();
    auto lane = std::make_unique<Lane>();
    lane->batcher = std::make_unique<Batcher>(name, options_.batcher, version, options_.clock);
    lane->optimizer = spec.optimizer;
    lane->next_version = version;  // no other thread sees the lane yet
    lane_order_.push_back(lane.get());
    lanes_.emplace(name, std::move(lane));
  }
}

Shard::~Shard() {
  if (absl::Status s = Shutdown(); !s.ok()) {
    std::fprintf(stderr, "dion-server: shutdown: %s\n", s.ToString().c_str());
  }
}

absl::StatusOr<bool> Shard::RegisterModel(const ModelTable& table) {
  MutexLock lock(&gate_);
  absl::StatusOr<bool> newly = store_->RegisterModel(table);
  if (newly.ok() && *newly) CreateLanesLocked();
  return newly;
}

absl::Status Shard::RegisterWorker(absl::string_view worker_id) {
  return store_->RegisterWorker(worker_id);
}

void Shard::WaitForRoom(absl::string_view parameter) {
  Lane* lane;
  {
    ReaderMutexLock lock(&gate_);
    if (shutting_down_) return;
    auto it = lanes_.find(parameter);
    if (it == lanes_.end()) return;  // Push refuses it
    lane = it->second.get();  // lanes live as long as the shard
  }
  const auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
    return stop_compute_ || waits_released_ ||
           static_cast<int64_t>(lane->pending.size()) < options_.max_pending_batches;
  };
  absl::Time start;
  {
    MutexLock lock(&queue_mu_);
    if (room()) return;
    ++backpressure_waits_;
    start = absl::Now();
    while (!room()) room_cv_.Wait(&queue_mu_);
  }
  if (metrics_ != nullptr) metrics_->RecordBackpressure(absl::ToDoubleSeconds(absl::Now() - start));
}

absl::StatusOr<PushReply> Shard::Push(Contribution contribution) {
  WaitForRoom(contribution.parameter);
  const std::string worker_id = contribution.worker_id;
  const std::string parameter = contribution.parameter;
  const double loss = contribution.loss;
  ReaderMutexLock lock(&gate_);
  auto lane_it = lanes_.find(parameter);
  const bool known_parameter = lane_it != lanes_.end();
  const bool known_worker = store_->worker_registered(worker_id);
  absl::Status status;
  if (shutting_down_) {
    // Dedup before refusing: a re-sent contribution that is already in must be answered
    // DUPLICATE, or the client restores it into its residual and it is applied twice.
    if (known_parameter &&
        lane_it->second->batcher->AlreadyAccepted(worker_id, contribution.sequence)) {
      Count(worker_id, parameter, true, known_worker, &PushCounts::duplicate, loss);
      PushReply reply;
      reply.result = PushResult::kDuplicate;
      reply.applied_version = store_->Version(parameter).value_or(0);
      reply.batch_version = lane_it->second->batcher->version();
      return reply;
    }
    status = absl::UnavailableError("the shard is shutting down; retry on the restarted shard");
  } else {
    status = store_->ValidateContribution(contribution);
  }
  if (!status.ok()) {
    Count(worker_id, parameter, known_parameter, known_worker, &PushCounts::rejected, loss);
    return status;
  }
  Lane* lane = lane_it->second.get();
  // Read before the offer: the batcher's version is never behind it then, whereas a batch this
  // contribution closes may be applied before a later read.
  const int64_t applied_version = store_->Version(parameter).value_or(0);
  absl::StatusOr<OfferResult> offer = lane->batcher->Offer(std::move(contribution));
  if (!offer.ok()) {
    Count(worker_id, parameter, true, known_worker, &PushCounts::rejected, loss);
    return offer.status();
  }
  Count(worker_id, parameter, true, known_worker, CountField(offer->result), loss);
  if (metrics_ != nullptr && offer->result != PushResult::kDuplicate) {
    metrics_->RecordStaleness(offer->staleness);
  }
  PushReply reply;
  reply.result = offer->result;
  reply.applied_version = applied_version;
  reply.batch_version = offer->version;
  reply.staleness = offer->staleness;
  if (offer->closed.has_value()) {
    Enqueue(lane, *std::move(offer->closed));
  } else if (offer->result == PushResult::kAccepted) {
    if (std::optional<absl::Time> deadline = lane->batcher->NextDeadline()) {
      WakeDeadlineThread(*deadline);
    }
  }
  return reply;
}

void Shard::CountRejected(absl::string_view worker_id, absl::string_view parameter) {
  bool known_parameter;
  {
    ReaderMutexLock lock(&gate_);
    known_parameter = lanes_.contains(parameter);
  }
  Count(worker_id, parameter, known_parameter, store_->worker_registered(worker_id),
        &PushCounts::rejected, 0.0);
}

void Shard::Count(absl::string_view worker_id, absl::string_view parameter, bool known_parameter,
                  bool known_worker, int64_t PushCounts::*field, double loss) {
  if (metrics_ != nullptr) {
    metrics_->RecordPush(field == &PushCounts::accepted    ? PushOutcome::kAccepted
                         : field == &PushCounts::duplicate ? PushOutcome::kDuplicate
                         : field == &PushCounts::stale     ? PushOutcome::kStale
                                                           : PushOutcome::kRejected);
  }
  MutexLock lock(&counts_mu_);
  ++(total_counts_.*field);
  // Only names the shard knows get their own entry, so bad input cannot grow these maps.
  if (known_parameter) ++(parameter_counts_[parameter].*field);
  if (known_worker) {
    ShardStatus::Worker& worker = worker_counts_[worker_id];
    ++(worker.pushes.*field);
    if (field == &PushCounts::accepted) worker.last_loss = loss;
  }
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

absl::StatusOr<ParameterSnapshot> Shard::Snapshot(absl::string_view parameter,
                                                  bool include_state) const {
  return store_->Snapshot(parameter, include_state);
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
  {
    MutexLock lock(&counts_mu_);
    status.pushes = total_counts_;
    for (const ParameterStatus& p : parameters) {
      auto it = parameter_counts_.find(p.parameter);
      status.parameters.push_back(
          {p, it == parameter_counts_.end() ? PushCounts{} : it->second});
    }
    for (const std::string& worker_id : workers) {
      auto it = worker_counts_.find(worker_id);
      ShardStatus::Worker worker =
          it == worker_counts_.end() ? ShardStatus::Worker{} : it->second;
      worker.worker_id = worker_id;
      status.workers.push_back(std::move(worker));
    }
  }
  std::sort(status.workers.begin(), status.workers.end(),
            [](const auto& a, const auto& b) { return a.worker_id < b.worker_id; });
  status.subscribers = broadcaster_->subscribers();
  {
    MutexLock lock(&queue_mu_);
    status.failed_steps = failed_steps_;
    status.pending_batches = outstanding_;
    status.max_pending_batches_seen = max_pending_seen_;
    status.backpressure_waits = backpressure_waits_;
  }
  return status;
}

void Shard::Enqueue(Lane* lane, Batch batch) {
  MutexLock lock(&queue_mu_);
  const int64_t version = batch.version;
  lane->pending.emplace(version, std::move(batch));
  max_pending_seen_ = std::max(max_pending_seen_, static_cast<int64_t>(lane->pending.size()));
  ++outstanding_;
  // Concurrent pushes can hand over batches out of order; only the next version may start.
  if (!lane->scheduled && lane->pending.begin()->first == lane->next_version) {
    lane->scheduled = true;
    ready_.push_back(lane);
    work_cv_.Signal();
  }
}

void Shard::ComputeLoop() {
  MutexLock lock(&queue_mu_);
  while (true) {
    while (ready_.empty() && !stop_compute_) work_cv_.Wait(&queue_mu_);
    if (ready_.empty()) return;  // stopping and nothing left
    Lane* lane = ready_.front();
    ready_.pop_front();
    auto first = lane->pending.begin();
    Batch batch = std::move(first->second);
    lane->pending.erase(first);
    room_cv_.SignalAll();
    const int64_t version = batch.version;
    queue_mu_.Unlock();
    ApplyOne(lane, std::move(batch));
    queue_mu_.Lock();
    // Advance even after a failure so the lane never wedges; ApplyBatch then refuses the
    // following batches of this parameter too, which failed_steps_ makes visible.
    lane->next_version = version + 1;
    --outstanding_;
    if (!lane->pending.empty() && lane->pending.begin()->first == lane->next_version) {
      ready_.push_back(lane);
      work_cv_.Signal();
    } else {
      lane->scheduled = false;
    }
    if (outstanding_ == 0) idle_cv_.SignalAll();
  }
}

void Shard::ApplyOne(Lane* lane, Batch batch) {
  const absl::Time start = absl::Now();
  absl::StatusOr<StepOutcome> outcome = store_->ApplyBatch(batch);
  if (!outcome.ok()) {
    std::fprintf(stderr, "dion-server: step of '%s' at version %lld failed: %s\n",
                 batch.parameter.c_str(), static_cast<long long>(batch.version),
                 outcome.status().ToString().c_str());
    {
      MutexLock lock(&queue_mu_);
      ++failed_steps_;
    }
    if (metrics_ != nullptr) metrics_->RecordFailedStep(lane->optimizer);
    return;
  }
  {
    // The store holds the new version already; wake Pulls waiting for it.
    MutexLock lock(&version_mu_);
    version_cv_.SignalAll();
  }
  const StepStats& stats = outcome->stats;
  const int64_t version = outcome->update.version;
  const absl::Time published = absl::Now();
  broadcaster_->Publish(std::move(outcome->update));
  const absl::Time end = absl::Now();
  lane->batcher->ReportStepDuration(published - start);
  if (metrics_ == nullptr) return;
  metrics_->RecordBatch(stats.contributions);
  metrics_->RecordPhase(StepPhase::kAggregate, absl::ToDoubleSeconds(stats.report.aggregate));
  if (lane->optimizer == OptimizerKind::kDion) {
    metrics_->RecordPhase(StepPhase::kPowerIteration,
                          absl::ToDoubleSeconds(stats.report.power_iteration));
    metrics_->RecordPhase(StepPhase::kOrthonormalize,
                          absl::ToDoubleSeconds(stats.report.orthonormalize));
  }
  metrics_->RecordPhase(StepPhase::kUpdate, absl::ToDoubleSeconds(stats.report.update));
  metrics_->RecordPhase(StepPhase::kBroadcast, absl::ToDoubleSeconds(end - published));
  metrics_->RecordStep(lane->optimizer, version);
  if (stats.report.ortho_error >= 0) metrics_->SetOrthogonalityError(stats.report.ortho_error);
  metrics_->SetWorkerLoss(stats.mean_loss);
}

void Shard::FlushAndDrain() {
  for (Lane* lane : lane_order_) {
    if (std::optional<Batch> batch = lane->batcher->Flush()) Enqueue(lane, *std::move(batch));
  }
  MutexLock lock(&queue_mu_);
  while (outstanding_ > 0) idle_cv_.Wait(&queue_mu_);
}

void Shard::Drain() {
  ReaderMutexLock lock(&gate_);
  FlushAndDrain();
}

absl::StatusOr<std::string> Shard::Checkpoint() {
  MutexLock checkpoint_lock(&checkpoint_mu_);
  MutexLock lock(&gate_);
  return CheckpointLocked();
}

absl::StatusOr<std::string> Shard::CheckpointLocked() {
  checkpoint_mu_.AssertHeld();
  if (checkpointer_ == nullptr) {
    return absl::FailedPreconditionError("checkpoints are disabled (no checkpoint directory)");
  }
  if (!store_->model_registered()) {
    return absl::FailedPreconditionError("no model is registered; nothing to checkpoint");
  }
  const absl::Time start = absl::Now();
  FlushAndDrain();
  std::vector<const Batcher*> batchers;
  for (const Lane* lane : lane_order_) batchers.push_back(lane->batcher.get());
  absl::StatusOr<std::string> path = checkpointer_->Write(*store_, batchers);
  if (metrics_ != nullptr) {
    metrics_->RecordCheckpoint(path.ok(), absl::ToDoubleSeconds(absl::Now() - start));
  }
  return path;
}

void Shard::BeginShutdown() {
  {
    MutexLock lock(&gate_);
    shutting_down_ = true;
  }
  {
    MutexLock lock(&queue_mu_);
    waits_released_ = true;
    room_cv_.SignalAll();
  }
  {
    MutexLock lock(&version_mu_);
    versions_closed_ = true;
    version_cv_.SignalAll();
  }
  broadcaster_->Shutdown();
}

absl::Status Shard::Shutdown() {
  MutexLock shutdown_lock(&shutdown_mu_);
  if (shut_down_) return absl::OkStatus();
  shut_down_ = true;
  BeginShutdown();
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
    MutexLock lock(&gate_);
    if (checkpointer_ != nullptr && store_->model_registered()) {
      absl::StatusOr<std::string> path = CheckpointLocked();  // flushes and drains first
      status = path.status();
      if (path.ok()) std::fprintf(stderr, "dion-server: checkpoint %s\n", path->c_str());
    } else {
      FlushAndDrain();
    }
  }
  {
    MutexLock lock(&queue_mu_);
    stop_compute_ = true;
    work_cv_.SignalAll();
    room_cv_.SignalAll();
  }
  for (std::thread& thread : compute_threads_) thread.join();
  compute_threads_.clear();
  return status;
}

void Shard::WakeDeadlineThread(absl::Time deadline) {
  MutexLock lock(&deadline_mu_);
  if (deadline < deadline_wake_) {
    deadline_poke_ = true;
    deadline_cv_.SignalAll();
  }
}

void Shard::DeadlineLoop() {
  while (true) {
    absl::Time earliest = absl::InfiniteFuture();
    {
      ReaderMutexLock lock(&gate_);
      for (Lane* lane : lane_order_) {
        if (std::optional<Batch> batch = lane->batcher->CloseIfDue()) {
          Enqueue(lane, *std::move(batch));
        }
        if (std::optional<absl::Time> deadline = lane->batcher->NextDeadline()) {
          earliest = std::min(earliest, *deadline);
        }
      }
    }
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

void Shard::CheckpointLoop() {
  while (true) {
    {
      MutexLock lock(&deadline_mu_);
      const absl::Time until = absl::Now() + options_.checkpoint_interval;
      while (!stop_threads_ && absl::Now() < until) {
        deadline_cv_.WaitWithTimeout(&deadline_mu_, until - absl::Now());
      }
      if (stop_threads_) return;
    }
    if (!store_->model_registered()) continue;
    absl::StatusOr<std::string> path = Checkpoint();
    if (!path.ok()) {
      std::fprintf(stderr, "dion-server: periodic checkpoint failed: %s\n",
                   path.status().ToString().c_str());
    }
  }
}

}  // namespace dion
