// The worker's push bookkeeping (worker/client/gradient_accumulator.h): nothing is lost whatever the
// shard answers (except what it refuses as stale, which is dropped and accounted), checked
// against a plain double-precision sum of the gradients; restored contributions keep their age.
#include "worker/client/gradient_accumulator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "absl/time/clock.h"
#include "common/rng.h"
#include "tests/model_table_test_util.h"
#include "tests/reference.h"

namespace dion {
namespace {

// Take, copied: the tests keep contributions after acknowledging them.
std::optional<Contribution> TakeCopy(GradientAccumulator& acc, const std::string& worker_id,
                                     int64_t current_version, absl::Time now) {
  const Contribution* c = acc.Take(worker_id, current_version, now);
  return c == nullptr ? std::nullopt : std::optional<Contribution>(*c);
}

using testing::Spec;

MatrixD ToDouble(const Matrix& M) { return M.cast<double>(); }

// What a contribution stands for, in sum units: payload * samples.
MatrixD SumUnits(const Contribution& c) {
  const double s = static_cast<double>(c.sample_count);
  if (c.is_low_rank()) {
    return ToDouble(c.factors().P) * ToDouble(c.factors().R).transpose() * s;
  }
  return ToDouble(c.gradient()) * s;
}

// Random answers from the shard: accepted, restored (rejected as not applied), dropped as
// stale, or left in flight until a later round. Checks sum(accepted) + sum(dropped as stale) +
// sum(in flight) + outstanding == sum(G * samples). With `change_rank`, the push rank moves
// between contributions (the adaptive push rank), so contributions of several ranks are in
// flight and restored into a residual compressed at another rank.
void CheckNothingIsLost(OptimizerKind kind, int64_t m, int64_t n, int rank,
                        bool change_rank = false) {
  GradientAccumulator acc(Spec("p", {m, n}, kind), rank, /*seed=*/3, /*first_sequence=*/100);
  Rng rng(7);
  MatrixD total = MatrixD::Zero(m, n);
  MatrixD settled = MatrixD::Zero(m, n);  // accepted and dropped as stale
  int restored = 0, dropped = 0;
  for (int step = 0; step < 60; ++step) {
    const int64_t samples = 1 + step % 5;
    Matrix G(m, n);
    rng.FillNormal(G);
    ASSERT_TRUE(acc.Accumulate(G, samples, 1.0, step).ok());
    total += ToDouble(G) * static_cast<double>(samples);
    if (change_rank) {
      static constexpr int kRanks[] = {1, 5, 2, 8, 3, 1, 16};  // 16: clamped to min(m, n)
      acc.set_compression_rank(kRanks[step % 7]);
    }
    if (acc.in_flight() < 2) (void)TakeCopy(acc, "w", step, absl::Now());
    // Answer the oldest in-flight contribution every other step.
    if (step % 2 == 1 && acc.in_flight() > 0) {
      const uint64_t sequence = acc.InFlight().front()->sequence;
      const double u = rng.Uniform();
      const AckAction action = u < 0.3   ? AckAction::kRestore
                               : u < 0.45 ? AckAction::kDropStale
                                          : AckAction::kRelease;
      absl::StatusOr<GradientAccumulator::Acknowledged> done = acc.Acknowledge(sequence, action);
      ASSERT_TRUE(done.ok()) << done.status();
      if (action == AckAction::kRestore) {
        ++restored;
      } else {
        dropped += action == AckAction::kDropStale;
        settled += SumUnits(done->contribution);
      }
    }
  }
  MatrixD in_flight = MatrixD::Zero(m, n);
  for (const Contribution* c : acc.InFlight()) in_flight += SumUnits(*c);
  const MatrixD accounted = settled + in_flight + ToDouble(acc.Outstanding());
  // float32 rounding of ~100 accumulations of O(1) entries: 1e-5 relative is ~10x margin.
  EXPECT_LT(testing::RelativeError(accounted, total), 1e-5)
      << "restored " << restored << ", dropped " << dropped;
  EXPECT_GT(restored, 3);  // the test exercised restoring
  EXPECT_GT(dropped, 1);   // and dropping
}

TEST(GradientAccumulator, NothingIsLostForALowRankMatrix) {
  CheckNothingIsLost(OptimizerKind::kDion, 24, 16, 4);
}

TEST(GradientAccumulator, NothingIsLostForAWideLowRankMatrix) {
  CheckNothingIsLost(OptimizerKind::kDion, 6, 30, 2);
}

TEST(GradientAccumulator, NothingIsLostWhenThePushRankChangesMidRun) {
  CheckNothingIsLost(OptimizerKind::kDion, 24, 12, 4, /*change_rank=*/true);
}

TEST(GradientAccumulator, PushRankChangeTakesEffectAtTheNextContribution) {
  GradientAccumulator acc(Spec("w", {10, 6}, OptimizerKind::kDion), 2, 1, 0);
  Rng rng(4);
  Matrix G(10, 6);
  for (int rank : {2, 5, 1, 6}) {  // 6 = min(m, n): the largest rank that stays orthonormal
    acc.set_compression_rank(rank);
    EXPECT_EQ(acc.compression_rank(), rank);
    rng.FillNormal(G);
    ASSERT_TRUE(acc.Accumulate(G, 1, 0.0, 0).ok());
    const std::optional<Contribution> c = TakeCopy(acc, "w", 0, absl::Now());
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->factors().P.cols(), rank);
    EXPECT_EQ(c->factors().R.cols(), rank);
    ASSERT_TRUE(acc.Acknowledge(c->sequence, AckAction::kRelease).ok());
  }
  acc.set_compression_rank(9);  // above min(m, n): clamped
  EXPECT_EQ(acc.compression_rank(), 6);
}

TEST(GradientAccumulator, NothingIsLostForADenseParameter) {
  CheckNothingIsLost(OptimizerKind::kAdamW, 1, 12, 0);
}

TEST(GradientAccumulator, PayloadIsTheMeanOverItsSamples) {
  GradientAccumulator acc(Spec("b", {3}, OptimizerKind::kAdamW), 0, 1, 0);
  Matrix G1 = Matrix::Constant(1, 3, 2.0f), G2 = Matrix::Constant(1, 3, 5.0f);
  ASSERT_TRUE(acc.Accumulate(G1, 10, 0.5, 4).ok());
  ASSERT_TRUE(acc.Accumulate(G2, 30, 1.5, 6).ok());
  std::optional<Contribution> c = TakeCopy(acc, "w", 9, absl::Now());
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->sample_count, 40);
  EXPECT_EQ(c->base_version, 4);  // the oldest step's version
  EXPECT_NEAR(c->loss, (0.5 * 10 + 1.5 * 30) / 40, 1e-12);
  EXPECT_NEAR(c->gradient()(0, 0), (2.0 * 10 + 5.0 * 30) / 40, 1e-6);
  EXPECT_EQ(acc.pending_samples(), 0);
}

