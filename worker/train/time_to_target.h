// Locates when training first reaches a target accuracy at a finer grain than the evaluations,
// without evaluating that often: between two evaluations the weights are copied every
// `interval` (a copy, no evaluation); when an evaluation first reaches the target, the copies
// taken since the previous evaluation are evaluated oldest first, up to the first that reaches
// it. At most kMaxSnapshots copies are kept: when they fill up, every other one is dropped and
// the interval doubles until the next evaluation, so the copies still span the whole time
// since the evaluation. After the target is reached no more copies are taken.
//
// Times are passed in (no clock is read here). Thread-safety: none; one training loop owns it.
#ifndef DION_WORKER_TRAIN_TIME_TO_TARGET_H_
#define DION_WORKER_TRAIN_TIME_TO_TARGET_H_

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/matrix.h"

namespace dion {

// Weight copies kept between two evaluations.
inline constexpr int kMaxSnapshots = 64;

class TimeToTargetSearch {
 public:
  // Off (CopyDue is never true, AfterEvaluation never searches) unless target_accuracy > 0
  // and interval > 0. `start`: when training started, the first interval's beginning.
  TimeToTargetSearch(double target_accuracy, absl::Duration interval, absl::Time start);

  bool enabled() const { return enabled_; }
  bool target_reached() const { return target_reached_; }

  // Whether a copy is due at `now`: enabled, the target not reached yet, and the current
  // interval passed since the last copy or evaluation.
  bool CopyDue(absl::Time now) const;
  // The storage of a copy taken at `now`, for the caller to fill with the weights (its
  // previous content is reused storage). Drops every other copy and doubles the interval first
  // when kMaxSnapshots are kept.
  std::vector<Matrix>& NewCopy(absl::Time now);

  // Evaluates `weights` copied at `copied`; returns the accuracy.
  using EvaluateCopy =
      std::function<absl::StatusOr<double>(const std::vector<Matrix>& weights, absl::Time copied)>;
  // To be called after every evaluation of the live weights, copied at `copied`, that had
  // `accuracy`. When it is the first to reach the target, runs `evaluate_copy` on the copies
  // since the previous evaluation, oldest first, up to the first reaching the target, and then
  // frees them. Either way, the next interval starts at `copied` with no copies kept. Returns
  // how many copies were evaluated, or evaluate_copy's first error.
  absl::StatusOr<int> AfterEvaluation(absl::Time copied, double accuracy,
                                      const EvaluateCopy& evaluate_copy);

  // Copies kept now, and the interval between them.
  int copies() const { return taken_; }
  absl::Duration copy_interval() const { return every_; }

 private:
  struct Snapshot {
    absl::Time time;
    std::vector<Matrix> weights;
  };
  // Keeps copies 0, 2, 4, ... and doubles the interval.
  void Thin();

  const double target_accuracy_;
  const absl::Duration interval_;
  const bool enabled_;
  bool target_reached_ = false;
  std::vector<Snapshot> pool_;  // copies in use: [0, taken_); the rest is storage to reuse
  int taken_ = 0;
  absl::Time last_copy_;
  absl::Duration every_;
};

}  // namespace dion

#endif  // DION_WORKER_TRAIN_TIME_TO_TARGET_H_
