// The adaptive push rank (worker/client/push_rank.h): the rank-choice rule against
// hand-computed byte counts, its hysteresis and ceiling, the controller's rate and step-time
// measurement on simulated delivery rates, the flag syntax, and the compressor's rank change
// (nothing lost). The delivery rates of a real shaped link: tests/worker_links_test.cc.
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

// A matrix split over k shards sends every owner its rows of the tall side's factor and the
// whole short side's factor: 4 (tall + k short) r bytes, tall or wide alike.
TEST(PushRank, SplitMatrixSendsTheShortSideToEveryOwner) {
  std::vector<ParamSpec> specs = {Spec("w", {100, 50}, OptimizerKind::kDion)};
  specs[0].split_owners = 3;
  EXPECT_EQ(PushBytesAt(specs, 0.25), 4 * (100 + 3 * 50) * 13);
  specs[0] = Spec("w", {50, 100}, OptimizerKind::kDion);
  specs[0].split_owners = 3;
  EXPECT_EQ(PushBytesAt(specs, 0.25), 4 * (100 + 3 * 50) * 13);

  Contribution c;
  c.payload = LowRankFactors{Matrix::Zero(100, 13), Matrix::Zero(50, 13)};
  EXPECT_EQ(PayloadBytes(c), 4 * (100 + 50) * 13);
  EXPECT_EQ(PayloadBytes(c, 3), 4 * (100 + 3 * 50) * 13);
  c.payload = LowRankFactors{Matrix::Zero(50, 13), Matrix::Zero(100, 13)};  // wide: R is tall
  EXPECT_EQ(PayloadBytes(c, 3), 4 * (100 + 3 * 50) * 13);
  c.payload = Matrix(Matrix::Zero(50, 100));  // dense: cut by rows, nothing repeated
  EXPECT_EQ(PayloadBytes(c, 3), 4 * 50 * 100);
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
  // A ceiling stops the doubling there, and a fraction at or above it does not grow.
  EXPECT_EQ(NextRankFraction(specs, 0.125, 1e9, 0.2), 0.2);
  EXPECT_EQ(NextRankFraction(specs, 0.25, 1e9, 0.25), 0.25);
  // It does not stop a shrink.
  EXPECT_EQ(NextRankFraction(specs, 0.25, 5000, 0.25), 0.125);
  // 0.75 is rank 33 already (the break-even cap), so doubling would send nothing more.
  EXPECT_EQ(NextRankFraction(specs, 0.75, 1e9), 0.75);
}

// Steps every `step` seconds, the uplink probe reading `rate` bytes/s at each step; a push
// round of every parameter at the current fraction every `steps_per_push` steps.
void Simulate(PushRankController& controller, double rate, double step, int steps,
              absl::Time& t, int steps_per_push = 1) {
  const std::vector<ParamSpec> specs = Model();
  for (int i = 0; i < steps; ++i) {
    if (i % steps_per_push == 0) {
      controller.OnSent(PushBytesAt(specs, controller.fraction()), t);
    }
    const std::vector<double> rates = {rate};
    controller.OnDelivery(rates, t);
    t += absl::Seconds(step);
  }
}

PushRankController::State Simulate(double rate, double step, int steps, double start,
                                   int steps_per_push = 1) {
  PushRankController controller(Model(), start);
  absl::Time t = absl::UnixEpoch();
  Simulate(controller, rate, step, steps, t, steps_per_push);
  return controller.state();
}

TEST(PushRank, ControllerMeasuresTheLinkAndSettlesWithoutFlapping) {
  // 1 MB/s and a push round every 10 ms: half the link is 5000 bytes a round, so 0.25 (8000)
  // shrinks once to 0.125 (3800) and stays there (0.25 would need 11429).
  const PushRankController::State slow = Simulate(1e6, 0.01, 2000, 0.25);
  EXPECT_EQ(slow.fraction, 0.125);
  EXPECT_EQ(slow.changes, 1);
  EXPECT_NEAR(slow.rate_bytes_per_s, 1e6, 1e6 * 1e-6);
  EXPECT_NEAR(slow.sent_bytes_per_s, 3800 / 0.01, 3800 / 0.01 * 0.03);
  // 5 MB/s: budget 25000, so 0.5 would fit (15200 <= 17500), but the start is the ceiling.
  const PushRankController::State fast = Simulate(5e6, 0.01, 2000, 0.25);
  EXPECT_EQ(fast.fraction, 0.25);
  EXPECT_EQ(fast.changes, 0);
  EXPECT_NEAR(fast.rate_bytes_per_s, 5e6, 5e6 * 1e-6);
}

