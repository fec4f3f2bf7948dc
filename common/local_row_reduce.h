// RowReducer for owners that live in one process (tests, benchmarks, and a shard that owns
// several blocks of one parameter): a barrier per reduction. The owners' parts are added in
// owner order in double precision and rounded once, as RowReducer specifies.
//
// Thread-safety: LocalReduceGroup is safe for concurrent use; each owner's reducer is used
// by one thread (its owner's step) at a time.
#ifndef DION_COMMON_LOCAL_ROW_REDUCE_H_
#define DION_COMMON_LOCAL_ROW_REDUCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/matrix.h"
#include "common/mutex.h"
#include "common/row_reduce.h"

namespace dion {

class LocalReduceGroup {
 public:
  // REQUIRES: owners >= 1.
  explicit LocalReduceGroup(int owners);
  ~LocalReduceGroup();
  LocalReduceGroup(const LocalReduceGroup&) = delete;
  LocalReduceGroup& operator=(const LocalReduceGroup&) = delete;

  // The reducer of owner `index` (0 <= index < owners); it lives as long as the group.
  RowReducer& owner(int index);

  // Makes reduction number `round` (0-based, counted over the group's life) end with `status`
  // for every owner instead of a sum: a transport failing in the middle of a step.
  void FailRound(int64_t round, absl::Status status) ABSL_LOCKS_EXCLUDED(mu_);
  // Makes every waiting and every later reduction end with `status` (not OK): an owner that
  // left the step, so the others stop waiting for its part.
  void Abort(absl::Status status) ABSL_LOCKS_EXCLUDED(mu_);

  int64_t rounds() const ABSL_LOCKS_EXCLUDED(mu_);           // reductions completed
  int64_t bytes_reduced() const ABSL_LOCKS_EXCLUDED(mu_);    // float bytes of every part

 private:
  class Owner;
  struct Result {
    absl::Status status;
    Matrix sum;
  };

  absl::Status Reduce(int index, absl::string_view tag, MatrixRef part)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Sums the parts of the round every owner has joined.
  std::shared_ptr<const Result> CompleteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int owners_;
  std::vector<std::unique_ptr<Owner>> reducers_;
  mutable Mutex mu_;
  CondVar done_;
  std::vector<Matrix> parts_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> tags_ ABSL_GUARDED_BY(mu_);
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t round_ ABSL_GUARDED_BY(mu_) = 0;  // the round being joined
  // The result of round_ - 1: a waiter of round g wakes when round_ > g, and round g + 1
  // cannot complete before it joins, so this is its round's result.
  std::shared_ptr<const Result> last_ ABSL_GUARDED_BY(mu_);
  int64_t fail_round_ ABSL_GUARDED_BY(mu_) = -1;
  absl::Status fail_status_ ABSL_GUARDED_BY(mu_);
  absl::Status aborted_ ABSL_GUARDED_BY(mu_);  // Abort's status; OK until then
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace dion

#endif  // DION_COMMON_LOCAL_ROW_REDUCE_H_
