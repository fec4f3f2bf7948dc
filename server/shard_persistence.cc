// Shard: what survives a restart. Restoring the newest checkpoint, replaying the write-ahead
// log on top of it, writing checkpoints and starting a new log after each (server/shard.h).
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/checkpoint/checkpointer.h"
#include "server/logged_reducers.h"
#include "server/metrics.h"
#include "server/shard.h"

namespace dion {
namespace {

// A logged step as the command that took it, its sums included (Lane::latest).
StepRowsCommand CommandOf(const LoggedSplitStep& step) {
  StepRowsCommand command;
  command.batch = step.batch;
  command.lr_scale = step.lr_scale;
  command.sums = step.sums;
  return command;
}

}  // namespace

absl::StatusOr<uint64_t> Shard::RestoreFromCheckpoint() {
  checkpoint_mu_.AssertHeld();
  absl::StatusOr<ShardCheckpoint> checkpoint =
      checkpointer_->Load(options_.restore_run_id, options_.restore_cut);
  if (absl::IsNotFound(checkpoint.status())) return 0;  // a fresh start
  if (!checkpoint.ok()) return checkpoint.status();
  for (const std::string& skipped : checkpoint->skipped) {
    std::fprintf(stderr, "dion-server: skipped checkpoint: %s\n", skipped.c_str());
  }
  if (absl::Status s = Checkpointer::RestoreInto(*checkpoint, *store_); !s.ok()) return s;
  CreateLanesLocked(/*attach_steps=*/false);
  for (size_t i = 0; i < checkpoint->parameters.size() && i < checkpoint->dedup.size(); ++i) {
    auto it = lanes_.find(checkpoint->parameters[i].spec.name);
    if (it == lanes_.end()) {
      return absl::DataLossError(absl::StrCat("checkpoint ", checkpoint->path,
                                              " has dedup state of unknown parameter '",
                                              checkpoint->parameters[i].spec.name, "'"));
    }
    it->second->batcher->ImportDedup(checkpoint->dedup[i]);
  }
  std::fprintf(stderr, "dion-server: restored checkpoint %s (%zu parameters; run '%s', cut %s)\n",
               checkpoint->path.c_str(), checkpoint->parameters.size(),
               checkpoint->tag.run_id.c_str(), absl::StrCat(checkpoint->tag.cut).c_str());
  return checkpoint->sequence;
}

void Shard::CreateLanesLocked(bool attach_steps) {
  for (const std::string& name : store_->OwnedParameters()) {
    if (lanes_.contains(name)) continue;
    const ParamSpec spec = store_->Spec(name).value();
    const int64_t version = store_->Version(name).value();
    auto lane = std::make_unique<Lane>();
    lane->split = store_->Split(name).value();
    // The leader of a split parameter logs its contributions and batches through its batcher,
    // as a whole parameter's owner does, and each step with its sums once applied
    // (CommitLeaderStep). A follower logs its staged blocks and its steps with their sums
    // (StageContribution, StepRows), not through a batcher (docs/server.md, "Split
    // parameters").
    const bool follows = lane->split.has_value() && !lane->leads();
    lane->batcher = std::make_unique<Batcher>(name, options_.batcher, version, options_.clock,
                                              follows ? nullptr : log_.get());
    if (follows) {
      RowStageOptions stage;
      stage.dedup_window = options_.batcher.dedup_window;
      stage.max_staleness = options_.batcher.staleness.max_staleness;
      stage.max_staged = options_.max_staged;
      lane->stage = std::make_unique<RowStage>(name, stage);
    }
    lane->optimizer = spec.optimizer;
    lane->snapshot = std::make_unique<SnapshotSlot>(store_.get(), name);
    lane_order_.push_back(lane.get());
    lanes_.emplace(name, std::move(lane));
  }
  if (attach_steps) AttachStepsLocked();
}

void Shard::AttachStepsLocked() {
  for (Lane* lane : lane_order_) {
    if (lane->attached) continue;
    const int64_t version = store_->Version(lane->batcher->parameter()).value();
    lane->steps =
        steps_.AddLane(version, [this, lane](Batch batch) { return ApplyOne(lane, std::move(batch)); });
    lane->attached = true;
    // A leader's batches the log closed but did not commit: taken again, in order.
    for (Batch& batch : lane->recovered) steps_.Enqueue(lane->steps, std::move(batch));
    lane->recovered.clear();
  }
}

absl::Status Shard::ReplayLog(uint64_t checkpoint) {
  absl::StatusOr<LogReplayStats> stats = log_->ReplayAndOpen(checkpoint, ReplayHandlerLocked());
  if (!stats.ok()) return stats.status();
  replayed_ = *stats;
  for (Lane* lane : lane_order_) {
    if (lane->recovered.empty()) continue;
    lane->recovered_below = lane->recovered.back().version + 1;
    std::fprintf(stderr,
                 "dion-server: split parameter '%s': %zu logged batch(es) from version %lld "
                 "have no commit in the log; the followers are asked whether they took them\n",
                 lane->batcher->parameter().c_str(), lane->recovered.size(),
                 static_cast<long long>(lane->recovered.front().version));
  }
  if (stats->records > 0 || stats->bytes_cut > 0) {
    std::fprintf(stderr,
                 "dion-server: replayed %lld write-ahead log records (%lld contributions, %lld "
                 "batches) from %zu file(s) after checkpoint %llu; cut %llu bytes\n",
                 static_cast<long long>(stats->records),
                 static_cast<long long>(stats->contributions),
                 static_cast<long long>(stats->batches), stats->files.size(),
                 static_cast<unsigned long long>(checkpoint),
                 static_cast<unsigned long long>(stats->bytes_cut));
  }
  return absl::OkStatus();
}

// Each record does what its acknowledgement did the first time, minus the journal and the
// network: a batch is applied on this thread, before anyone can subscribe.
LogReplayHandler Shard::ReplayHandlerLocked() {
  const auto lane_of = [this](const std::string& parameter) -> absl::StatusOr<Lane*> {
    gate_.AssertHeld();
    auto it = lanes_.find(parameter);
    if (it != lanes_.end()) return it->second.get();
    return absl::DataLossError(
        absl::StrCat("a record of parameter '", parameter, "', which this shard does not own"));
  };
  LogReplayHandler handler;
  handler.model = [this](const ModelTable& table) -> absl::Status {
    gate_.AssertHeld();
    absl::StatusOr<bool> newly = store_->RegisterModel(table);
    if (!newly.ok()) return newly.status();
    if (*newly) CreateLanesLocked(/*attach_steps=*/false);
    return absl::OkStatus();
  };
  handler.worker = [this](const std::string& worker_id) {
    return store_->RegisterWorker(worker_id);
  };
  handler.contribution = [this, lane_of](Contribution c) -> absl::Status {
    absl::StatusOr<Lane*> lane = lane_of(c.parameter);
    if (!lane.ok()) return lane.status();
    absl::StatusOr<ValidatedContribution> valid = store_->Validate(std::move(c));
    if (!valid.ok()) return valid.status();
    if ((*lane)->stage != nullptr) {
      // A block logged twice (acknowledged, then again at a checkpoint's cut) is DUPLICATE;
      // one no batch can name any more is STALE: neither leaves anything to do.
      const int64_t applied = store_->Version((*lane)->batcher->parameter()).value_or(0);
      (*lane)->stage->Restore(*std::move(valid), applied);
      return absl::OkStatus();
    }
    return (*lane)->batcher->Restore(*std::move(valid));
  };
  handler.split_step = [this, lane_of](const LoggedSplitStep& step) -> absl::Status {
    gate_.AssertHeld();
    absl::StatusOr<Lane*> lane = lane_of(step.batch.parameter);
    if (!lane.ok()) return lane.status();
    return ReplaySplitStepLocked(**lane, step);
  };
  handler.batch = [this, lane_of](const LoggedBatch& logged) -> absl::Status {
    gate_.AssertHeld();
    absl::StatusOr<Lane*> lane = lane_of(logged.parameter);
    if (!lane.ok()) return lane.status();
    absl::StatusOr<Batch> batch = (*lane)->batcher->RestoreClose(logged);
    if (!batch.ok()) return batch.status();
    if ((*lane)->leads()) {  // its step needs the sums: its commit record, or the followers
      (*lane)->recovered.push_back(*std::move(batch));
      return absl::OkStatus();
    }
    return store_->ApplyBatch(*batch).status();
  };
  return handler;
}

absl::Status Shard::ReplaySplitStepLocked(Lane& lane, const LoggedSplitStep& step) {
  const std::string& parameter = step.batch.parameter;
  if (!lane.split.has_value()) {
    return absl::DataLossError(absl::StrCat("a logged split step of parameter '", parameter,
                                            "', which is whole on this shard"));
  }
  const int64_t version = store_->Version(parameter).value_or(0);
  if (lane.leads()) return ReplayLeaderStepLocked(lane, step, version);
  if (step.batch.version < version) {  // the checkpoint holds it (logged after the cut)
    lane.stage->Release(step.batch, version);
    if (step.batch.version + 1 == version) KeepLatest(lane, CommandOf(step));
    return absl::OkStatus();
  }
  if (step.batch.version > version) {
    return absl::DataLossError(absl::StrCat("a logged split step of '", parameter,
                                            "' applies to version ", step.batch.version,
                                            " but its rows are at version ", version));
  }
  absl::StatusOr<Batch> batch = lane.stage->Collect(step.batch);
  if (!batch.ok()) return batch.status();
  ReplayReducer reducer(static_cast<int>(lane.split->owner_shards.size()), lane.split->index,
                        step.sums);
  absl::StatusOr<StepOutcome> outcome = store_->ApplyRowBatch(*batch, step.lr_scale, reducer);
  if (!outcome.ok()) return outcome.status();
  lane.stage->Release(step.batch, outcome->update.version);
  KeepLatest(lane, CommandOf(step));
  return absl::OkStatus();
}

absl::Status Shard::ReplayLeaderStepLocked(Lane& lane, const LoggedSplitStep& step,
                                           int64_t version) {
  const std::string& parameter = step.batch.parameter;
  if (step.batch.version < version) {  // the checkpoint holds it (or: logged again at a cut)
    if (step.batch.version + 1 == version) KeepLatest(lane, CommandOf(step));
    return absl::OkStatus();
  }
  const auto refuse = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("the logged commit of step ", step.batch.version + 1,
                                            " of split parameter '", parameter, "' ", why));
  };
  if (lane.recovered.empty() || lane.recovered.front().version != step.batch.version ||
      step.batch.version != version) {
    return refuse(absl::StrCat(
        "has no logged batch before it (rows at version ", version, ", ",
        lane.recovered.size(), " batch(es) without a commit",
        lane.recovered.empty()
            ? std::string()
            : absl::StrCat(", the first for version ", lane.recovered.front().version),
        ")"));
  }
  const Batch& batch = lane.recovered.front();
  if (batch.entries.size() != step.batch.members.size()) {
    return refuse(absl::StrCat("names ", step.batch.members.size(), " members, its batch has ",
                               batch.entries.size()));
  }
  for (size_t i = 0; i < batch.entries.size(); ++i) {
    const Contribution& c = *batch.entries[i].contribution;
    if (c.worker_id != step.batch.members[i].worker_id ||
        c.sequence != step.batch.members[i].sequence) {
      return refuse(absl::StrCat("names contribution ", step.batch.members[i].sequence,
                                 " of worker '", step.batch.members[i].worker_id,
                                 "' at position ", i, ", its batch ", c.sequence, " of '",
                                 c.worker_id, "'"));
    }
  }
  ReplayReducer reducer(static_cast<int>(lane.split->owner_shards.size()), lane.split->index,
                        step.sums);
  absl::StatusOr<StepOutcome> outcome = store_->ApplyRowBatch(batch, step.lr_scale, reducer);
  if (!outcome.ok()) return outcome.status();
  lane.recovered.erase(lane.recovered.begin());
  KeepLatest(lane, CommandOf(step));
  return absl::OkStatus();
}

