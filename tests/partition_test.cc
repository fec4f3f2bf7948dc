// Partition of samples across workers: every sample in exactly one worker, the same
// partition for the same seed, balanced IID parts, and Dirichlet label skew that grows as
// alpha shrinks.
#include "worker/train/partition.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace dion {
namespace {

// 10000 samples over 10 classes, 1000 each, in a scrambled order.
std::vector<int> BalancedLabels(int n = 10000, int classes = 10) {
  std::vector<int> labels(n);
  for (int i = 0; i < n; ++i) labels[i] = static_cast<int>((i * 7919L) % n) % classes;
  return labels;
}

void ExpectExactCover(const std::vector<std::vector<int64_t>>& parts, int64_t n) {
  std::vector<int> seen(n, 0);
  for (const std::vector<int64_t>& part : parts) {
    EXPECT_TRUE(std::is_sorted(part.begin(), part.end()));
    for (int64_t i : part) {
      ASSERT_GE(i, 0);
      ASSERT_LT(i, n);
      ++seen[i];
    }
  }
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i], 1) << "sample " << i;
}

// Mean over workers of the total-variation distance between the worker's label histogram
// and the global one: 0 for a perfectly mixed split, near 1 when workers hold disjoint
// classes.
double MeanLabelSkew(const std::vector<std::vector<int64_t>>& parts,
                     const std::vector<int>& labels, int classes) {
  std::vector<double> global(classes, 0.0);
  for (int label : labels) global[label] += 1.0 / labels.size();
  double total = 0.0;
  for (const std::vector<int64_t>& part : parts) {
    std::vector<double> local(classes, 0.0);
    for (int64_t i : part) local[labels[i]] += 1.0 / part.size();
    double tv = 0.0;
    for (int c = 0; c < classes; ++c) tv += 0.5 * std::abs(local[c] - global[c]);
    total += part.empty() ? 1.0 : tv;
  }
  return total / parts.size();
}

TEST(Partition, IidCoversEverySampleOnceInNearlyEqualParts) {
  const std::vector<int> labels = BalancedLabels(10001);
  absl::StatusOr<std::vector<std::vector<int64_t>>> parts =
      PartitionAll(labels, 10, 7, {PartitionKind::kIid, 1.0, 42});
  ASSERT_TRUE(parts.ok()) << parts.status();
  ASSERT_EQ(parts->size(), 7u);
  ExpectExactCover(*parts, 10001);
  for (const auto& part : *parts) {
    EXPECT_GE(part.size(), 10001u / 7);
    EXPECT_LE(part.size(), 10001u / 7 + 1);
  }
  // Shuffled, not contiguous: worker 0 does not simply get the first samples.
  EXPECT_GT((*parts)[0].back() - (*parts)[0].front(), 5000);
  EXPECT_LT(MeanLabelSkew(*parts, labels, 10), 0.05);
}

TEST(Partition, DirichletCoversEverySampleOnce) {
  const std::vector<int> labels = BalancedLabels();
  for (double alpha : {100.0, 1.0, 0.1, 0.01}) {
    absl::StatusOr<std::vector<std::vector<int64_t>>> parts =
        PartitionAll(labels, 10, 8, {PartitionKind::kDirichlet, alpha, 3});
    ASSERT_TRUE(parts.ok()) << parts.status();
    ExpectExactCover(*parts, 10000);
  }
}

TEST(Partition, IsDeterministicInTheSeedAndPerWorkerMatchesTheWhole) {
  const std::vector<int> labels = BalancedLabels();
  for (PartitionKind kind : {PartitionKind::kIid, PartitionKind::kDirichlet}) {
    const PartitionOptions options{kind, 0.5, 9};
    const auto a = *PartitionAll(labels, 10, 5, options);
    const auto b = *PartitionAll(labels, 10, 5, options);
    EXPECT_EQ(a, b);
    for (int w = 0; w < 5; ++w) EXPECT_EQ(*PartitionIndices(labels, 10, 5, w, options), a[w]);
    PartitionOptions reseeded = options;
    reseeded.seed = 10;
    EXPECT_NE(*PartitionAll(labels, 10, 5, reseeded), a) << PartitionKindName(kind);
  }
}

