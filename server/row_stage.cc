#include "server/row_stage.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace dion {

absl::StatusOr<PushOutcome> RowStage::Stage(ValidatedContribution contribution,
                                            int64_t applied_version, absl::Time now,
                                            BatchJournal* journal, uint64_t* journal_end) {
  const Contribution& c = *contribution;
  MutexLock lock(&mu_);
  auto window = windows_.find(c.worker_id);
  const uint64_t highest = window == windows_.end() ? 0 : window->second.highest();
  const uint64_t horizon = SequenceHorizon(highest, options_.dedup_window, now);
  if (c.sequence > horizon) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter '", parameter_, "': sequence ", c.sequence, " of worker '", c.worker_id,
        "' is beyond the sequence horizon ", horizon, "; nothing was recorded"));
  }
  bool unknown = false;
  const PushOutcome judged = JudgeLocked(c, applied_version, &unknown);
  if (unknown) {
    return absl::DataLossError(absl::StrCat(
        "parameter '", parameter_, "': sequence ", c.sequence, " of worker '", c.worker_id,
        "' is older than the dedup window (floor ", window->second.floor(), ", window ",
        options_.dedup_window, "): this shard cannot tell whether it was staged"));
  }
  if (judged != PushOutcome::kAccepted) return judged;
  if (static_cast<int64_t>(staged_.size()) >= options_.max_staged) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "parameter '", parameter_, "': this shard already holds ", staged_.size(),
        " contributions staged for its leader's batches, its limit; retry later"));
  }
  if (journal != nullptr) {
    absl::StatusOr<uint64_t> end = journal->Accepted(c);
    if (!end.ok()) return end.status();
    if (journal_end != nullptr) *journal_end = *end;
  }
  InsertLocked(std::move(contribution));
  return PushOutcome::kAccepted;
}

PushOutcome RowStage::Restore(ValidatedContribution contribution, int64_t applied_version) {
  MutexLock lock(&mu_);
  bool unknown = false;  // older than the window: it was seen
  const PushOutcome judged = JudgeLocked(*contribution, applied_version, &unknown);
  if (judged == PushOutcome::kAccepted) InsertLocked(std::move(contribution));
  return judged;
}

PushOutcome RowStage::JudgeLocked(const Contribution& c, int64_t applied_version,
                                  bool* unknown) const {
  auto window = windows_.find(c.worker_id);
  if (window != windows_.end()) {
    const SequenceWindow::State state = window->second.Lookup(c.sequence);
    *unknown = state == SequenceWindow::State::kUnknown;
    if (state != SequenceWindow::State::kNew) return PushOutcome::kDuplicate;
  }
  if (c.base_version + options_.max_staleness < applied_version) return PushOutcome::kStale;
  return PushOutcome::kAccepted;
}

void RowStage::InsertLocked(ValidatedContribution contribution) {
  const Contribution& c = *contribution;
  auto window = windows_.find(c.worker_id);
  if (window == windows_.end()) {
    window = windows_.emplace(c.worker_id, SequenceWindow(options_.dedup_window)).first;
  }
  window->second.Insert(c.sequence);
  Key key{c.worker_id, c.sequence};
  staged_.emplace(std::move(key), std::move(contribution));
}

bool RowStage::AlreadyStaged(absl::string_view worker_id, uint64_t sequence) const {
  MutexLock lock(&mu_);
  auto window = windows_.find(worker_id);
  return window != windows_.end() &&
         window->second.Lookup(sequence) == SequenceWindow::State::kSeen;
}

absl::StatusOr<Batch> RowStage::Collect(const LoggedBatch& command) const {
  if (command.parameter != parameter_) {
    return absl::InvalidArgumentError(absl::StrCat("a batch of '", command.parameter,
                                                   "' for the stage of '", parameter_, "'"));
  }
  Batch batch;
  batch.parameter = parameter_;
  batch.version = command.version;
  batch.reason = command.reason;
  absl::flat_hash_set<absl::string_view> workers;
  MutexLock lock(&mu_);
  for (const LoggedBatch::Member& member : command.members) {
    auto it = staged_.find(Key{member.worker_id, member.sequence});
    if (it == staged_.end()) {
      return absl::DataLossError(absl::StrCat(
          "parameter '", parameter_, "': the leader's batch for version ", command.version,
          " names sequence ", member.sequence, " of worker '", member.worker_id,
          "', which is not staged on this shard (it restarted, or the push never reached it)"));
    }
    batch.entries.push_back({it->second, member.staleness, member.weight});
    batch.samples += it->second->sample_count;
    workers.insert(member.worker_id);
  }
  batch.workers = static_cast<int>(workers.size());
  return batch;
}

void RowStage::Release(const LoggedBatch& command, int64_t applied_version) {
  MutexLock lock(&mu_);
  for (const LoggedBatch::Member& member : command.members) {
    staged_.erase(Key{member.worker_id, member.sequence});
  }
  for (auto it = staged_.begin(); it != staged_.end();) {
    if (it->second->base_version + options_.max_staleness < applied_version) {
      it = staged_.erase(it);
    } else {
      ++it;
    }
  }
}

void RowStage::ForEachStaged(const std::function<void(const Contribution&)>& fn) const {
  MutexLock lock(&mu_);
  for (const auto& [key, contribution] : staged_) fn(*contribution);
}

int64_t RowStage::size() const {
  MutexLock lock(&mu_);
  return static_cast<int64_t>(staged_.size());
}

}  // namespace dion