absl::StatusOr<std::string> Shard::Checkpoint() {
  MutexLock checkpoint_lock(&checkpoint_mu_);
  return CheckpointLocked();
}

absl::StatusOr<std::string> Shard::CheckpointLocked(const CutTag& cut) {
  if (checkpointer_ == nullptr) {
    return absl::FailedPreconditionError("checkpoints are disabled (no checkpoint directory)");
  }
  if (!store_->model_registered()) {
    return absl::FailedPreconditionError("no model is registered; nothing to checkpoint");
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<uint64_t> at_least = log_ != nullptr ? log_->NextFileNumber() : 0;
  absl::StatusOr<uint64_t> sequence =
      at_least.ok() ? checkpointer_->ReserveSequence(*at_least) : at_least;
  absl::StatusOr<CheckpointContents> contents =
      sequence.ok() ? TakeCut(*sequence, [this] { return KeepWriting(); })
                    : absl::StatusOr<CheckpointContents>(sequence.status());
  absl::StatusOr<std::string> path =
      contents.ok() ? checkpointer_->WriteContents(*sequence, *store_, *contents, cut)
                    : absl::StatusOr<std::string>(contents.status());
  DisarmSnapshots();  // what an error left held
  if (path.ok() && log_ != nullptr) PruneLogs();
  if (metrics_ != nullptr) {
    metrics_->RecordCheckpoint(path.ok(), absl::ToDoubleSeconds(absl::Now() - start));
  }
  return path;
}

absl::StatusOr<CheckpointContents> Shard::TakeCut(
    uint64_t sequence, std::function<absl::Status()> keep_going) {
  // The new log file is created (and synced) before the cut, so the cut holds no disk work
  // but writing a follower's staged blocks again into it (buffered appends, no sync).
  std::unique_ptr<LogWriter> next;
  if (log_ != nullptr) {
    absl::StatusOr<std::unique_ptr<LogWriter>> opened = log_->OpenNext(sequence);
    if (!opened.ok()) return opened.status();
    next = *std::move(opened);
  }
  CheckpointContents contents;
  std::vector<SnapshotSlot*> slots;
  uint64_t relogged_end = 0;
  const absl::Time cut_start = absl::Now();
  {
    MutexLock lock(&gate_);  // no contribution, batch or worker is being recorded now
    for (Lane* lane : lane_order_) {
      if (std::optional<Batch> batch = lane->batcher->Flush()) {
        steps_.Enqueue(lane->steps, *std::move(batch));
      }
      if (lane->stage != nullptr) {
        lane->snapshot->ArmAtCurrent();  // a follower: its leader decides the versions
      } else {
        lane->snapshot->Arm(lane->batcher->version());
      }
      contents.dedup.push_back(lane->batcher->ExportDedup());
      slots.push_back(lane->snapshot.get());
    }
    contents.workers = store_->workers();
    if (log_ != nullptr) {
      log_->SwitchTo(std::move(next), sequence);
      // The checkpoint holds no staged block: the new log gets every one again.
      if (absl::Status s = RelogAtCutLocked(&relogged_end); !s.ok()) return s;
    }
  }
  const int64_t cut_ns = absl::ToInt64Nanoseconds(absl::Now() - cut_start);
  int64_t longest = longest_cut_ns_.load();
  while (cut_ns > longest && !longest_cut_ns_.compare_exchange_weak(longest, cut_ns)) {
  }
  // The records before the cut are in files the checkpoint does not cover until it is
  // committed: make them durable (a crash before the commit replays them).
  if (log_ != nullptr) {
    if (absl::Status s = log_->SyncRetired(); !s.ok()) return s;
    if (relogged_end > 0) {
      if (absl::Status s = log_->WaitDurable(relogged_end); !s.ok()) return s;
    }
  }
  contents.parameter = [slots = std::move(slots),
                        keep_going](size_t i) -> absl::StatusOr<ParameterSnapshot> {
    return slots.at(i)->Take(keep_going);
  };
  contents.keep_going = std::move(keep_going);
  return contents;
}

absl::Status Shard::RelogAtCutLocked(uint64_t* end) {
  absl::Status status;
  for (Lane* lane : lane_order_) {
    if (lane->split.has_value()) {
      // The checkpoint holds the rows but not the sums of the step that made them, which a
      // restarted leader (AskFollowers) or a follower found behind (CatchUpFromLastCommit)
      // may still need.
      MutexLock lock(&lane->latest_mu);
      if (lane->latest.has_value()) {
        const StepRowsCommand& latest = *lane->latest;
        absl::StatusOr<uint64_t> written =
            log_->SplitStep({latest.batch, latest.lr_scale, latest.sums});
        if (!written.ok()) return written.status();
        *end = *written;
      }
    }
    if (lane->stage == nullptr) continue;
    lane->stage->ForEachStaged([&](const Contribution& c) {
      if (!status.ok()) return;
      absl::StatusOr<uint64_t> written = log_->Accepted(c);
      if (written.ok()) *end = *written; else status = written.status();
    });
  }
  return status;
}

absl::Status Shard::LastCheckpoint() {
  // The cut closes every open batch and the write waits until each is applied: nothing
  // accepted is left out. No contribution arrives after the cut (shutting down).
  absl::StatusOr<std::string> path =
      KeepWriting().ok() ? CheckpointLocked() : absl::StatusOr<std::string>(KeepWriting());
  if (path.ok()) {
    std::fprintf(stderr, "dion-server: checkpoint %s\n", path->c_str());
    return absl::OkStatus();
  }
  if (log_ == nullptr || !absl::IsDeadlineExceeded(path.status())) return path.status();
  std::fprintf(stderr,
               "dion-server: no last checkpoint: it could not be written before the shutdown "
               "deadline; the write-ahead log holds everything since the newest checkpoint "
               "and is replayed at the next start\n");
  return log_->WaitDurable(log_->end_offset());
}

void Shard::DisarmSnapshots() {
  ReaderMutexLock lock(&gate_);
  for (Lane* lane : lane_order_) lane->snapshot->Disarm();
}

absl::Status Shard::KeepWriting() const {
  const int64_t deadline = write_deadline_ns_.load();
  if (deadline == INT64_MAX || absl::ToUnixNanos(absl::Now()) < deadline) {
    return absl::OkStatus();
  }
  return absl::DeadlineExceededError(
      "the checkpoint was not written before the shutdown deadline (--shutdown_grace); it is "
      "abandoned and the write-ahead log holds what it would have held");
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

void Shard::PruneLogs() {
  // The logs of the two newest checkpoints stay: a damaged newest checkpoint falls back to the
  // previous one and replays both; older logs only cost disk.
  absl::StatusOr<uint64_t> floor = checkpointer_->SecondNewest();
  absl::Status pruned = floor.ok() ? log_->Prune(*floor) : floor.status();
  if (!pruned.ok()) {  // only disk space is at stake
    std::fprintf(stderr, "dion-server: old write-ahead logs not removed: %s\n",
                 pruned.ToString().c_str());
  }
}

}  // namespace dion
