#include "server/batcher.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dion {

absl::Status ValidateBatcherOptions(const BatcherOptions& options) {
  const auto error = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("batcher options: ", parts...));
  };
  if (options.target_samples < 0) {
    return error("target_samples must be >= 0, got ", options.target_samples);
  }
  if (absl::Status s = ValidateDpOptions(options.dp); !s.ok()) return s;
  if (options.target_workers < 0) {
    return error("target_workers must be >= 0, got ", options.target_workers);
  }
  if (options.deadline < absl::ZeroDuration()) {
    return error("deadline must be >= 0, got ", absl::FormatDuration(options.deadline));
  }
  if (options.max_contributions < 1) {
    return error("max_contributions must be >= 1, got ", options.max_contributions);
  }
  if (options.target_samples == 0 && options.target_workers == 0 &&
      options.deadline == absl::InfiniteDuration() && !options.adaptive) {
    return error("no closing rule: set target_samples, target_workers, a finite deadline "
                 "or adaptive");
  }
  if (options.min_step_interval < absl::ZeroDuration()) {
    return error("min_step_interval must be >= 0");
  }
  if (options.min_target_samples < 1 || options.max_target_samples < options.min_target_samples) {
    return error("need 1 <= min_target_samples <= max_target_samples, got ",
                 options.min_target_samples, " and ", options.max_target_samples);
  }
  if (!(options.smoothing > 0 && options.smoothing <= 1)) {
    return error("smoothing must be in (0, 1], got ", options.smoothing);
  }
  if (options.worker_idle <= absl::ZeroDuration()) return error("worker_idle must be > 0");
  if (options.dedup_window < 1) return error("dedup_window must be >= 1");
  return ValidateStalenessOptions(options.staleness);
}

Batcher::Batcher(std::string parameter, const BatcherOptions& options, int64_t version,
                 const Clock* clock, BatchJournal* journal)
    : parameter_(std::move(parameter)),
      options_(options),
      staleness_(options.staleness),
      clock_(clock),
      journal_(journal),
      version_(version) {}

uint64_t SequenceHorizon(uint64_t highest, uint64_t window, absl::Time now) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  const int64_t micros = std::max<int64_t>(absl::ToUnixMicros(now), 0);
  const uint64_t clock = static_cast<uint64_t>(micros);
  const uint64_t by_clock =
      clock > kMax - kSequenceClockSlackMicros ? kMax : clock + kSequenceClockSlackMicros;
  const uint64_t by_window = highest > kMax - window ? kMax : highest + window;
  return std::max(by_clock, by_window);
}

