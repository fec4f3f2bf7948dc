#include "worker/train/time_to_target.h"

#include <utility>

namespace dion {

TimeToTargetSearch::TimeToTargetSearch(double target_accuracy, absl::Duration interval,
                                       absl::Time start)
    : target_accuracy_(target_accuracy),
      interval_(interval),
      enabled_(target_accuracy > 0 && interval > absl::ZeroDuration()),
      last_copy_(start),
      every_(interval) {}

bool TimeToTargetSearch::CopyDue(absl::Time now) const {
  return enabled_ && !target_reached_ && now - last_copy_ >= every_;
}

void TimeToTargetSearch::Thin() {
  // pool_[i] takes pool_[2i]; slot 2i is never read again once i has passed it.
  for (int i = 1; 2 * i < kMaxSnapshots; ++i) std::swap(pool_[i], pool_[2 * i]);
  taken_ = kMaxSnapshots / 2;
  every_ *= 2;
}

std::vector<Matrix>& TimeToTargetSearch::NewCopy(absl::Time now) {
  if (taken_ == kMaxSnapshots) Thin();
  if (taken_ == static_cast<int>(pool_.size())) pool_.emplace_back();
  Snapshot& snapshot = pool_[taken_++];
  snapshot.time = now;
  last_copy_ = now;
  return snapshot.weights;
}

absl::StatusOr<int> TimeToTargetSearch::AfterEvaluation(absl::Time copied, double accuracy,
                                                        const EvaluateCopy& evaluate_copy) {
  int evaluated = 0;
  if (enabled_ && !target_reached_ && accuracy >= target_accuracy_) {
    target_reached_ = true;
    for (int i = 0; i < taken_; ++i) {
      absl::StatusOr<double> a = evaluate_copy(pool_[i].weights, pool_[i].time);
      if (!a.ok()) return a.status();
      ++evaluated;
      if (*a >= target_accuracy_) break;
    }
    pool_.clear();  // no copies are taken any more
  }
  taken_ = 0;
  every_ = interval_;
  last_copy_ = copied;
  return evaluated;
}

}  // namespace dion
