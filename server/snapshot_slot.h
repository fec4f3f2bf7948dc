// One owned parameter held at a fixed version for a checkpoint that is written while pushes
// and steps continue (docs/server.md, "Checkpoints").
//
// The shard arms the slot, at the checkpoint's cut, with the version the parameter has once
// every batch closed before the cut is applied; the parameter's compute thread reports its
// steps (BeforeStep, AfterStep, StepFailed); the checkpoint writer Takes the parameter at
// that version. A parameter whose next step starts before the writer got to it is copied by
// that step first (copy on write); one that has not moved on is copied by Take itself, its
// next step held back for the copy only. So the extra memory a checkpoint needs is the state
// of the parameters that step while it is written (at most all of them), never a global stop.
//
// Thread-safety: safe for concurrent use. Lock order: a slot's mutex before the store's.
#ifndef DION_SERVER_SNAPSHOT_SLOT_H_
#define DION_SERVER_SNAPSHOT_SLOT_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "server/parameter_store.h"

namespace dion {

class SnapshotSlot {
 public:
  // `store` outlives the slot and owns `parameter`.
  SnapshotSlot(const ParameterStore* store, std::string parameter);

  // Holds the parameter at `version` for the next Take. REQUIRES: the parameter's applied
  // version is at most `version` and no batch for `version` or later has been handed to the
  // compute pool yet (the shard arms under its gate, after closing the open batch).
  void Arm(int64_t version) ABSL_LOCKS_EXCLUDED(mu_);
  // Arm at the version the parameter has once the step under way, if any, is applied: for a
  // follower of a split parameter, whose steps come from its leader, not from batches
  // closed here (so no version is known ahead).
  void ArmAtCurrent() ABSL_LOCKS_EXCLUDED(mu_);
  // Drops what is held (an abandoned checkpoint). Idempotent.
  void Disarm() ABSL_LOCKS_EXCLUDED(mu_);

  // Called by the parameter's compute thread: before applying the batch for `version`, after
  // the store reached `version`, and when the step of the batch for `version` failed.
  void BeforeStep(int64_t version) ABSL_LOCKS_EXCLUDED(mu_);
  void AfterStep(int64_t version) ABSL_LOCKS_EXCLUDED(mu_);
  void StepFailed(int64_t version, const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);

  // The parameter (with optimizer state) at the armed version; disarms. Waits while steps
  // before that version are still to be applied, asking `keep_going` every few milliseconds
  // and returning its error when it has one. FailedPrecondition when not armed; the step's
  // error when a step before the armed version failed.
  absl::StatusOr<ParameterSnapshot> Take(const std::function<absl::Status()>& keep_going)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Bytes of copies made by BeforeStep since the start (memory a checkpoint held meanwhile).
  int64_t copied_ahead_bytes() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  enum class State {
    kIdle,     // not armed
    kWaiting,  // armed; the store is below the version
    kLive,     // armed; the store is at the version, not copied
    kCopied,   // armed; copy_ holds the version
    kFailed,   // armed; a step before the version failed (failure_)
  };

  void ArmLocked(int64_t version) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies the parameter into copy_ (kCopied) or records why not (kFailed).
  void CopyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ParameterStore* const store_;
  const std::string parameter_;
  mutable Mutex mu_;
  CondVar changed_;  // state_ left kWaiting
  State state_ ABSL_GUARDED_BY(mu_) = State::kIdle;
  int64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<ParameterSnapshot> copy_ ABSL_GUARDED_BY(mu_);
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  int64_t copied_ahead_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t stepping_ ABSL_GUARDED_BY(mu_) = -1;  // BeforeStep's version until AfterStep; -1: none
};

}  // namespace dion

#endif  // DION_SERVER_SNAPSHOT_SLOT_H_