TEST(GradientAccumulator, RestoredContributionKeepsItsOriginalBaseVersion) {
  GradientAccumulator acc(Spec("b", {2}, OptimizerKind::kAdamW), 0, 1, 50);
  ASSERT_TRUE(acc.Accumulate(Matrix::Constant(1, 2, 1.0f), 8, 0.0, 3).ok());
  std::optional<Contribution> first = TakeCopy(acc, "w", 3, absl::Now());
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->sequence, 50u);
  ASSERT_TRUE(acc.Acknowledge(50, AckAction::kRestore).ok());  // e.g. the shard was restarting
  EXPECT_EQ(acc.pending_samples(), 8);
  // Alone, it goes out again as old as it is, whatever version the replica has reached.
  std::optional<Contribution> again = TakeCopy(acc, "w", 11, absl::Now());
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->sequence, 51u);    // a new sequence: the old one was not applied
  EXPECT_EQ(again->base_version, 3);  // its own, not 11
  EXPECT_NEAR(again->gradient()(0, 1), 1.0, 1e-6);
  // Restored again and carried with newer steps: the contribution is as old as its oldest part.
  ASSERT_TRUE(acc.Acknowledge(51, AckAction::kRestore).ok());
  ASSERT_TRUE(acc.Accumulate(Matrix::Constant(1, 2, 4.0f), 8, 0.0, 12).ok());
  std::optional<Contribution> merged = TakeCopy(acc, "w", 13, absl::Now());
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->base_version, 3);  // min(3, 12)
  EXPECT_EQ(merged->sample_count, 16);
  EXPECT_NEAR(merged->gradient()(0, 0), (1.0 * 8 + 4.0 * 8) / 16, 1e-6);
}

