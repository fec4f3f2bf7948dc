// The order and size of a worker's epochs (worker/train/epoch_order.h): one reshuffled pass
// per epoch by default; under synchronous training the same number of samples on every
// worker, from consecutive reshuffled passes over partitions of any size.
#include "worker/train/epoch_order.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "worker/train/partition.h"

namespace dion {
namespace {

// The reference: the stream of positions written out directly, pass after pass, each pass
// std::shuffle'd in place (from the previous pass's order) with one std::mt19937_64.
std::vector<int64_t> ReferenceStream(int64_t size, int64_t length, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> pass(size);
  std::iota(pass.begin(), pass.end(), int64_t{0});
  std::vector<int64_t> stream;
  while (static_cast<int64_t>(stream.size()) < length) {
    std::shuffle(pass.begin(), pass.end(), rng);
    stream.insert(stream.end(), pass.begin(), pass.end());
  }
  stream.resize(length);
  return stream;
}

std::vector<int64_t> Epochs(EpochOrder& order, int epochs) {
  std::vector<int64_t> all;
  for (int e = 0; e < epochs; ++e) {
    const std::vector<int64_t>& epoch = order.Next();
    all.insert(all.end(), epoch.begin(), epoch.end());
  }
  return all;
}

TEST(EpochOrder, OnePassPerEpochIsAReshuffledPermutation) {
  EpochOrder order = EpochOrder::Create(1000, 1000, 7).value();
  const std::vector<int64_t> first = order.Next();
  const std::vector<int64_t> second = order.Next();
  for (const std::vector<int64_t>* epoch : {&first, &second}) {
    std::vector<int64_t> sorted = *epoch;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  }
  EXPECT_NE(first, second);
  std::vector<int64_t> both = first;
  both.insert(both.end(), second.begin(), second.end());
  EXPECT_EQ(both, ReferenceStream(1000, 2000, 7));
}

TEST(EpochOrder, EpochsShorterOrLongerThanAPassContinueTheStream) {
  // 3 epochs of 700 over a partition of 300 (2.33 passes each) and over one of 1000 (0.7).
  for (int64_t size : {300, 1000}) {
    EpochOrder order = EpochOrder::Create(size, 700, 5).value();
    EXPECT_EQ(Epochs(order, 3), ReferenceStream(size, 2100, 5)) << size;
  }
  // Every sample is visited as evenly as the epochs allow: 2100 positions over 300 samples
  // is exactly 7 passes.
  EpochOrder order = EpochOrder::Create(300, 700, 5).value();
  std::vector<int> visits(300, 0);
  for (int64_t p : Epochs(order, 3)) ++visits[p];
  EXPECT_EQ(*std::min_element(visits.begin(), visits.end()), 7);
  EXPECT_EQ(*std::max_element(visits.begin(), visits.end()), 7);
}

TEST(EpochOrder, RefusesEmptyPartitionsAndEpochs) {
  EXPECT_EQ(EpochOrder::Create(0, 10, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EpochOrder::Create(10, 0, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SamplesPerEpoch, AsynchronousIsOnePassSynchronousTheSameOnEveryWorker) {
  EXPECT_EQ(SamplesPerEpoch(5538, 60000, 4, false).value(), 5538);
  EXPECT_EQ(SamplesPerEpoch(21104, 60000, 4, false).value(), 21104);
  EXPECT_EQ(SamplesPerEpoch(5538, 60000, 4, true).value(), 15000);
  EXPECT_EQ(SamplesPerEpoch(21104, 60000, 4, true).value(), 15000);
  EXPECT_EQ(SamplesPerEpoch(8572, 60001, 7, true).value(), 8571);  // 60001 / 7, rounded down
  EXPECT_EQ(SamplesPerEpoch(1, 3, 1, true).value(), 3);
  for (auto [partition, total, workers] :
       {std::tuple{0, 10, 2}, {11, 10, 2}, {5, 10, 0}}) {
    EXPECT_EQ(SamplesPerEpoch(partition, total, workers, true).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

// The rule end to end on a skewed split: under synchronous training every worker takes the
// same number of steps per epoch, although the partitions differ several-fold in size.
TEST(SamplesPerEpoch, SynchronousWorkersOfADirichletSplitTakeEqualSteps) {
  std::vector<int> labels(12000);
  for (int i = 0; i < 12000; ++i) labels[i] = (i * 7) % 10;
  const auto parts = PartitionAll(labels, 10, 4, {PartitionKind::kDirichlet, 0.1, 1}).value();
  const auto [smallest, largest] = std::minmax_element(
      parts.begin(), parts.end(), [](const auto& a, const auto& b) { return a.size() < b.size(); });
  ASSERT_GT(largest->size(), 2 * smallest->size());  // the split is unequal
  constexpr int kBatch = 64;
  for (const auto& part : parts) {
    const int64_t size = static_cast<int64_t>(part.size());
    EpochOrder order =
        EpochOrder::Create(size, SamplesPerEpoch(size, 12000, 4, true).value(), 3).value();
    for (int epoch = 0; epoch < 3; ++epoch) {
      const int64_t samples = static_cast<int64_t>(order.Next().size());
      EXPECT_EQ(samples, 3000);
      EXPECT_EQ((samples + kBatch - 1) / kBatch, 47);  // steps of the epoch, on every worker
    }
  }
}

}  // namespace
}  // namespace dion
