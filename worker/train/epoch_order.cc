#include "worker/train/epoch_order.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace dion {

absl::StatusOr<int64_t> SamplesPerEpoch(int64_t partition_size, int64_t total, int num_workers,
                                        bool synchronous) {
  if (num_workers < 1 || partition_size < 1 || partition_size > total) {
    return absl::InvalidArgumentError(absl::StrCat(
        "samples per epoch: partition of ", partition_size, " of ", total, " samples over ",
        num_workers, " worker(s): expected 1 <= num_workers and 1 <= partition <= total"));
  }
  if (!synchronous) return partition_size;
  return std::max<int64_t>(1, total / num_workers);
}

absl::StatusOr<EpochOrder> EpochOrder::Create(int64_t partition_size, int64_t samples_per_epoch,
                                              uint64_t seed) {
  if (partition_size < 1 || samples_per_epoch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("epoch order: partition_size = ", partition_size,
                     ", samples_per_epoch = ", samples_per_epoch, ": expected both >= 1"));
  }
  return EpochOrder(partition_size, samples_per_epoch, seed);
}

EpochOrder::EpochOrder(int64_t partition_size, int64_t samples_per_epoch, uint64_t seed)
    : rng_(seed), pass_(partition_size), used_(partition_size), epoch_(samples_per_epoch) {
  std::iota(pass_.begin(), pass_.end(), int64_t{0});
}

const std::vector<int64_t>& EpochOrder::Next() {
  const auto size = static_cast<int64_t>(pass_.size());
  for (int64_t filled = 0; filled < static_cast<int64_t>(epoch_.size());) {
    if (used_ == size) {  // a new pass
      std::shuffle(pass_.begin(), pass_.end(), rng_);
      used_ = 0;
    }
    const int64_t n = std::min(size - used_, static_cast<int64_t>(epoch_.size()) - filled);
    std::copy(pass_.begin() + used_, pass_.begin() + used_ + n, epoch_.begin() + filled);
    used_ += n;
    filled += n;
  }
  return epoch_;
}

}  // namespace dion