TEST(GradientAccumulator, RestoredLowRankContributionKeepsTheOldestBaseVersion) {
  GradientAccumulator acc(Spec("w", {8, 6}, OptimizerKind::kDion), 2, 1, 0);
  Rng rng(5);
  Matrix G(8, 6);
  rng.FillNormal(G);
  ASSERT_TRUE(acc.Accumulate(G, 4, 0.0, 7).ok());
  std::optional<Contribution> first = TakeCopy(acc, "w", 7, absl::Now());
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(acc.Acknowledge(first->sequence, AckAction::kRestore).ok());
  rng.FillNormal(G);
  ASSERT_TRUE(acc.Accumulate(G, 4, 0.0, 9).ok());
  std::optional<Contribution> next = TakeCopy(acc, "w", 10, absl::Now());
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->base_version, 7);
  EXPECT_EQ(next->sample_count, 8);
}

// A shard restarted from an older checkpoint went back to a version below the contribution's
// base: the replica follows it back, and a base from the abandoned history is capped at the
// replica's version (the shard would refuse it as OUT_OF_RANGE on every re-send).
TEST(GradientAccumulator, BaseVersionIsCappedAtAReplicaThatWentBack) {
  GradientAccumulator acc(Spec("b", {2}, OptimizerKind::kAdamW), 0, 1, 0);
  ASSERT_TRUE(acc.Accumulate(Matrix::Ones(1, 2), 8, 0.0, 40).ok());
  std::optional<Contribution> first = TakeCopy(acc, "w", 40, absl::Now());
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(acc.Acknowledge(first->sequence, AckAction::kRestore).ok());
  std::optional<Contribution> again = TakeCopy(acc, "w", 25, absl::Now());
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->base_version, 25);
}

// STALE: older than the shard's max_staleness. Re-sent with its true base it would be refused
// for ever; it is dropped, and nothing of it comes back.
TEST(GradientAccumulator, StaleContributionIsDroppedNotRestored) {
  GradientAccumulator acc(Spec("w", {6, 4}, OptimizerKind::kDion), 4, 1, 0);
  Rng rng(9);
  Matrix G(6, 4);
  rng.FillNormal(G);
  ASSERT_TRUE(acc.Accumulate(G, 8, 0.0, 2).ok());
  std::optional<Contribution> c = TakeCopy(acc, "w", 2, absl::Now());
  ASSERT_TRUE(c.has_value());
  const MatrixD residual_before = ToDouble(acc.Outstanding());
  absl::StatusOr<GradientAccumulator::Acknowledged> done =
      acc.Acknowledge(c->sequence, AckAction::kDropStale);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->contribution.sample_count, 8);
  EXPECT_EQ(acc.pending_samples(), 0);
  EXPECT_EQ(acc.in_flight(), 0);
  EXPECT_TRUE(ToDouble(acc.Outstanding()) == residual_before);  // E unchanged: nothing put back
  EXPECT_FALSE(TakeCopy(acc, "w", 30, absl::Now()).has_value());
  // What was dropped plus what stays is the step, to float rounding.
  EXPECT_LT(testing::RelativeError(SumUnits(done->contribution) + residual_before,
                                   ToDouble(G) * 8.0),
            1e-5);
}