TEST(Partition, LabelSkewGrowsAsAlphaShrinks) {
  const std::vector<int> labels = BalancedLabels();
  std::vector<double> skew;
  for (double alpha : {100.0, 1.0, 0.1}) {
    // Averaged over a few seeds so the ordering is not a lucky draw.
    double sum = 0.0;
    for (uint64_t seed = 1; seed <= 5; ++seed) {
      sum += MeanLabelSkew(*PartitionAll(labels, 10, 8, {PartitionKind::kDirichlet, alpha, seed}),
                           labels, 10);
    }
    skew.push_back(sum / 5);
    std::printf("dirichlet alpha %g: mean TV distance of worker label histograms %.3f\n", alpha,
                skew.back());
  }
  // Measured: alpha 100 -> 0.035, alpha 1 -> 0.31, alpha 0.1 -> 0.69.
  EXPECT_LT(skew[0], 0.15);
  EXPECT_GT(skew[1], skew[0] + 0.15);
  EXPECT_GT(skew[2], skew[1] + 0.15);
}

TEST(Partition, MinSamplesPerWorkerRedrawsUntilEveryWorkerHasEnough) {
  const std::vector<int> labels = BalancedLabels(1000);
  PartitionOptions options{PartitionKind::kDirichlet, 0.05, 4};
  // At alpha 0.05 with 20 workers, some worker is almost surely left (nearly) empty...
  const auto loose = *PartitionAll(labels, 10, 20, options);
  size_t smallest = 1000;
  for (const auto& part : loose) smallest = std::min(smallest, part.size());
  EXPECT_LT(smallest, 10u);
  // ...unless redrawn.
  options.min_samples_per_worker = 10;
  const auto ok = PartitionAll(labels, 10, 20, options);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ExpectExactCover(*ok, 1000);
  for (const auto& part : *ok) EXPECT_GE(part.size(), 10u);
  // Impossible demands are refused up front.
  options.min_samples_per_worker = 51;
  EXPECT_EQ(PartitionAll(labels, 10, 20, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Partition, RefusesBadArgumentsNamingThem) {
  const std::vector<int> labels = BalancedLabels(100);
  const auto message = [](const absl::Status& s) { return std::string(s.message()); };
  EXPECT_NE(message(PartitionAll(labels, 10, 4, {PartitionKind::kDirichlet, 0.0, 1}).status())
                .find("alpha"),
            std::string::npos);
  EXPECT_EQ(PartitionAll(labels, 10, 4, {PartitionKind::kDirichlet, NAN, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(message(PartitionIndices(labels, 10, 4, 4, {}).status()).find("worker_index"),
            std::string::npos);
  EXPECT_EQ(PartitionIndices(labels, 10, 4, -1, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(message(PartitionAll(labels, 10, 0, {}).status()).find("num_workers"),
            std::string::npos);
  EXPECT_NE(message(PartitionAll(labels, 5, 2, {}).status()).find("label["), std::string::npos);
  EXPECT_EQ(ParsePartitionKind("dirichlet").value(), PartitionKind::kDirichlet);
  EXPECT_FALSE(ParsePartitionKind("random").ok());
}

TEST(Partition, MoreWorkersThanSamplesLeavesSomeEmptyButLosesNone) {
  const std::vector<int> labels = {0, 1, 2};
  const auto parts = *PartitionAll(labels, 3, 5, {});
  ExpectExactCover(parts, 3);
  // IID parts differ in size by at most one: three of one sample, two empty.
  EXPECT_EQ(std::count_if(parts.begin(), parts.end(), [](const auto& p) { return p.empty(); }),
            2);
}

}  // namespace
}  // namespace dion
