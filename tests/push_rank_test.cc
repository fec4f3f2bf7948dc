// The adaptive push rank (worker/client/push_rank.h): the rank-choice rule against
// hand-computed byte counts, its hysteresis, the controller's rate and step-time measurement
// on a simulated link, the flag syntax, and the compressor's rank change (nothing lost).
#include "worker/client/push_rank.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/compressor.h"
#include "common/rng.h"
#include "tests/model_table_test_util.h"
#include "tests/reference.h"

namespace dion {
namespace {

using testing::Spec;

// A 100 x 50 Dion matrix (ranks: round(f * 50), at most the break-even 100*50/150 = 33) and a
// dense bias of 50: a push costs 4 * 150 * rank + 200 bytes.
std::vector<ParamSpec> Model() {
  return {Spec("w", {100, 50}, OptimizerKind::kDion), Spec("b", {50}, OptimizerKind::kAdamW)};
}

TEST(PushRank, PushBytesByHand) {
  const std::vector<ParamSpec> specs = Model();
  EXPECT_EQ(PushBytesAt(specs, 0.25), 4 * 150 * 13 + 200);     // 12.5 rounds to 13: 8000
  EXPECT_EQ(PushBytesAt(specs, 0.125), 4 * 150 * 6 + 200);     // 6.25 -> 6: 3800
  EXPECT_EQ(PushBytesAt(specs, 0.5), 4 * 150 * 25 + 200);      // 15200
  EXPECT_EQ(PushBytesAt(specs, 1.0), 4 * 150 * 33 + 200);      // break-even cap: 20000
  EXPECT_EQ(PushBytesAt(specs, 1.0 / 256), 4 * 150 * 1 + 200);  // at least rank 1: 800
}

TEST(PushRank, ShrinksUntilThePushFitsTheBudget) {
  const std::vector<ParamSpec> specs = Model();
  // 1 MB/s, 10 ms steps, half a step: 5000 bytes. 0.25 costs 8000, 0.125 costs 3800.
  EXPECT_EQ(NextRankFraction(specs, 0.25, 1e6 * 0.01 * kAutoRankLinkShare), 0.125);
  // 1000 bytes: 0.0625 (rank 3) 2000, 0.03125 (rank 2) 1400, 1/64 (rank 1) 800.
  EXPECT_EQ(NextRankFraction(specs, 0.25, 1000), 1.0 / 64);
  // Nothing fits: down to rank 1 (1/128 is also rank 1, no cheaper), never below.
  EXPECT_EQ(NextRankFraction(specs, 0.25, 10), 1.0 / 64);
}

// A square matrix caps its rank at the break-even m n / (m + n): 512 x 512 is rank 256 at both
// 1 and 0.5, so a halving that saves nothing must not stop the shrinking, and a doubling that
// sends nothing more is not taken. Bytes: 4 (512 + 512) rank = 4096 rank.
TEST(PushRank, BreakEvenCapsNeitherStopShrinkingNorCountAsGrowth) {
  ParamSpec square;
  square.name = "w";
  square.shape = {512, 512};
  square.optimizer = OptimizerKind::kDion;
  const std::vector<ParamSpec> specs = {square};
  EXPECT_EQ(PushBytesAt(specs, 1.0), 4096 * 256);
  EXPECT_EQ(PushBytesAt(specs, 0.5), 4096 * 256);
  // 40960 bytes: rank <= 10; 1/32 is rank 16, 1/64 rank 8.
  EXPECT_EQ(NextRankFraction(specs, 1.0, 40960), 1.0 / 64);
  EXPECT_EQ(NextRankFraction(specs, 0.5, 1e12), 0.5);
  EXPECT_EQ(NextRankFraction(specs, 0.25, 1e12), 0.5);
}

TEST(PushRank, GrowsOneRungOnlyWithMargin) {
  const std::vector<ParamSpec> specs = Model();
  // From 0.125 (3800), 0.25 costs 8000: it grows when 8000 <= 0.7 budget, budget >= 11429.
  EXPECT_EQ(NextRankFraction(specs, 0.125, 12000), 0.25);
  EXPECT_EQ(NextRankFraction(specs, 0.125, 11000), 0.125);
  // Hysteresis: at 9000 bytes both 0.125 and 0.25 stay where they are.
  EXPECT_EQ(NextRankFraction(specs, 0.125, 9000), 0.125);
  EXPECT_EQ(NextRankFraction(specs, 0.25, 9000), 0.25);
  // One rung at a time however large the budget, and never above 1.
  EXPECT_EQ(NextRankFraction(specs, 0.125, 1e9), 0.25);
  EXPECT_EQ(NextRankFraction(specs, 1.0, 1e9), 1.0);
  EXPECT_EQ(NextRankFraction(specs, 0.6, 1e9), 1.0);  // rank 30 -> 33
  // 0.75 is rank 33 already (the break-even cap), so doubling would send nothing more.
  EXPECT_EQ(NextRankFraction(specs, 0.75, 1e9), 0.75);
}

// Steps every `step` seconds; one push per step whose acknowledgement comes after its bytes
// at `rate` bytes/s (the link is idle in between). Returns the controller after `steps`.
PushRankController::State Simulate(double rate, double step, int steps, double start) {
  const std::vector<ParamSpec> specs = Model();
  PushRankController controller(specs, start);
  absl::Time t = absl::UnixEpoch();
  for (int i = 0; i < steps; ++i) {
    controller.OnStep(t);
    const int64_t bytes = PushBytesAt(specs, controller.fraction());
    controller.OnSent(t);
    controller.OnSettled(bytes, t + absl::Seconds(bytes / rate));
    t += absl::Seconds(step);
  }
  return controller.state();
}

TEST(PushRank, ControllerMeasuresTheLinkAndSettlesWithoutFlapping) {
  // 1 MB/s and 10 ms steps: budget 5000 bytes, so 0.25 (8000) shrinks once to 0.125 (3800)
  // and stays there (0.25 would need 11429).
  const PushRankController::State slow = Simulate(1e6, 0.01, 2000, 0.25);
  EXPECT_EQ(slow.fraction, 0.125);
  EXPECT_EQ(slow.changes, 1);
  EXPECT_NEAR(slow.rate_bytes_per_s, 1e6, 1e6 * 1e-6);
  EXPECT_NEAR(slow.step_seconds, 0.01, 1e-9);
  // 5 MB/s: budget 25000, so 0.25 grows to 0.5 (15200 <= 17500) but not to 1 (20000).
  const PushRankController::State fast = Simulate(5e6, 0.01, 2000, 0.25);
  EXPECT_EQ(fast.fraction, 0.5);
  EXPECT_EQ(fast.changes, 1);
}

TEST(PushRank, NoDecisionBeforeTheLinkIsMeasured) {
  // 100 steps of 1 ms busy each: 0.1 s of busy time, under one 0.25 s window.
  const PushRankController::State early = Simulate(8e6, 0.01, 100, 0.25);
  EXPECT_EQ(early.fraction, 0.25);
  EXPECT_EQ(early.rate_bytes_per_s, 0);
}

TEST(PushRank, FlagSyntax) {
  PushRankSetting s;
  std::string error;
  ASSERT_TRUE(AbslParseFlag("auto", &s, &error));
  EXPECT_TRUE(s.adaptive);
  ASSERT_TRUE(AbslParseFlag("0.125", &s, &error));
  EXPECT_FALSE(s.adaptive);
  EXPECT_EQ(s.fraction, 0.125);
  EXPECT_EQ(AbslUnparseFlag(s), "0.125");
  EXPECT_EQ(AbslUnparseFlag(PushRankSetting{true, 0}), "auto");
  EXPECT_FALSE(AbslParseFlag("1.5", &s, &error));
  EXPECT_NE(error.find("'1.5'"), std::string::npos) << error;
  EXPECT_FALSE(AbslParseFlag("fast", &s, &error));
}

// A rank change keeps E: the factors of the next Compress plus the new residual are the old
// residual (checked in double), P stays orthonormal, and a contribution of the old rank can
// still be restored.
TEST(PushRank, CompressorRankChangeLosesNothing) {
  const int64_t m = 20, n = 12;
  LowRankCompressor compressor(m, n, 3, /*seed=*/9);
  Rng rng(2);
  Matrix G(m, n);
  rng.FillNormal(G);
  ASSERT_TRUE(compressor.Accumulate(G).ok());
  const LowRankFactors old_rank = compressor.Compress();
  for (int rank : {7, 2, 12}) {
    rng.FillNormal(G);
    ASSERT_TRUE(compressor.Accumulate(G).ok());
    compressor.SetRank(rank);
    ASSERT_EQ(compressor.rank(), rank);
    const MatrixD before = compressor.residual().cast<double>();
    const LowRankFactors f = compressor.Compress();
    ASSERT_EQ(f.P.cols(), rank);
    const MatrixD P = f.P.cast<double>();
    const MatrixD sent = P * f.R.cast<double>().transpose();
    EXPECT_LT(testing::RelativeError(sent + compressor.residual().cast<double>(), before), 1e-5);
    EXPECT_LT((P.transpose() * P - MatrixD::Identity(rank, rank)).cwiseAbs().maxCoeff(), 1e-4);
  }
  // Full rank (12 = n) captures everything: the residual is float rounding.
  EXPECT_LT(compressor.residual().norm(), 1e-4 * G.norm());
  const MatrixD before = compressor.residual().cast<double>();
  ASSERT_TRUE(compressor.Restore(old_rank).ok());  // rank 3 into a rank-12 compressor
  const MatrixD restored = before + old_rank.P.cast<double>() *
                                        old_rank.R.cast<double>().transpose();
  EXPECT_LT(testing::RelativeError(compressor.residual().cast<double>(), restored), 1e-5);
}

}  // namespace
}  // namespace dion
