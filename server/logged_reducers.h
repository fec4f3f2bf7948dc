// RowReducers for the write-ahead log of a follower's split steps (server/shard_log.h,
// LoggedSplitStep): RecordingReducer keeps the sums of the step it serves, ReplayReducer
// hands them back in the same order, so that replaying a logged step needs no other shard and
// ends bit for bit where the step did.
//
// Thread-safety: each serves one step on one thread, as any RowReducer.
#ifndef DION_SERVER_LOGGED_REDUCERS_H_
#define DION_SERVER_LOGGED_REDUCERS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/row_reduce.h"
#include "server/shard_log.h"

namespace dion {

class RecordingReducer final : public RowReducer {
 public:
  // REQUIRES: `inner` outlives this reducer.
  explicit RecordingReducer(RowReducer& inner) : inner_(inner) {}
  int owners() const override { return inner_.owners(); }
  int index() const override { return inner_.index(); }
  absl::Status AllReduce(absl::string_view tag, MatrixRef part) override {
    absl::Status s = inner_.AllReduce(tag, part);
    if (s.ok()) sums_.push_back({std::string(tag), Matrix(part)});
    return s;
  }
  // The sums so far, in call order.
  std::vector<LoggedSplitStep::Sum> TakeSums() { return std::move(sums_); }

 private:
  RowReducer& inner_;
  std::vector<LoggedSplitStep::Sum> sums_;
};

class ReplayReducer final : public RowReducer {
 public:
  // REQUIRES: `sums` outlives this reducer.
  ReplayReducer(int owners, int index, const std::vector<LoggedSplitStep::Sum>& sums)
      : owners_(owners), index_(index), sums_(sums) {}
  int owners() const override { return owners_; }
  int index() const override { return index_; }
  // The next logged sum; DataLoss when the step asks for another tag or shape, or for more
  // sums than were logged (the log does not describe this step).
  absl::Status AllReduce(absl::string_view tag, MatrixRef part) override {
    if (next_ >= sums_.size()) {
      return absl::DataLossError(absl::StrCat("the replayed step asks for reduction ", next_,
                                              " ('", tag, "') but its record holds ",
                                              sums_.size(), " sums"));
    }
    const LoggedSplitStep::Sum& sum = sums_[next_];
    if (sum.tag != tag || sum.value.rows() != part.rows() || sum.value.cols() != part.cols()) {
      return absl::DataLossError(absl::StrCat(
          "the replayed step's reduction ", next_, " is '", tag, "' ", part.rows(), " x ",
          part.cols(), " but its record holds '", sum.tag, "' ", sum.value.rows(), " x ",
          sum.value.cols()));
    }
    part = sum.value;
    ++next_;
    return absl::OkStatus();
  }

 private:
  const int owners_;
  const int index_;
  const std::vector<LoggedSplitStep::Sum>& sums_;
  size_t next_ = 0;
};

}  // namespace dion

#endif  // DION_SERVER_LOGGED_REDUCERS_H_
