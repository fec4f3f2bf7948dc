// Shard: applying closed batches and publishing their versions (docs/server.md, "Step
// pipeline"), and the steps of split parameters, which the owners take together
// (docs/server.md, "Split parameters"): the leader's retried step and a follower's StepRows.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/layout.h"
#include "common/orthonormalize.h"
#include "server/logged_reducers.h"
#include "server/metrics.h"
#include "server/shard.h"

namespace dion {

absl::Status Shard::ApplyOne(const Lane* lane, Batch batch) {
  if (lane->split.has_value()) return ApplySplit(lane, std::move(batch));
  const absl::Time start = absl::Now();
  lane->snapshot->BeforeStep(batch.version);  // a checkpoint's copy of the version it changes
  if (log_ != nullptr && batch.journal_end > 0) {
    // The batch's record must be durable before its version can reach anyone.
    if (absl::Status s = WaitDurable(batch.journal_end); !s.ok()) {
      std::fprintf(stderr, "dion-server: step of '%s' at version %lld not applied: %s\n",
                   batch.parameter.c_str(), static_cast<long long>(batch.version),
                   s.ToString().c_str());
      if (metrics_ != nullptr) metrics_->RecordFailedStep(lane->optimizer);
      lane->snapshot->StepFailed(batch.version, s);
      return s;
    }
  }
  absl::StatusOr<StepOutcome> outcome = store_->ApplyBatch(batch);
  if (!outcome.ok()) {
    std::fprintf(stderr, "dion-server: step of '%s' at version %lld failed: %s\n",
                 batch.parameter.c_str(), static_cast<long long>(batch.version),
                 outcome.status().ToString().c_str());
    if (metrics_ != nullptr) metrics_->RecordFailedStep(lane->optimizer);
    lane->snapshot->StepFailed(batch.version, outcome.status());
    return outcome.status();
  }
  lane->snapshot->AfterStep(outcome->update.version);
  PublishStep(*lane, *std::move(outcome), start);
  return absl::OkStatus();
}

void Shard::PublishStep(const Lane& lane, StepOutcome outcome, absl::Time start) {
  {
    // The store holds the new version already; wake Pulls waiting for it.
    MutexLock lock(&version_mu_);
    version_cv_.SignalAll();
  }
  const int64_t version = outcome.update.version;
  const absl::Time published = absl::Now();
  broadcaster_->Publish(std::move(outcome.update));
  const absl::Time end = absl::Now();
  lane.batcher->ReportStepDuration(published - start);
  RecordStep(lane, outcome.stats, version, end - published);
}

void Shard::RecordStep(const Lane& lane, const StepStats& stats, int64_t version,
                       absl::Duration broadcast) {
  if (metrics_ == nullptr) return;
  metrics_->RecordBatch(stats.contributions);
  metrics_->RecordPhase(StepPhase::kAggregate, absl::ToDoubleSeconds(stats.report.aggregate));
  if (lane.optimizer == OptimizerKind::kDion) {
    metrics_->RecordPhase(StepPhase::kPowerIteration,
                          absl::ToDoubleSeconds(stats.report.power_iteration));
    metrics_->RecordPhase(StepPhase::kOrthonormalize,
                          absl::ToDoubleSeconds(stats.report.orthonormalize));
  }
  metrics_->RecordPhase(StepPhase::kUpdate, absl::ToDoubleSeconds(stats.report.update));
  metrics_->RecordPhase(StepPhase::kBroadcast, absl::ToDoubleSeconds(broadcast));
  metrics_->RecordStep(lane.optimizer, version);
  if (stats.report.ortho_error >= 0) metrics_->SetOrthogonalityError(stats.report.ortho_error);
  metrics_->SetWorkerLoss(stats.mean_loss);
  if (!options_.batcher.dp.enabled()) return;
  metrics_->SetPrivacySpent(PrivacyOf(store_->Statuses()).spent.epsilon);
}

absl::Status Shard::CheckSplitServable(const ModelTable& table) const {
  std::vector<ParamSpec> specs;
  for (const ParameterDefinition& definition : table.parameters) specs.push_back(definition.spec);
  absl::StatusOr<Layout> layout = Layout::Compute(specs, options_.store.num_shards);
  if (!layout.ok()) return absl::OkStatus();  // the store's registration reports it
  for (size_t i = 0; i < layout->placements().size(); ++i) {
    const Placement& placement = layout->placements()[i];  // table order, as specs
    if (!placement.is_split() || !layout->Holds(placement.parameter, options_.store.shard_index)) {
      continue;
    }
    std::vector<int> owners;
    for (const RowOwner& owner : placement.split) owners.push_back(owner.shard);
    const std::string what = absl::StrCat("parameter '", placement.parameter,
                                          "' is split over shards ", absl::StrJoin(owners, ", "),
                                          " (split_owners)");
    if (options_.split_peers == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, "; its owners step together over ShardPeer, which needs --peer_addresses (every "
          "shard's host:port, in shard-index order), and this shard has none; nothing was "
          "registered"));
    }
    if (absl::Status s = ValidateSplitOrthoMethod(specs[i].dion.ortho.method); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", s.message(),
                                                     "; nothing was registered"));
    }
    if (options_.batcher.dp.enabled()) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, "; differential privacy (--dp_noise_multiplier) is not available for split "
          "parameters; nothing was registered"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PushReply> Shard::StageContribution(Lane* lane,
                                                   ValidatedContribution contribution) {
  const int64_t base = contribution->base_version;
  const int64_t applied = store_->Version(contribution->parameter).value_or(0);
  uint64_t journal_end = 0;
  absl::StatusOr<PushOutcome> result = lane->stage->Stage(
      std::move(contribution), applied, options_.clock->Now(), log_.get(), &journal_end);
  if (!result.ok()) return result.status();
  // Staleness as this follower sees it; the leader's ack has the batch's.
  PushReply reply{*result, applied, applied, std::max<int64_t>(applied - base, 0)};
  if (log_ != nullptr && *result != PushOutcome::kStale) {
    // A duplicate's original may still be on its way to the disk: wait for everything.
    reply.durable_end =
        *result == PushOutcome::kAccepted ? journal_end : log_->end_offset();
  }
  return reply;
}