absl::StatusOr<OfferResult> Batcher::Offer(ValidatedContribution validated) {
  const Contribution& contribution = *validated;
  if (contribution.parameter != parameter_) {
    return absl::InvalidArgumentError(absl::StrCat("contribution for '", contribution.parameter,
                                                   "' offered to the batcher of '", parameter_,
                                                   "'"));
  }
  if (absl::Status s = CheckClipped(contribution, options_.dp); !s.ok()) return s;
  const absl::Time now = clock_->Now();
  MutexLock lock(&mu_);
  if (contribution.base_version < 0 || contribution.base_version > version_) {
    return absl::OutOfRangeError(absl::StrCat(
        "parameter '", parameter_, "': base_version ", contribution.base_version,
        " is outside [0, ", version_, "], the current version"));
  }
  OfferResult result;
  result.version = version_;
  result.staleness = version_ - contribution.base_version;

  auto window = dedup_.find(contribution.worker_id);
  const uint64_t highest = window == dedup_.end() ? 0 : window->second.highest();
  const uint64_t horizon = SequenceHorizon(highest, options_.dedup_window, now);
  if (contribution.sequence > horizon) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter '", parameter_, "': sequence ", contribution.sequence, " of worker '",
        contribution.worker_id, "' is beyond the sequence horizon ", horizon,
        " (the larger of its highest accepted sequence ", highest, " + the dedup window ",
        options_.dedup_window, " and the shard's clock in Unix microseconds + one day); "
        "nothing was recorded"));
  }
  if (window != dedup_.end()) {
    switch (window->second.Lookup(contribution.sequence)) {
      case SequenceWindow::State::kNew:
        break;
      case SequenceWindow::State::kSeen:
        ++stats_.duplicate;
        result.result = PushOutcome::kDuplicate;
        return result;
      case SequenceWindow::State::kUnknown:
        // Neither DUPLICATE (the worker would drop data that may never have been applied) nor
        // ACCEPTED (it may have been applied already). DATA_LOSS, a code of its own: clients
        // must neither restore it (double apply) nor take it as refused-and-retryable.
        ++stats_.unknown;
        return absl::DataLossError(absl::StrCat(
            "parameter '", parameter_, "': sequence ", contribution.sequence, " of worker '",
            contribution.worker_id, "' is older than the dedup window (floor ",
            window->second.floor(), ", window ", options_.dedup_window,
            "): it was NOT applied now, and the shard cannot tell whether it was applied "
            "before; clients must keep fewer than ", options_.dedup_window,
            " unacknowledged sequences per parameter"));
    }
  }
  if (staleness_.Refuses(result.staleness)) {
    ++stats_.stale;
    result.result = PushOutcome::kStale;
    return result;
  }

  if (journal_ != nullptr) {
    absl::StatusOr<uint64_t> end = journal_->Accepted(contribution);
    if (!end.ok()) return end.status();
    result.journal_end = *end;
  }
  ++stats_.accepted;
  result.result = PushOutcome::kAccepted;
  // exp with a tiny tau0 can underflow to 0; keep the weight positive so the mean is defined.
  result.weight =
      std::max(staleness_.Weight(result.staleness), std::numeric_limits<double>::min());
  AddOpenLocked(std::move(validated), result.staleness, result.weight, now);

  if (std::optional<CloseReason> reason = ShouldCloseLocked(now)) {
    result.closed = CloseLocked(*reason, now, &result.journal_end);
  }
  return result;
}

void Batcher::AddOpenLocked(ValidatedContribution validated, int64_t staleness, double weight,
                            absl::Time now) {
  const Contribution& contribution = *validated;
  auto window = dedup_.find(contribution.worker_id);
  if (window == dedup_.end()) {
    window = dedup_.emplace(contribution.worker_id, SequenceWindow(options_.dedup_window)).first;
  }
  window->second.Insert(contribution.sequence);
  if (open_.empty()) opened_ = now;
  ++open_workers_[contribution.worker_id];
  last_seen_[contribution.worker_id] = now;
  open_samples_ += contribution.sample_count;
  const double raw_weight = static_cast<double>(contribution.sample_count) * weight;
  open_.push_back({std::move(validated), staleness, raw_weight});
}

absl::Status Batcher::Restore(ValidatedContribution validated) {
  const Contribution& c = *validated;
  const absl::Time now = clock_->Now();
  MutexLock lock(&mu_);
  const auto refuse = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("log replay of parameter '", parameter_,
                                            "': contribution ", c.sequence, " of worker '",
                                            c.worker_id, "' ", why));
  };
  if (c.parameter != parameter_) return refuse(absl::StrCat("is for '", c.parameter, "'"));
  if (c.base_version < 0 || c.base_version > version_) {
    return refuse(absl::StrCat("has base_version ", c.base_version, " outside [0, ", version_,
                               "]"));
  }
  auto window = dedup_.find(c.worker_id);
  if (window != dedup_.end() &&
      window->second.Lookup(c.sequence) != SequenceWindow::State::kNew) {
    return refuse("was accepted twice");
  }
  ++stats_.accepted;
  const int64_t staleness = version_ - c.base_version;
  const double weight =
      std::max(staleness_.Weight(staleness), std::numeric_limits<double>::min());
  AddOpenLocked(std::move(validated), staleness, weight, now);
  return absl::OkStatus();
}