// TakeWhole, for a worker about to exit: the pending samples and the whole residual go out as
// a full-rank factorisation; afterwards nothing is left, and what was taken is, to float
// rounding, the double-precision sum of the steps.
void CheckTakeWholeCarriesEverything(int64_t m, int64_t n) {
  GradientAccumulator acc(Spec("w", {m, n}, OptimizerKind::kDion), 2, 1, 0);
  Rng rng(11);
  MatrixD total = MatrixD::Zero(m, n);
  MatrixD taken = MatrixD::Zero(m, n);
  for (int step = 0; step < 5; ++step) {
    Matrix G(m, n);
    rng.FillNormal(G);
    ASSERT_TRUE(acc.Accumulate(G, 3, 0.0, step).ok());
    total += ToDouble(G) * 3.0;
    if (step % 2 == 1) {  // the compressed pushes leave a residual behind
      std::optional<Contribution> c = TakeCopy(acc, "w", step, absl::Now());
      ASSERT_TRUE(c.has_value());
      taken += SumUnits(*c);
    }
  }
  ASSERT_GT(acc.Outstanding().norm(), 0.0f);
  ASSERT_GT(acc.pending_samples(), 0);
  ASSERT_TRUE(acc.HasAnythingToFlush());
  std::optional<Contribution> whole;
  if (const Contribution* c = acc.TakeWhole("w", 5, absl::Now(), /*max_rank=*/1000)) whole = *c;
  ASSERT_TRUE(whole.has_value());
  EXPECT_EQ(whole->sample_count, 3);  // the pending step's (step 4)
  EXPECT_EQ(whole->base_version, 4);
  ASSERT_TRUE(whole->is_low_rank());
  EXPECT_EQ(whole->factors().P.cols(), std::min(m, n));  // full rank, within [1, min(m, n)]
  taken += SumUnits(*whole);
  EXPECT_EQ(acc.Outstanding().norm(), 0.0f);
  EXPECT_EQ(acc.pending_samples(), 0);
  EXPECT_FALSE(acc.HasAnythingToFlush());
  EXPECT_EQ(acc.TakeWhole("w", 5, absl::Now(), 1000), nullptr);
  // The full-rank payload is exact up to R / S * S: a few float roundings of each entry.
  EXPECT_LT(testing::RelativeError(taken, total), 1e-5);
}

TEST(GradientAccumulator, TakeWholeCarriesTheWholeResidualOfATallMatrix) {
  CheckTakeWholeCarriesEverything(12, 5);
}

TEST(GradientAccumulator, TakeWholeCarriesTheWholeResidualOfAWideMatrix) {
  CheckTakeWholeCarriesEverything(4, 9);
}

// Only a residual left (every step already pushed): it goes out with sample_count 1; a rank
// cap splits it into blocks, and a refused block comes back and goes out again.
TEST(GradientAccumulator, TakeWholeSplitsAResidualIntoBlocksAndRestoresARefusedOne) {
  const int64_t m = 10, n = 7;
  GradientAccumulator acc(Spec("w", {m, n}, OptimizerKind::kDion), 2, 1, 0);
  Matrix G(m, n);
  Rng(13).FillNormal(G);
  ASSERT_TRUE(acc.Accumulate(G, 4, 0.0, 0).ok());
  std::optional<Contribution> first = TakeCopy(acc, "w", 0, absl::Now());
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(acc.Acknowledge(first->sequence, AckAction::kRelease).ok());
  MatrixD sent = SumUnits(*first);
  const MatrixD residual = ToDouble(acc.Outstanding());
  ASSERT_GT(residual.norm(), 0.0);
  std::vector<Contribution> blocks;
  while (const Contribution* c = acc.TakeWhole("w", 2, absl::Now(), /*max_rank=*/3)) {
    blocks.push_back(*c);
    ASSERT_LE(blocks.size(), 10u);
  }
  ASSERT_EQ(blocks.size(), 3u);  // 7 columns in blocks of 3, 3, 1
  EXPECT_EQ(blocks[0].factors().P.cols(), 3);
  EXPECT_EQ(blocks[2].factors().P.cols(), 1);
  for (const Contribution& b : blocks) EXPECT_EQ(b.sample_count, 1);
  // The middle block is refused (the shard was restarting): it is back in E, and only it.
  ASSERT_TRUE(acc.Acknowledge(blocks[1].sequence, AckAction::kRestore).ok());
  EXPECT_LT(testing::RelativeError(ToDouble(acc.Outstanding()), SumUnits(blocks[1])), 1e-6);
  EXPECT_EQ(acc.pending_samples(), 1);
  std::optional<Contribution> again;
  if (const Contribution* c = acc.TakeWhole("w", 2, absl::Now(), 3)) again = *c;
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->sample_count, 1);
  EXPECT_EQ(acc.Outstanding().norm(), 0.0f);
  sent += SumUnits(blocks[0]) + SumUnits(blocks[2]) + SumUnits(*again);
  EXPECT_LT(testing::RelativeError(sent, ToDouble(G) * 4.0), 1e-5);
}