absl::Status Shard::ApplySplit(const Lane* lane, Batch batch) {
  const absl::Time start = absl::Now();
  const SplitOwnership& split = *lane->split;
  lane->snapshot->BeforeStep(batch.version);
  const int64_t step = batch.version + 1;
  if (log_ != nullptr && batch.journal_end > 0) {
    // The batch is the step's prepare record: durable before any follower hears of it, so a
    // restarted leader finds every step its followers may have taken (docs/server.md).
    if (absl::Status s = WaitDurable(batch.journal_end); !s.ok()) {
      std::fprintf(stderr, "dion-server: step %lld of split parameter '%s' not taken: %s\n",
                   static_cast<long long>(step), batch.parameter.c_str(), s.ToString().c_str());
      if (metrics_ != nullptr) metrics_->RecordFailedStep(lane->optimizer);
      lane->snapshot->StepFailed(batch.version, s);
      return s;
    }
  }
  if (options_.leader_step_hook) options_.leader_step_hook(step, /*answered=*/false);
  StepRowsCommand command;
  command.batch.parameter = batch.parameter;
  command.batch.version = batch.version;
  command.batch.reason = batch.reason;
  for (const WeightedContribution& e : batch.entries) {
    command.batch.members.push_back(
        {e.contribution->worker_id, e.contribution->sequence, e.staleness, e.weight});
  }
  // Closed before a restart: the followers may hold the step already (ask them each attempt).
  const bool recovered = batch.version < lane->recovered_below;
  absl::Duration backoff = options_.split_retry_initial;
  for (int32_t attempt = 0;; ++attempt) {
    absl::StatusOr<double> lr_scale = store_->NextLrScale(batch.parameter);
    if (!lr_scale.ok()) return lr_scale.status();
    command.attempt = attempt;
    command.lr_scale = *lr_scale;
    absl::StatusOr<std::vector<StepSum>> known = std::vector<StepSum>();
    if (recovered) known = AskFollowers(command, split);
    absl::StatusOr<StepOutcome> outcome =
        known.ok() ? absl::UnknownError("not taken") : known.status();
    absl::Status followed;
    std::vector<StepSum> sums;
    const bool taken_elsewhere = known.ok() && !known->empty();
    if (taken_elsewhere) {
      // A follower took the step: take it here with its sums, then hand them to the others.
      ReplayReducer given(static_cast<int>(split.owner_shards.size()), split.index, *known);
      outcome = store_->ApplyRowBatch(batch, *lr_scale, given);
      sums = *std::move(known);
    } else if (known.ok()) {
      std::unique_ptr<FollowerSteps> followers =
          options_.split_peers->StartFollowers(command, split);
      std::unique_ptr<RowReducer> reducer = options_.split_peers->Reducer(
          batch.parameter, step, attempt, split);
      RecordingReducer recorder(*reducer);
      outcome = store_->ApplyRowBatch(batch, *lr_scale, recorder);
      followed = followers->Wait();
      sums = recorder.TakeSums();
    }
    if (outcome.ok()) {
      if (options_.leader_step_hook) options_.leader_step_hook(step, /*answered=*/true);
      StepRowsCommand committed = command;
      committed.sums = std::move(sums);
      CommitLeaderStep(*lane, std::move(committed));  // the sums are kept, not copied
      lane->snapshot->AfterStep(outcome->update.version);
      PublishStep(*lane, *std::move(outcome), start);
      // The command with its sums, only on the rare path that sends them: a copy of
      // Lane::latest.
      std::optional<StepRowsCommand> with_sums;
      if (taken_elsewhere) {
        // Followers still behind take the step from the sums; those that have it say so.
        with_sums = LatestOf(*lane);  // set by CommitLeaderStep above
        followed = options_.split_peers->StartFollowers(*with_sums, split)->Wait();
      }
      // Every reduction completed, so each follower can have its sums: one whose answer failed
      // takes the step again (before the lane's next batch needs it at this version), from
      // the hub's retained sums, or from the sums themselves when this process has no hub
      // that saw the step.
      if (!followed.ok()) CatchUpFollowers(with_sums ? *with_sums : command, split, followed);
      return absl::OkStatus();
    }
    const bool giving_up = GivingUp();
    std::fprintf(stderr,
                 "dion-server: step %lld of split parameter '%s' (attempt %d) failed, nothing "
                 "applied; %s: %s%s%s\n",
                 static_cast<long long>(step), batch.parameter.c_str(), attempt,
                 giving_up ? "not retried (shutting down)"
                               : absl::StrCat("retrying in ", absl::FormatDuration(backoff)).c_str(),
                 outcome.status().ToString().c_str(), followed.ok() ? "" : "; followers: ",
                 followed.ok() ? "" : followed.ToString().c_str());
    if (metrics_ != nullptr) metrics_->RecordSplitStepFailure();
    if (giving_up) {
      if (metrics_ != nullptr) metrics_->RecordFailedStep(lane->optimizer);
      lane->snapshot->StepFailed(batch.version, outcome.status());
      return outcome.status();
    }
    SleepUntilRetry(backoff);
    backoff = std::min(2 * backoff, options_.split_retry_max);
    CatchUpFromLastCommit(*lane, batch.version);
  }
}