absl::StatusOr<Batch> Batcher::RestoreClose(const LoggedBatch& logged) {
  const absl::Time now = clock_->Now();
  MutexLock lock(&mu_);
  const auto refuse = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("log replay of parameter '", parameter_,
                                            "': the batch of version ", logged.version, " ",
                                            why));
  };
  if (logged.parameter != parameter_) return refuse(absl::StrCat("is for '", logged.parameter, "'"));
  if (logged.version != version_) {
    return refuse(absl::StrCat("was logged while the parameter is at version ", version_));
  }
  if (logged.members.size() != open_.size() || open_.empty()) {
    return refuse(absl::StrCat("has ", logged.members.size(), " members, the log accepted ",
                               open_.size(), " contributions since the previous batch"));
  }
  Batch batch = CloseLocked(logged.reason, now, nullptr, /*record=*/false);
  for (size_t i = 0; i < batch.entries.size(); ++i) {
    WeightedContribution& entry = batch.entries[i];
    const LoggedBatch::Member& member = logged.members[i];
    if (entry.contribution->worker_id != member.worker_id ||
        entry.contribution->sequence != member.sequence) {
      return refuse(absl::StrCat("lists contribution ", member.sequence, " of worker '",
                                 member.worker_id, "' at position ", i, ", the log accepted ",
                                 entry.contribution->sequence, " of '",
                                 entry.contribution->worker_id, "'"));
    }
    entry.staleness = member.staleness;
    entry.weight = member.weight;
  }
  batch.noise_seed = logged.noise_seed;
  batch.noise_stddev = logged.noise_stddev;
  return batch;
}

std::optional<Batch> Batcher::CloseIfDue() {
  const absl::Time now = clock_->Now();
  MutexLock lock(&mu_);
  if (open_.empty()) return std::nullopt;
  if (now - opened_ < TargetsLocked(now).deadline) return std::nullopt;
  return CloseLocked(CloseReason::kDeadline, now);
}

std::optional<Batch> Batcher::Flush() {
  const absl::Time now = clock_->Now();
  MutexLock lock(&mu_);
  if (open_.empty()) return std::nullopt;
  return CloseLocked(CloseReason::kFlush, now);
}

std::optional<absl::Time> Batcher::NextDeadline() const {
  MutexLock lock(&mu_);
  if (open_.empty() || options_.deadline == absl::InfiniteDuration()) return std::nullopt;
  return opened_ + options_.deadline;
}

void Batcher::ReportStepDuration(absl::Duration duration) {
  const double seconds = absl::ToDoubleSeconds(duration);
  if (!(seconds >= 0) || !std::isfinite(seconds)) return;
  MutexLock lock(&mu_);
  step_seconds_ = step_seconds_.has_value()
                      ? options_.smoothing * seconds + (1 - options_.smoothing) * *step_seconds_
                      : seconds;
}

bool Batcher::AlreadyAccepted(absl::string_view worker_id, uint64_t sequence) const {
  MutexLock lock(&mu_);
  auto window = dedup_.find(worker_id);
  return window != dedup_.end() &&
         window->second.Lookup(sequence) == SequenceWindow::State::kSeen;
}

int64_t Batcher::version() const {
  MutexLock lock(&mu_);
  return version_;
}

BatchTargets Batcher::targets() const {
  const absl::Time now = clock_->Now();
  MutexLock lock(&mu_);
  return TargetsLocked(now);
}

double Batcher::arrival_rate() const {
  MutexLock lock(&mu_);
  return rate_;
}

BatcherStats Batcher::stats() const {
  MutexLock lock(&mu_);
  BatcherStats stats = stats_;
  stats.open_contributions = static_cast<int64_t>(open_.size());
  stats.open_samples = open_samples_;
  return stats;
}

std::vector<WorkerDedupState> Batcher::ExportDedup() const {
  MutexLock lock(&mu_);
  std::vector<WorkerDedupState> state;
  state.reserve(dedup_.size());
  for (const auto& [worker_id, window] : dedup_) {
    state.push_back(
        {worker_id, window.floor(), window.forced_floor(), window.SeenAboveFloor()});
  }
  std::sort(state.begin(), state.end(),
            [](const auto& a, const auto& b) { return a.worker_id < b.worker_id; });
  return state;
}

void Batcher::ImportDedup(const std::vector<WorkerDedupState>& state) {
  MutexLock lock(&mu_);
  dedup_.clear();
  for (const WorkerDedupState& worker : state) {
    SequenceWindow window(options_.dedup_window);
    window.Restore(worker.floor, worker.forced_floor, worker.seen);
    dedup_.insert_or_assign(worker.worker_id, std::move(window));
  }
}