// The budget is per second of pushing, not per local step: pushes that carry 4 local steps
// each send a quarter of the bytes per second, so 0.25 (8000 bytes every 40 ms: 200 kB/s) fits
// a 1 MB/s link that one push per step (800 kB/s) does not.
TEST(PushRank, PushesThatCarrySeveralStepsKeepTheirRank) {
  const PushRankController::State accumulating = Simulate(1e6, 0.01, 2000, 0.25, 4);
  EXPECT_EQ(accumulating.fraction, 0.25);
  EXPECT_EQ(accumulating.changes, 0);
  EXPECT_NEAR(accumulating.sent_bytes_per_s, 8000 / 0.04, 8000 / 0.04 * 0.05);
}

// A link that slows down and recovers: the rank comes down with it, then back to its start,
// and no higher.
TEST(PushRank, ComesBackUpToItsStartWhenTheLinkRecovers) {
  PushRankController controller(Model(), 0.25);
  absl::Time t = absl::UnixEpoch();
  Simulate(controller, 1e6, 0.01, 2000, t);
  EXPECT_EQ(controller.fraction(), 0.125);
  Simulate(controller, 5e6, 0.01, 2000, t);
  EXPECT_EQ(controller.fraction(), 0.25);
  EXPECT_EQ(controller.state().changes, 2);
}

// A shaped link's samples are bimodal: most at its rate, some (a token bucket's burst) far above
// it. A window's lower quartile is the link's rate; one window of low samples (small, sparse
// flights) does not pull the rate down, two do.
TEST(PushRank, TheRateIsTheLinksDespiteBurstsAndOneLowWindow) {
  PushRankController controller(Model(), 0.25);
  absl::Time t = absl::UnixEpoch();
  for (int i = 0; i < 2000; ++i) {
    controller.OnSent(PushBytesAt(Model(), controller.fraction()), t);
    // 4 of 10 samples at 200 MB/s, the others at the link's 1 MB/s (budget 5000 bytes).
    const std::vector<double> rates = {i % 10 < 4 ? 2e8 : 1e6};
    controller.OnDelivery(rates, t);
    t += absl::Seconds(0.01);
  }
  EXPECT_NEAR(controller.state().rate_bytes_per_s, 1e6, 1);
  EXPECT_EQ(controller.fraction(), 0.125);
  // 4 MB/s (budget 20000: 0.25 fits, 8000 <= 14000), then one window at 0.2 MB/s.
  Simulate(controller, 4e6, 0.01, 200, t);
  EXPECT_EQ(controller.fraction(), 0.25);
  Simulate(controller, 2e5, 0.01, 50, t);
  EXPECT_NEAR(controller.state().rate_bytes_per_s, 4e6, 1);
  EXPECT_EQ(controller.fraction(), 0.25);
  // A link that stays slow for two windows is slow: 0.2 MB/s, budget 1000 bytes.
  Simulate(controller, 2e5, 0.01, 200, t);
  EXPECT_NEAR(controller.state().rate_bytes_per_s, 2e5, 1);
  EXPECT_EQ(controller.fraction(), 1.0 / 64);
}

TEST(PushRank, NoDecisionBeforeTheLinkIsMeasured) {
  // 40 steps of 10 ms with samples: 0.4 s, under one 0.5 s window.
  const PushRankController::State early = Simulate(1e5, 0.01, 40, 0.25);
  EXPECT_EQ(early.fraction, 0.25);
  EXPECT_EQ(early.rate_bytes_per_s, 0);
  // Pushes without a single delivery sample (no socket found): nothing is decided.
  PushRankController blind(Model(), 0.25);
  absl::Time t = absl::UnixEpoch();
  for (int i = 0; i < 2000; ++i, t += absl::Seconds(0.01)) {
    blind.OnSent(PushBytesAt(Model(), 0.25), t);
    blind.OnDelivery({}, t);
  }
  EXPECT_EQ(blind.fraction(), 0.25);
  EXPECT_EQ(blind.state().rate_bytes_per_s, 0);
  // A slow link but one push only, at the start: windows without pushes decide nothing.
  const PushRankController::State quiet = Simulate(1e3, 0.01, 2000, 0.25, 1 << 30);
  EXPECT_EQ(quiet.changes, 0);
  EXPECT_EQ(quiet.sent_bytes_per_s, 0);
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