void Shard::CatchUpFromLastCommit(const Lane& lane, int64_t version) {
  StepRowsCommand query;
  {
    MutexLock lock(&lane.latest_mu);
    if (!lane.latest.has_value() || lane.latest->batch.version + 1 != version) return;
    query.batch = lane.latest->batch;  // the sums are copied only if a follower needs them
    query.lr_scale = lane.latest->lr_scale;
  }
  if (GivingUp()) return;
  query.query = true;
  bool behind = false;
  for (const absl::StatusOr<StepRowsReply>& reply :
       options_.split_peers->StartFollowers(query, *lane.split)->Replies()) {
    behind |= reply.ok() && reply->version == query.batch.version;
  }
  if (!behind) return;
  std::optional<StepRowsCommand> last = LatestOf(lane);
  if (!last.has_value() || last->batch.version + 1 != version) return;
  const absl::Status s = options_.split_peers->StartFollowers(*last, *lane.split)->Wait();
  std::fprintf(stderr,
               "dion-server: split parameter '%s': a follower was at version %lld, behind the "
               "last committed step; sent it that step's sums: %s\n",
               last->batch.parameter.c_str(), static_cast<long long>(last->batch.version),
               s.ToString().c_str());
}

std::optional<StepRowsCommand> Shard::LatestOf(const Lane& lane) {
  MutexLock lock(&lane.latest_mu);
  return lane.latest;
}