TEST(GradientAccumulator, SecondAcknowledgementOfASequenceIsNotFound) {
  GradientAccumulator acc(Spec("b", {2}, OptimizerKind::kAdamW), 0, 1, 0);
  ASSERT_TRUE(acc.Accumulate(Matrix::Ones(1, 2), 1, 0.0, 0).ok());
  ASSERT_TRUE(TakeCopy(acc, "w", 0, absl::Now()).has_value());
  ASSERT_TRUE(acc.Acknowledge(0, AckAction::kRelease).ok());
  EXPECT_EQ(acc.Acknowledge(0, AckAction::kRestore).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(acc.pending_samples(), 0);  // the duplicate answer restored nothing
}

TEST(GradientAccumulator, BadGradientChangesNothing) {
  GradientAccumulator acc(Spec("w", {4, 3}, OptimizerKind::kDion), 2, 1, 0);
  Matrix bad = Matrix::Ones(4, 3);
  bad(1, 1) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(acc.Accumulate(bad, 1, 0.0, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(acc.Accumulate(Matrix::Ones(3, 4), 1, 0.0, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(acc.Accumulate(Matrix::Ones(4, 3), 0, 0.0, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(acc.pending_samples(), 0);
  EXPECT_EQ(acc.Outstanding().norm(), 0.0f);
}

TEST(GradientAccumulator, ZeroResidualStillCarriesItsSamples) {
  // Nothing for the compressor to capture: the samples must still go out (their mean gradient
  // is zero), or they stay pending for ever and the client's Flush never completes.
  GradientAccumulator acc(Spec("w", {6, 4}, OptimizerKind::kDion), 2, 1, 0);
  ASSERT_TRUE(acc.Accumulate(Matrix::Zero(6, 4), 8, 0.5, 3).ok());
  std::optional<Contribution> c = TakeCopy(acc, "w", 3, absl::Now());
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->sample_count, 8);
  EXPECT_EQ(c->base_version, 3);
  ASSERT_TRUE(c->is_low_rank());
  EXPECT_EQ(c->factors().P.rows(), 6);
  EXPECT_EQ(c->factors().R.rows(), 4);
  EXPECT_EQ(c->factors().P.cols(), 1);  // rank 1, the smallest valid payload
  EXPECT_EQ(c->factors().P.norm(), 0.0f);
  EXPECT_EQ(c->factors().R.norm(), 0.0f);
  EXPECT_EQ(acc.pending_samples(), 0);
  // Refused, it restores nothing but its samples.
  ASSERT_TRUE(acc.Acknowledge(c->sequence, AckAction::kRestore).ok());
  EXPECT_EQ(acc.pending_samples(), 8);
  EXPECT_EQ(acc.Outstanding().norm(), 0.0f);
}

TEST(GradientAccumulator, StopsTakingBeforeTheUnacknowledgedSpanReachesTheDedupWindow) {
  // The shard remembers 4096 sequences per worker and parameter; a sequence older than that
  // cannot be told apart from one applied long ago. The oldest unacknowledged sequence and
  // the newest one taken stay less than kMaxUnacknowledgedSpan apart.
  GradientAccumulator acc(Spec("b", {2}, OptimizerKind::kAdamW), 0, 1, 1000);
  for (uint64_t i = 0; i < kMaxUnacknowledgedSpan; ++i) {
    ASSERT_TRUE(acc.Accumulate(Matrix::Ones(1, 2), 1, 0.0, 0).ok());
    ASSERT_TRUE(TakeCopy(acc, "w", 0, absl::Now()).has_value()) << i;
  }
  ASSERT_TRUE(acc.Accumulate(Matrix::Ones(1, 2), 1, 0.0, 0).ok());
  EXPECT_FALSE(TakeCopy(acc, "w", 0, absl::Now()).has_value());
  EXPECT_EQ(acc.pending_samples(), 1);  // kept for later, not lost
  // An acknowledgement of a newer one does not help: the oldest is still open.
  ASSERT_TRUE(acc.Acknowledge(1000 + kMaxUnacknowledgedSpan - 1, AckAction::kRelease).ok());
  EXPECT_FALSE(TakeCopy(acc, "w", 0, absl::Now()).has_value());
  ASSERT_TRUE(acc.Acknowledge(1000, AckAction::kRelease).ok());
  std::optional<Contribution> next = TakeCopy(acc, "w", 0, absl::Now());
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->sequence, 1000 + kMaxUnacknowledgedSpan);
}

// Differential privacy (set_clip): every contribution's payload, formed in double as the shard
// would read it, has Frobenius norm <= C, however large the gradients, for Dion factors and
// dense payloads, through Take and TakeWhole.
void CheckEveryContributionIsClipped(OptimizerKind kind) {
  const double clip = 1.5;
  GradientAccumulator acc(Spec("p", {12, 7}, kind), 3, /*seed=*/5, /*first_sequence=*/1);
  acc.set_clip(clip);
  Rng rng(11);
  int taken = 0;
  const auto check = [&](const Contribution* c) {
    if (c == nullptr) return;
    ++taken;
    const MatrixD payload = SumUnits(*c) / static_cast<double>(c->sample_count);
    EXPECT_LE(payload.norm(), clip * (1 + 1e-5)) << "sequence " << c->sequence;
    ASSERT_TRUE(acc.Acknowledge(c->sequence, AckAction::kRelease).ok());
  };
  for (int step = 0; step < 30; ++step) {
    Matrix G(12, 7);
    rng.FillNormal(G, /*stddev=*/10.0 * (1 + step % 4));  // norm ~ 90..360, far above C
    ASSERT_TRUE(acc.Accumulate(G, 1 + step % 3, 0.0, step).ok());
    if (step % 3 == 2) check(acc.Take("w", step, absl::Now()));
  }
  while (acc.HasAnythingToFlush()) check(acc.TakeWhole("w", 30, absl::Now(), 2));
  EXPECT_GE(taken, 10);
}

TEST(GradientAccumulator, ClipBoundsEveryDionContributionsNorm) {
  CheckEveryContributionIsClipped(OptimizerKind::kDion);
}

TEST(GradientAccumulator, ClipBoundsEveryDenseContributionsNorm) {
  CheckEveryContributionIsClipped(OptimizerKind::kAdamW);
}

TEST(GradientAccumulator, OnlyClippedStepsEnterTheErrorFeedbackResidual) {
  // Nothing taken: the residual is exactly sum_k s_k clip(G_k), the clip done here in double.
  const double clip = 2.0;
  GradientAccumulator acc(Spec("p", {9, 6}, OptimizerKind::kDion), 2, 1, 1);
  acc.set_clip(clip);
  Rng rng(3);
  MatrixD expected = MatrixD::Zero(9, 6);
  for (int step = 0; step < 5; ++step) {
    Matrix G(9, 6);
    rng.FillNormal(G, step == 2 ? 0.01 : 5.0);  // one step below the clip, kept as it is
    const int64_t samples = 2 + step;
    ASSERT_TRUE(acc.Accumulate(G, samples, 0.0, 0).ok());
    const MatrixD g = ToDouble(G);
    expected += g * std::min(1.0, clip / g.norm()) * static_cast<double>(samples);
  }
  EXPECT_LT((ToDouble(acc.Outstanding()) - expected).norm(), 1e-4 * expected.norm());
}

TEST(GradientAccumulator, ClipAboveEveryNormChangesNoBit) {
  // A clip no step or payload reaches leaves every contribution bit-identical to no clip.
  for (OptimizerKind kind : {OptimizerKind::kDion, OptimizerKind::kAdamW}) {
    GradientAccumulator plain(Spec("p", {8, 5}, kind), 2, 9, 1);
    GradientAccumulator clipped(Spec("p", {8, 5}, kind), 2, 9, 1);
    clipped.set_clip(1e6);
    Rng rng(4);
    for (int step = 0; step < 6; ++step) {
      Matrix G(8, 5);
      rng.FillNormal(G);
      ASSERT_TRUE(plain.Accumulate(G, 3, 0.0, step).ok());
      ASSERT_TRUE(clipped.Accumulate(G, 3, 0.0, step).ok());
      const Contribution* a = plain.Take("w", step, absl::Now());
      const Contribution* b = clipped.Take("w", step, absl::Now());
      ASSERT_TRUE(a != nullptr && b != nullptr);
      EXPECT_EQ(SumUnits(*a), SumUnits(*b)) << "step " << step;
      ASSERT_TRUE(plain.Acknowledge(a->sequence, AckAction::kRelease).ok());
      ASSERT_TRUE(clipped.Acknowledge(b->sequence, AckAction::kRelease).ok());
    }
  }
}

}  // namespace
}  // namespace dion
