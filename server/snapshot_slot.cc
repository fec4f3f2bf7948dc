#include "server/snapshot_slot.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace dion {
namespace {

// How often a waiting Take asks its caller whether to go on.
constexpr absl::Duration kTakePoll = absl::Milliseconds(20);

}  // namespace

SnapshotSlot::SnapshotSlot(const ParameterStore* store, std::string parameter)
    : store_(store), parameter_(std::move(parameter)) {}

void SnapshotSlot::Arm(int64_t version) {
  MutexLock lock(&mu_);
  ArmLocked(version);
}

void SnapshotSlot::ArmLocked(int64_t version) {
  copy_.reset();
  failure_ = absl::OkStatus();
  version_ = version;
  // Read under mu_: a step reaching `version` concurrently reports it (AfterStep) only after
  // this, so either this read or that report sees it.
  const int64_t applied = store_->Version(parameter_).value_or(-1);
  state_ = applied == version ? State::kLive : State::kWaiting;
}

void SnapshotSlot::ArmAtCurrent() {
  // One critical section with BeforeStep: a step that began is waited for, one that begins
  // later copies the armed version first.
  MutexLock lock(&mu_);
  ArmLocked(stepping_ >= 0 ? stepping_ + 1 : store_->Version(parameter_).value_or(0));
}

void SnapshotSlot::Disarm() {
  MutexLock lock(&mu_);
  state_ = State::kIdle;
  copy_.reset();
}

void SnapshotSlot::CopyLocked() {
  absl::StatusOr<ParameterSnapshot> snapshot = store_->Snapshot(parameter_, true);
  if (snapshot.ok() && snapshot->version != version_) {
    snapshot = absl::InternalError(absl::StrCat(
        "parameter '", parameter_, "' is at version ", snapshot->version,
        " where the checkpoint holds it at ", version_));
  }
  if (!snapshot.ok()) {
    state_ = State::kFailed;
    failure_ = snapshot.status();
    return;
  }
  copy_ = *std::move(snapshot);
  state_ = State::kCopied;
}

void SnapshotSlot::BeforeStep(int64_t version) {
  MutexLock lock(&mu_);
  stepping_ = version;
  if (state_ != State::kLive || version != version_) return;
  CopyLocked();
  if (state_ == State::kCopied) copied_ahead_bytes_ += StateBytes(copy_->spec);
}

void SnapshotSlot::AfterStep(int64_t version) {
  MutexLock lock(&mu_);
  stepping_ = -1;
  if (state_ != State::kWaiting || version != version_) return;
  state_ = State::kLive;
  changed_.SignalAll();
}

void SnapshotSlot::StepFailed(int64_t version, const absl::Status& status) {
  MutexLock lock(&mu_);
  stepping_ = -1;
  if (state_ != State::kWaiting || version >= version_) return;
  state_ = State::kFailed;
  failure_ = absl::Status(status.code(),
                          absl::StrCat("parameter '", parameter_, "' did not reach version ",
                                       version_, " for the checkpoint: ", status.message()));
  changed_.SignalAll();
}

absl::StatusOr<ParameterSnapshot> SnapshotSlot::Take(
    const std::function<absl::Status()>& keep_going) {
  MutexLock lock(&mu_);
  while (state_ == State::kWaiting) {
    if (absl::Status s = keep_going(); !s.ok()) return s;  // stays armed: Disarm drops it
    changed_.WaitWithTimeout(&mu_, kTakePoll);
  }
  if (state_ == State::kLive) CopyLocked();  // the next step waits for mu_ meanwhile
  absl::StatusOr<ParameterSnapshot> result =
      state_ == State::kCopied ? absl::StatusOr<ParameterSnapshot>(*std::move(copy_))
      : state_ == State::kFailed
          ? absl::StatusOr<ParameterSnapshot>(failure_)
          : absl::FailedPreconditionError(absl::StrCat(
                "parameter '", parameter_, "' is not held for a checkpoint"));
  state_ = State::kIdle;
  copy_.reset();
  return result;
}

int64_t SnapshotSlot::copied_ahead_bytes() const {
  MutexLock lock(&mu_);
  return copied_ahead_bytes_;
}

}  // namespace dion