void Shard::CommitLeaderStep(const Lane& lane, StepRowsCommand committed) {
  const int64_t step = committed.batch.version + 1;
  const std::string parameter = committed.batch.parameter;
  absl::StatusOr<uint64_t> end = uint64_t{0};
  {
    // Not under the gate (a checkpoint cut waits for this step: its batch closed before the
    // cut) but under latest_mu, which the cut takes to log Lane::latest again: a record that
    // went to the file before the cut is then in the new file too, so a restart from that
    // checkpoint still knows this step's sums.
    MutexLock lock(&lane.latest_mu);
    if (log_ != nullptr) {
      end = log_->SplitStep({committed.batch, committed.lr_scale, committed.sums});
    }
    lane.latest = std::move(committed);
  }
  if (log_ == nullptr) return;
  absl::Status logged = end.ok() ? log_->WaitDurable(*end) : end.status();
  if (logged.ok()) return;
  // The log is broken, so the shard acknowledges nothing more; the step itself stands, and
  // after a restart the followers that took it hand its sums back (AskFollowers).
  std::fprintf(stderr,
               "dion-server: step %lld of split parameter '%s' is applied but not committed to "
               "the write-ahead log: %s\n",
               static_cast<long long>(step), parameter.c_str(), logged.ToString().c_str());
}

absl::StatusOr<std::vector<StepSum>> Shard::AskFollowers(const StepRowsCommand& command,
                                                         const SplitOwnership& split) {
  StepRowsCommand query = command;
  query.query = true;
  const int64_t step = command.batch.version + 1;
  std::vector<absl::StatusOr<StepRowsReply>> replies =
      options_.split_peers->StartFollowers(query, split)->Replies();
  // One follower's sums suffice, whatever the others answered (those are caught up later).
  for (absl::StatusOr<StepRowsReply>& reply : replies) {
    if (reply.ok() && reply->version == step && !reply->sums.empty()) {
      return std::move(reply->sums);
    }
  }
  std::vector<int> taken;  // shards
  for (size_t i = 0; i < replies.size(); ++i) {
    if (!replies[i].ok()) return replies[i].status();
    if (replies[i]->version == step) taken.push_back(split.owner_shards[i + 1]);
  }
  if (taken.empty()) return std::vector<StepSum>();  // nobody took it: take it as usual
  return absl::DataLossError(absl::StrCat(
      "follower shard(s) ", absl::StrJoin(taken, ", "), " took step ", step, " of '",
      command.batch.parameter, "' but none holds its sums any more (restored from a "
      "checkpoint since?), and the leader's log ends before the step's commit: the owners "
      "must be restored at one version"));
}

void Shard::CatchUpFollowers(const StepRowsCommand& command, const SplitOwnership& split,
                             absl::Status failure) {
  const long long step = static_cast<long long>(command.batch.version + 1);
  absl::Duration backoff = options_.split_retry_initial;
  for (int tries = 1;; ++tries) {
    if (GivingUp()) {
      std::fprintf(stderr,
                   "dion-server: step %lld of '%s' is applied here but a follower has not "
                   "answered (%s); shutting down, so it is not asked again: that follower "
                   "stays at version %lld\n",
                   step, command.batch.parameter.c_str(), failure.ToString().c_str(), step - 1);
      return;
    }
    std::fprintf(stderr,
                 "dion-server: step %lld of '%s' is applied here; a follower answered: %s; "
                 "asking again in %s\n",
                 step, command.batch.parameter.c_str(), failure.ToString().c_str(),
                 absl::FormatDuration(backoff).c_str());
    if (metrics_ != nullptr) metrics_->RecordSplitStepFailure();
    SleepUntilRetry(backoff);
    backoff = std::min(2 * backoff, options_.split_retry_max);
    if (GivingUp()) continue;  // reported at the top
    failure = options_.split_peers->StartFollowers(command, split)->Wait();
    if (failure.ok()) {
      std::fprintf(stderr, "dion-server: step %lld of '%s': every follower has it (%d tries)\n",
                   step, command.batch.parameter.c_str(), tries);
      return;
    }
  }
}

void Shard::SleepUntilRetry(absl::Duration backoff) const {
  const absl::Time give_up = absl::FromUnixNanos(give_up_ns_.load());
  absl::SleepFor(std::max(absl::ZeroDuration(), std::min(backoff, give_up - absl::Now())));
}

