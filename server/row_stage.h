// What a follower of a split parameter holds between a worker's push and the leader's batch
// (docs/protocol.md, "Split parameters"): the owner of a parameter's first rows (the leader)
// decides which contributions form each batch; every other owner (a follower) stages the row
// blocks it acknowledged, and folds exactly the members the leader names (Shard::StepRows).
//
// Stage judges a validated contribution:
//   - refuses (InvalidArgument, nothing recorded) a sequence above SequenceHorizon(), and a
//     sequence below the dedup window (DataLoss), as the batcher does (server/batcher.h);
//   - answers DUPLICATE when (worker, sequence) was staged before (still staged or folded);
//   - answers STALE when no batch of the leader can name it any more: the leader accepts a
//     contribution only into a batch of version v with v - base_version <= max_staleness, and
//     every batch from now on has a version >= this owner's applied version;
//   - refuses (ResourceExhausted, nothing recorded) when `max_staged` are staged;
//   - otherwise stages it (ACCEPTED).
// Release drops what a step folded, and every staged contribution that no later batch can
// name (its worker's push was refused by the leader, or it never reached the leader).
//
// Thread-safety: safe for concurrent use.
#ifndef DION_SERVER_ROW_STAGE_H_
#define DION_SERVER_ROW_STAGE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/contribution.h"
#include "common/mutex.h"
#include "server/batcher.h"
#include "server/sequence_window.h"

namespace dion {

struct RowStageOptions {
  uint64_t dedup_window = 4096;  // as BatcherOptions::dedup_window
  int64_t max_staleness = 16;    // the leader's (StalenessOptions::max_staleness)
  int64_t max_staged = 4096;     // contributions held at once
};

class RowStage {
 public:
  RowStage(std::string parameter, const RowStageOptions& options)
      : parameter_(std::move(parameter)), options_(options) {}

  // Judges `contribution` (file comment) against this owner's `applied_version`; `now` is for
  // the sequence horizon. On kAccepted it is staged; on anything else nothing is recorded.
  // With a `journal` (the write-ahead log), an accepted contribution is written there first,
  // under the stage's lock, and *journal_end says where its record ends; a journal error
  // refuses it (that error, nothing recorded).
  absl::StatusOr<PushOutcome> Stage(ValidatedContribution contribution, int64_t applied_version,
                                    absl::Time now, BatchJournal* journal = nullptr,
                                    uint64_t* journal_end = nullptr) ABSL_LOCKS_EXCLUDED(mu_);
  // A logged contribution again, at a replay: as Stage, without the sequence horizon (its
  // time has passed) and the max_staged limit (it was acknowledged within it).
  PushOutcome Restore(ValidatedContribution contribution, int64_t applied_version)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Whether (worker, sequence) was staged before (for pushes answered during shutdown).
  bool AlreadyStaged(absl::string_view worker_id, uint64_t sequence) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // The batch the leader's `command` names, for its version: every member's staged
  // contribution with the command's weight and staleness, in the command's order. DataLoss
  // naming the first member not staged here; InvalidArgument for a command of another
  // parameter. Nothing changes.
  absl::StatusOr<Batch> Collect(const LoggedBatch& command) const ABSL_LOCKS_EXCLUDED(mu_);
  // After a step reached `applied_version`: drops the command's members, and every staged
  // contribution with base_version + max_staleness < applied_version.
  void Release(const LoggedBatch& command, int64_t applied_version) ABSL_LOCKS_EXCLUDED(mu_);

  int64_t size() const ABSL_LOCKS_EXCLUDED(mu_);
  // Calls fn with every staged contribution (a checkpoint's cut logs them again), in no
  // particular order, holding the stage's lock: fn must not call the stage.
  void ForEachStaged(const std::function<void(const Contribution&)>& fn) const
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Key = std::pair<std::string, uint64_t>;  // (worker_id, sequence)

  // kDuplicate when (worker, sequence) was staged before, or is older than the dedup window
  // (*unknown then: nobody can tell); kStale when no batch can name it any more; else
  // kAccepted. Changes nothing.
  PushOutcome JudgeLocked(const Contribution& c, int64_t applied_version, bool* unknown) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stages `contribution` and records its sequence as seen.
  void InsertLocked(ValidatedContribution contribution) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string parameter_;
  const RowStageOptions options_;
  mutable Mutex mu_;
  absl::flat_hash_map<std::string, SequenceWindow> windows_ ABSL_GUARDED_BY(mu_);
  std::map<Key, ValidatedContribution> staged_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dion

#endif  // DION_SERVER_ROW_STAGE_H_
