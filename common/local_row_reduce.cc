#include "common/local_row_reduce.h"

#include <cassert>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dion {

class LocalReduceGroup::Owner : public RowReducer {
 public:
  Owner(LocalReduceGroup* group, int index) : group_(group), index_(index) {}
  int owners() const override { return group_->owners_; }
  int index() const override { return index_; }
  absl::Status AllReduce(absl::string_view tag, MatrixRef part) override {
    return group_->Reduce(index_, tag, part);
  }

 private:
  LocalReduceGroup* const group_;
  const int index_;
};

LocalReduceGroup::LocalReduceGroup(int owners) : owners_(owners) {
  assert(owners >= 1);
  for (int i = 0; i < owners; ++i) reducers_.push_back(std::make_unique<Owner>(this, i));
  MutexLock lock(&mu_);
  parts_.resize(static_cast<size_t>(owners));
  tags_.resize(static_cast<size_t>(owners));
}

LocalReduceGroup::~LocalReduceGroup() = default;

RowReducer& LocalReduceGroup::owner(int index) {
  return *reducers_[static_cast<size_t>(index)];
}

void LocalReduceGroup::FailRound(int64_t round, absl::Status status) {
  MutexLock lock(&mu_);
  fail_round_ = round;
  fail_status_ = std::move(status);
}

void LocalReduceGroup::Abort(absl::Status status) {
  MutexLock lock(&mu_);
  aborted_ = std::move(status);
  done_.SignalAll();
}

int64_t LocalReduceGroup::rounds() const {
  MutexLock lock(&mu_);
  return round_;
}

int64_t LocalReduceGroup::bytes_reduced() const {
  MutexLock lock(&mu_);
  return bytes_;
}

std::shared_ptr<const LocalReduceGroup::Result> LocalReduceGroup::CompleteLocked() {
  auto result = std::make_shared<Result>();
  if (round_ == fail_round_) {
    result->status = fail_status_;
    return result;
  }
  const Matrix& first = parts_[0];
  for (int i = 1; i < owners_; ++i) {
    const Matrix& part = parts_[static_cast<size_t>(i)];
    if (tags_[static_cast<size_t>(i)] != tags_[0] || part.rows() != first.rows() ||
        part.cols() != first.cols()) {
      result->status = absl::InvalidArgumentError(absl::StrCat(
          "owner ", i, " reduced '", tags_[static_cast<size_t>(i)], "' [", part.rows(), ", ",
          part.cols(), "] where owner 0 reduced '", tags_[0], "' [", first.rows(), ", ",
          first.cols(), "]: the owners are not running the same step"));
      return result;
    }
  }
  MatrixD sum = first.cast<double>();
  for (int i = 1; i < owners_; ++i) sum += parts_[static_cast<size_t>(i)].cast<double>();
  result->sum = sum.cast<float>();
  return result;
}

absl::Status LocalReduceGroup::Reduce(int index, absl::string_view tag, MatrixRef part) {
  MutexLock lock(&mu_);
  if (!aborted_.ok()) return aborted_;
  const int64_t my_round = round_;
  if (owners_ == 1) {  // the sum of one part is the part (exactly: float -> double -> float)
    bytes_ += static_cast<int64_t>(part.size() * sizeof(float));
    ++round_;
    return my_round == fail_round_ ? fail_status_ : absl::OkStatus();
  }
  parts_[static_cast<size_t>(index)] = part;
  tags_[static_cast<size_t>(index)] = std::string(tag);
  bytes_ += static_cast<int64_t>(part.size() * sizeof(float));
  if (++arrived_ == owners_) {
    last_ = CompleteLocked();
    arrived_ = 0;
    ++round_;
    done_.SignalAll();
  } else {
    while (round_ == my_round && aborted_.ok()) done_.Wait(&mu_);
    if (round_ == my_round) return aborted_;
  }
  if (!last_->status.ok()) return last_->status;
  part = last_->sum;
  return absl::OkStatus();
}

}  // namespace dion
