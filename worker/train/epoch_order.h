// The order in which a worker visits the samples of its partition, epoch by epoch, and how
// many samples an epoch holds (docs/worker.md, "Partitions").
//
// The positions come from an endless stream of passes over the partition, each pass a fresh
// shuffle (std::mt19937_64 seeded once, std::shuffle of the previous pass's order); an epoch
// takes the next samples_per_epoch positions of that stream. When samples_per_epoch is the
// partition's size an epoch is exactly one pass.
//
// Thread-safety: EpochOrder is not thread-safe (one per training loop); SamplesPerEpoch is a
// pure function.
#ifndef DION_WORKER_TRAIN_EPOCH_ORDER_H_
#define DION_WORKER_TRAIN_EPOCH_ORDER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"

namespace dion {

// Samples per epoch of a worker holding `partition_size` of the `total` training samples split
// over `num_workers`. Asynchronous: its whole partition (one pass per epoch; workers with
// bigger partitions take more steps). Synchronous: total / num_workers on every worker, so
// every worker takes the same number of steps per epoch whatever its partition's size (a
// Dirichlet split is unequal; a synchronous step waits for every worker): a small partition
// is visited more than once per epoch, a big one partly, continuing where the last epoch
// stopped. InvalidArgument unless 1 <= num_workers, 1 <= partition_size <= total.
absl::StatusOr<int64_t> SamplesPerEpoch(int64_t partition_size, int64_t total, int num_workers,
                                        bool synchronous);

class EpochOrder {
 public:
  // partition_size >= 1 and samples_per_epoch >= 1 (checked by Create).
  static absl::StatusOr<EpochOrder> Create(int64_t partition_size, int64_t samples_per_epoch,
                                           uint64_t seed);

  // The next epoch's positions in [0, partition_size), samples_per_epoch of them. Valid until
  // the next call.
  const std::vector<int64_t>& Next();

 private:
  EpochOrder(int64_t partition_size, int64_t samples_per_epoch, uint64_t seed);

  std::mt19937_64 rng_;
  std::vector<int64_t> pass_;  // the current pass's order
  int64_t used_;               // positions of pass_ already handed out
  std::vector<int64_t> epoch_;
};

}  // namespace dion

#endif  // DION_WORKER_TRAIN_EPOCH_ORDER_H_