bool Shard::GivingUp() const {
  return absl::ToUnixNanos(absl::Now()) >= give_up_ns_.load();
}

absl::StatusOr<StepRowsReply> Shard::StepRows(const StepRowsCommand& command) {
  const absl::Time start = absl::Now();
  const std::string& parameter = command.batch.parameter;
  Lane* lane = nullptr;
  {
    ReaderMutexLock lock(&gate_);
    if (shutting_down_) {
      return absl::UnavailableError("the shard is shutting down; it takes no more steps");
    }
    auto it = lanes_.find(parameter);
    if (it == lanes_.end()) {
      absl::Status s = store_->Version(parameter).status();
      return s.ok() ? absl::FailedPreconditionError("no lane") : s;
    }
    lane = it->second.get();
  }
  if (options_.step_rows_fault) {
    if (absl::Status s = options_.step_rows_fault(command); !s.ok()) return s;
  }
  if (lane->stage == nullptr || options_.split_peers == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter '", parameter, "' is not split with this shard as a follower (",
        lane->leads() ? "this shard leads it" : "it is whole here", ")"));
  }
  if (lane->stepping.exchange(true)) {
    return absl::UnavailableError(absl::StrCat(
        "a step of parameter '", parameter, "' is under way on this follower; ask again"));
  }
  struct Done {
    std::atomic<bool>& stepping;
    ~Done() { stepping.store(false); }
  } done{lane->stepping};
  if (command.query) return AnswerQuery(*lane, command);
  absl::StatusOr<int64_t> version = store_->Version(parameter);
  if (!version.ok()) return version.status();
  if (*version == command.batch.version + 1) {  // a retried command already taken
    absl::StatusOr<ParameterSnapshot> now = store_->Snapshot(parameter, false);
    if (!now.ok()) return now.status();
    if (now->version == command.batch.version + 1) {
      // Answered only once its record is durable (it may have failed the first time).
      if (log_ != nullptr) {
        if (absl::Status s = log_->WaitDurable(log_->end_offset()); !s.ok()) {
          return absl::UnavailableError(absl::StrCat(
              "the write-ahead log could not make the step durable: ", s.message()));
        }
      }
      // The same version from another batch (the leader lost its batch and closed another)
      // is not this step: refused rather than answered OK.
      if (absl::Status same = CheckLatestBatch(*lane, command.batch); !same.ok()) return same;
      return StepRowsReply{now->version, now->checksum, {}};
    }
  }
  if (*version != command.batch.version) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter '", parameter, "': this follower's rows are at version ", *version,
        ", the leader's step is from version ", command.batch.version));
  }
  return TakeFollowerStep(*lane, command, start);
}

absl::StatusOr<StepRowsReply> Shard::TakeFollowerStep(Lane& lane, const StepRowsCommand& command,
                                                      absl::Time start) {
  absl::StatusOr<Batch> batch = lane.stage->Collect(command.batch);
  if (!batch.ok()) return batch.status();
  // The sums go to the log with the step and stay for a restarted leader's query.
  std::unique_ptr<RowReducer> reducer;
  std::optional<ReplayReducer> given;  // the leader sent the sums: no reduction
  if (command.sums.empty()) {
    reducer = options_.split_peers->Reducer(command.batch.parameter, command.batch.version + 1,
                                            command.attempt, *lane.split);
  } else {
    given.emplace(static_cast<int>(lane.split->owner_shards.size()), lane.split->index,
                  command.sums);
  }
  RecordingReducer recorder(given.has_value() ? static_cast<RowReducer&>(*given) : *reducer);
  lane.snapshot->BeforeStep(batch->version);
  absl::StatusOr<StepOutcome> outcome = store_->ApplyRowBatch(*batch, command.lr_scale, recorder);
  if (!outcome.ok()) {
    // A checkpoint waiting for this step fails now rather than waiting for a retry that may
    // never come; the next one is cut at the version the follower then has.
    lane.snapshot->StepFailed(batch->version, outcome.status());
    return outcome.status();
  }
  const StepRowsReply reply{outcome->update.version, outcome->update.checksum, {}};
  StepRowsCommand taken = command;
  taken.query = false;
  taken.sums = recorder.TakeSums();
  absl::StatusOr<uint64_t> end = uint64_t{0};
  {
    // A checkpoint's cut sees the step's record, the release of its members and the step as
    // the latest, or none of them: it logs again only blocks that the log after it still
    // needs, and the latest step's sums.
    ReaderMutexLock lock(&gate_);
    if (log_ != nullptr) end = log_->SplitStep({taken.batch, taken.lr_scale, taken.sums});
    lane.stage->Release(command.batch, reply.version);
    KeepLatest(lane, std::move(taken));
  }
  absl::Status logged = end.ok() ? absl::OkStatus() : end.status();
  if (logged.ok() && *end > 0) logged = log_->WaitDurable(*end);
  lane.snapshot->AfterStep(reply.version);
  PublishStep(lane, *std::move(outcome), start);
  if (!logged.ok()) {
    std::fprintf(stderr,
                 "dion-server: step %lld of split parameter '%s' is applied but not in the "
                 "write-ahead log (%s): a crash before the next checkpoint loses it here\n",
                 static_cast<long long>(reply.version), command.batch.parameter.c_str(),
                 logged.ToString().c_str());
    // The leader asks again and is answered once the log is durable ("already taken").
    return absl::UnavailableError(absl::StrCat(
        "the write-ahead log could not record the step: ", logged.message()));
  }
  return reply;
}

