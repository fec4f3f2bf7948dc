// The shard's noise of the differentially private mode (server/dp_noise.h): its statistics
// over many entries with a fixed seed, its determinism, and the scale per batch.
#include "server/dp_noise.h"

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace dion {
namespace {

TEST(DpNoise, EntriesAreNormalWithTheRequestedStddev) {
  // 500000 entries: the sample mean has standard error 0.7 / 707 = 0.001 and the sample std
  // about 0.7 / 1000; the tolerances below are five of those.
  const double stddev = 0.7;
  Matrix noise = Matrix::Zero(1000, 500);
  AddGaussianNoise(noise, stddev, /*seed=*/20261206);
  const Eigen::ArrayXXd x = noise.cast<double>().array();
  const double n = static_cast<double>(x.size());
  const double mean = x.sum() / n;
  const double sample_std = std::sqrt((x - mean).square().sum() / (n - 1));
  EXPECT_NEAR(mean, 0.0, 5 * stddev / std::sqrt(n));
  EXPECT_NEAR(sample_std, stddev, 5 * stddev / std::sqrt(2 * n));
  // The shape: P(|x| < stddev) = 0.682689 and P(|x| < 2 stddev) = 0.954500 for a normal law
  // (binomial standard error <= 0.0007).
  EXPECT_NEAR((x.abs() < stddev).cast<double>().sum() / n, 0.682689, 0.0035);
  EXPECT_NEAR((x.abs() < 2 * stddev).cast<double>().sum() / n, 0.954500, 0.0035);
}

TEST(DpNoise, TheSeedDeterminesTheNoise) {
  Matrix a = Matrix::Ones(7, 5), b = Matrix::Ones(7, 5), c = Matrix::Ones(7, 5);
  AddGaussianNoise(a, 1.0, 99);
  AddGaussianNoise(b, 1.0, 99);
  AddGaussianNoise(c, 1.0, 100);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(DrawNoiseSeed(), 0u);
}

// A validated 1 x 1 AdamW contribution of `worker` with `weight` in its batch.
WeightedContribution Member(const std::string& worker, uint64_t sequence, double weight) {
  ParamSpec spec;
  spec.name = "p";
  spec.shape = {1};
  spec.optimizer = OptimizerKind::kAdamW;
  Contribution c;
  c.worker_id = worker;
  c.sequence = sequence;
  c.parameter = "p";
  c.sample_count = 1;
  c.payload = Matrix::Zero(1, 1);
  return {Validate(std::move(c), {spec, 0, true}).value(), 0, weight};
}

TEST(DpNoise, StddevScalesWithTheLargestWeightOneWorkerHolds) {
  // Worker a holds 0.25 + 0.3 = 0.55 of the mean, b 0.45: one worker moves it by <= 0.55 C.
  std::vector<WeightedContribution> entries;
  entries.push_back(Member("a", 1, 0.25));
  entries.push_back(Member("a", 2, 0.3));
  entries.push_back(Member("b", 1, 0.45));
  EXPECT_DOUBLE_EQ(BatchNoiseStddev(entries, 2.0, 0.5), 2.0 * 0.5 * 0.55);
  entries.clear();
  entries.push_back(Member("a", 1, 1.0));
  EXPECT_DOUBLE_EQ(BatchNoiseStddev(entries, 2.0, 0.5), 1.0);
}

TEST(DpNoise, ContributionsAboveTheClipAreRefusedWithTheModeOn) {
  Contribution dense;
  dense.worker_id = "w";
  dense.parameter = "p";
  dense.payload = Matrix::Constant(2, 2, 1.0f);  // norm 2
  Contribution factors = dense;
  Matrix P = Matrix::Zero(3, 1), R = Matrix::Zero(4, 1);
  P(0, 0) = 3.0f;
  R(1, 0) = 1.0f;
  factors.payload = LowRankFactors{P, R};  // P R^T has norm 3
  const DpOptions off;
  EXPECT_TRUE(CheckClipped(dense, off).ok());
  EXPECT_EQ(CheckClipped(dense, {.noise_multiplier = 1.0, .clip = 1.9}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckClipped(dense, {.noise_multiplier = 1.0, .clip = 2.0}).ok());
  const absl::Status refused = CheckClipped(factors, {.noise_multiplier = 1.0, .clip = 2.9});
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("--dp_clip"), std::string::npos) << refused;
  EXPECT_TRUE(CheckClipped(factors, {.noise_multiplier = 1.0, .clip = 3.0}).ok());
}

TEST(DpNoise, OptionsAreChecked) {
  EXPECT_TRUE(ValidateDpOptions({}).ok());
  EXPECT_TRUE(ValidateDpOptions({.noise_multiplier = 1.0, .clip = 1.0}).ok());
  EXPECT_FALSE(ValidateDpOptions({.noise_multiplier = 1.0, .clip = 0.0}).ok());
  EXPECT_FALSE(ValidateDpOptions({.noise_multiplier = -1.0, .clip = 1.0}).ok());
  EXPECT_FALSE(ValidateDpOptions({.noise_multiplier = 1.0, .clip = 1.0, .delta = 0.0}).ok());
  EXPECT_FALSE(
      ValidateDpOptions({.noise_multiplier = 1.0, .clip = 1.0, .sampling_rate = 0.0}).ok());
}

}  // namespace
}  // namespace dion