BatchTargets Batcher::TargetsLocked(absl::Time now) const {
  BatchTargets targets{options_.target_samples, options_.target_workers, options_.deadline};
  if (!options_.adaptive) return targets;
  if (rate_ > 0) {
    const double interval =
        std::max(absl::ToDoubleSeconds(options_.min_step_interval), step_seconds_.value_or(0.0));
    const double wanted = std::round(rate_ * interval);
    targets.samples = static_cast<int64_t>(
        std::clamp(wanted, static_cast<double>(options_.min_target_samples),
                   static_cast<double>(options_.max_target_samples)));
  }
  if (options_.target_workers > 0) {
    int live = 0;
    for (const auto& [worker_id, seen] : last_seen_) {
      if (now - seen <= options_.worker_idle) ++live;
    }
    targets.workers = std::clamp(live, 1, options_.target_workers);
  }
  return targets;
}

std::optional<CloseReason> Batcher::ShouldCloseLocked(absl::Time now) const {
  if (open_.empty()) return std::nullopt;
  const BatchTargets targets = TargetsLocked(now);
  if (targets.samples > 0 && open_samples_ >= targets.samples) return CloseReason::kSamples;
  if (targets.workers > 0 && static_cast<int>(open_workers_.size()) >= targets.workers) {
    return CloseReason::kWorkers;
  }
  if (now - opened_ >= targets.deadline) return CloseReason::kDeadline;
  if (static_cast<int>(open_.size()) >= options_.max_contributions) return CloseReason::kFull;
  return std::nullopt;
}

Batch Batcher::CloseLocked(CloseReason reason, absl::Time now, uint64_t* journal_end,
                           bool record) {
  Batch batch;
  batch.parameter = parameter_;
  batch.version = version_;
  batch.samples = open_samples_;
  batch.workers = static_cast<int>(open_workers_.size());
  batch.reason = reason;
  batch.opened = opened_;
  batch.closed = now;
  // By (worker, sequence), not arrival: the weights' sum (and the step's sums after it) then
  // do not depend on how the network interleaved the pushes.
  std::sort(open_.begin(), open_.end(), [](const OpenContribution& a, const OpenContribution& b) {
    return SummationOrderLess(a.contribution, b.contribution);
  });
  double total = 0;
  for (const OpenContribution& entry : open_) total += entry.raw_weight;
  batch.entries.reserve(open_.size());
  for (OpenContribution& entry : open_) {
    // total > 0: every raw weight is a positive sample count times w(tau) > 0.
    batch.entries.push_back(
        {std::move(entry.contribution), entry.staleness, entry.raw_weight / total});
  }
  open_.clear();
  open_workers_.clear();
  open_samples_ = 0;
  if (options_.dp.enabled() && record) {  // a replay takes both from the log (RestoreClose)
    batch.noise_seed = DrawNoiseSeed();
    batch.noise_stddev =
        BatchNoiseStddev(batch.entries, options_.dp.noise_multiplier, options_.dp.clip);
  }

  if (last_close_.has_value() && now > *last_close_) {
    const double sample_rate =
        static_cast<double>(batch.samples) / absl::ToDoubleSeconds(now - *last_close_);
    rate_ = rate_ > 0 ? options_.smoothing * sample_rate + (1 - options_.smoothing) * rate_
                      : sample_rate;
  }
  last_close_ = now;
  // Forget workers idle for long so last_seen_ stays bounded by the live population.
  absl::erase_if(last_seen_,
                 [&](const auto& entry) { return now - entry.second > options_.worker_idle; });
  ++version_;
  ++stats_.batches;
  if (journal_ != nullptr && record) {
    absl::StatusOr<uint64_t> end = journal_->Closed(batch);
    if (end.ok()) {
      batch.journal_end = *end;
      if (journal_end != nullptr) *journal_end = std::max(*journal_end, *end);
    } else {
      // The log is broken: the step must not be applied; waiting for its end reports why.
      batch.journal_end = std::numeric_limits<uint64_t>::max();
    }
  }
  return batch;
}

}  // namespace dion