absl::StatusOr<StepRowsReply> Shard::AnswerQuery(const Lane& lane,
                                                 const StepRowsCommand& command) {
  absl::StatusOr<ParameterSnapshot> now = store_->Snapshot(command.batch.parameter, false);
  if (!now.ok()) return now.status();
  const int64_t step = command.batch.version + 1;
  if (now->version != step && now->version != command.batch.version) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter '", command.batch.parameter, "': this follower's rows are at version ",
        now->version, ", the leader asks about step ", step, " (from version ",
        command.batch.version, ")"));
  }
  if (now->version == step && log_ != nullptr) {
    if (absl::Status s = log_->WaitDurable(log_->end_offset()); !s.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "the write-ahead log could not make the step durable: ", s.message()));
    }
  }
  if (now->version != step) return StepRowsReply{now->version, now->checksum, {}};
  absl::StatusOr<std::vector<StepSum>> sums = LatestSums(lane, command.batch);
  if (!sums.ok()) return sums.status();
  return StepRowsReply{now->version, now->checksum, *std::move(sums)};
}

void Shard::KeepLatest(const Lane& lane, StepRowsCommand step) {
  MutexLock lock(&lane.latest_mu);
  lane.latest = std::move(step);
}

absl::Status Shard::CheckLatestBatchLocked(const Lane& lane, const LoggedBatch& batch) {
  if (!lane.latest.has_value() || lane.latest->batch.version != batch.version) {
    return absl::OkStatus();
  }
  const std::vector<LoggedBatch::Member>& mine = lane.latest->batch.members;
  bool same = mine.size() == batch.members.size();
  for (size_t i = 0; same && i < mine.size(); ++i) {
    same = mine[i].worker_id == batch.members[i].worker_id &&
           mine[i].sequence == batch.members[i].sequence;
  }
  if (same) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "parameter '", batch.parameter, "': version ", batch.version + 1,
      " here came from another batch (", mine.size(), " members) than the leader's (",
      batch.members.size(), " members): the leader lost the batch it had sent; the owners "
      "must be restored at one version"));
}

absl::Status Shard::CheckLatestBatch(const Lane& lane, const LoggedBatch& batch) {
  MutexLock lock(&lane.latest_mu);
  return CheckLatestBatchLocked(lane, batch);
}

absl::StatusOr<std::vector<StepSum>> Shard::LatestSums(const Lane& lane,
                                                       const LoggedBatch& batch) {
  MutexLock lock(&lane.latest_mu);
  if (absl::Status same = CheckLatestBatchLocked(lane, batch); !same.ok()) return same;
  if (!lane.latest.has_value() || lane.latest->batch.version != batch.version) {
    return std::vector<StepSum>();
  }
  return lane.latest->sums;
}

int64_t Shard::StagedContributions(absl::string_view parameter) const {
  ReaderMutexLock lock(&gate_);
  auto it = lanes_.find(parameter);
  if (it == lanes_.end() || it->second->stage == nullptr) return 0;
  return it->second->stage->size();
}

}  // namespace dion
