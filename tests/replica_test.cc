// A worker's parameter replica (worker/client/replica.h) following broadcast versions.
#include "worker/client/replica.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/checksum.h"
#include "common/dion.h"
#include "common/rng.h"
#include "tests/reference.h"

namespace dion {
namespace {

ParamSpec Spec(int64_t m, int64_t n) {
  ParamSpec spec;
  spec.name = "w";
  spec.shape = {m, n};
  spec.optimizer = OptimizerKind::kDion;
  return spec;
}

Matrix Random(int64_t m, int64_t n, uint64_t seed) {
  Matrix M(m, n);
  Rng(seed).FillNormal(M);
  return M;
}

VersionUpdate Full(int64_t version, const Matrix& X) {
  return VersionUpdate{"w", version, WeightsChecksum(X), X};
}

// The server's side of a step, computed the way the shard does (common/dion.h), so the
// checksum matches bit for bit.
VersionUpdate Step(int64_t version, const Matrix& X_before, bool transposed, uint64_t seed,
                   Matrix* X_after) {
  const int64_t tall = transposed ? X_before.cols() : X_before.rows();
  const int64_t short_side = transposed ? X_before.rows() : X_before.cols();
  LowRankStep step{0.99f, 0.05f, Random(tall, 2, seed), Random(short_side, 2, seed + 1),
                   transposed};
  *X_after = X_before;
  ApplyLowRankUpdate(*X_after, step.decay, step.scale, step.P, step.Q, step.transposed);
  return VersionUpdate{"w", version, WeightsChecksum(*X_after), step};
}

TEST(Replica, AppliesLowRankStepsLikeAPlainDoubleComputation) {
  for (bool transposed : {false, true}) {
    const int64_t m = transposed ? 5 : 9, n = transposed ? 9 : 5;
    Replica replica(Spec(m, n));
    const Matrix X0 = Random(m, n, 1);
    ASSERT_EQ(*replica.Apply(Full(3, X0)), ReplicaEvent::kReplaced);
    Matrix X1;
    VersionUpdate update = Step(4, X0, transposed, 10, &X1);
    ASSERT_EQ(*replica.Apply(update), ReplicaEvent::kApplied);
    EXPECT_EQ(replica.version(), 4);
    // Independent reference: X1 = decay X0 - scale P Q^T (or its transpose) in double.
    const LowRankStep& s = std::get<LowRankStep>(update.content);
    MatrixD delta = s.P.cast<double>() * s.Q.cast<double>().transpose();
    if (transposed) delta.transposeInPlace();
    const MatrixD expected = 0.99 * X0.cast<double>() - 0.05 * delta;
    // float32 arithmetic on O(1) entries: 1e-6 relative.
    EXPECT_LT(testing::RelativeError(replica.value().cast<double>(), expected), 1e-6);
  }
}

// Extrapolate(k) = X + k (X - X_prev), X_prev the copy before the last version it applied,
// against a double-precision reference built from the two values the test itself produced.
TEST(Replica, ExtrapolatesAlongTheLastStep) {
  for (bool transposed : {false, true}) {
    const int64_t m = transposed ? 5 : 9, n = transposed ? 9 : 5;
    Replica replica(Spec(m, n), /*track_last_step=*/true);
    const Matrix X0 = Random(m, n, 1);
    ASSERT_EQ(*replica.Apply(Full(3, X0)), ReplicaEvent::kReplaced);
    Matrix out;
    // The first value follows nothing: no step to extrapolate along.
    replica.Extrapolate(4, &out);
    EXPECT_EQ(WeightsChecksum(out), WeightsChecksum(X0));
    Matrix X1;
    ASSERT_EQ(*replica.Apply(Step(4, X0, transposed, 10, &X1)), ReplicaEvent::kApplied);
    for (double k : {0.5, 1.0, 4.0}) {
      replica.Extrapolate(k, &out);
      const MatrixD expected =
          X1.cast<double>() + k * (X1.cast<double>() - X0.cast<double>());
      // float32 differences of O(0.1) steps on O(1) entries: 1e-6 relative.
      EXPECT_LT(testing::RelativeError(out.cast<double>(), expected), 1e-6) << "k = " << k;
    }
    replica.Extrapolate(0, &out);
    EXPECT_EQ(WeightsChecksum(out), WeightsChecksum(X1));  // 0: the copy itself, bit for bit
    // A full value right after the previous version (a dense parameter's broadcast) is a step.
    const Matrix X2 = Random(m, n, 7);
    ASSERT_EQ(*replica.Apply(Full(5, X2)), ReplicaEvent::kReplaced);
    replica.Extrapolate(2, &out);
    const MatrixD expected2 = X2.cast<double>() + 2 * (X2.cast<double>() - X1.cast<double>());
    EXPECT_LT(testing::RelativeError(out.cast<double>(), expected2), 1e-6);
    // A full value 4 versions ahead (in place of 4 steps) gives the mean step over them.
    ASSERT_EQ(*replica.Apply(Full(9, X0)), ReplicaEvent::kReplaced);
    replica.Extrapolate(2, &out);
    const MatrixD expected9 =
        X0.cast<double>() + 2 * (X0.cast<double>() - X2.cast<double>()) / 4;
    EXPECT_LT(testing::RelativeError(out.cast<double>(), expected9), 1e-6);
    // One that goes back is no step: the extrapolation stops.
    ASSERT_EQ(*replica.Apply(Full(10, X1)), ReplicaEvent::kReplaced);
    ASSERT_EQ(*replica.Apply(Full(2, X2)), ReplicaEvent::kWentBack);
    replica.Extrapolate(2, &out);
    EXPECT_EQ(WeightsChecksum(out), WeightsChecksum(X2));
  }
}

// Updates that change nothing (a repeated step, a gap) keep the last step; a copy that went out
// of sync gives none to a full value that follows it; an untracked replica never extrapolates.
TEST(Replica, LastStepSurvivesNoOpsAndIsDroppedAfterAMismatch) {
  Replica replica(Spec(6, 4), /*track_last_step=*/true);
  const Matrix X0 = Random(6, 4, 1);
  ASSERT_TRUE(replica.Apply(Full(1, X0)).ok());
  Matrix X1, X2, out;
  const VersionUpdate step2 = Step(2, X0, false, 10, &X1);
  ASSERT_EQ(*replica.Apply(step2), ReplicaEvent::kApplied);
  const MatrixD expected = 2 * X1.cast<double>() - X0.cast<double>();  // k = 1
  ASSERT_EQ(*replica.Apply(step2), ReplicaEvent::kIgnored);
  ASSERT_EQ(*replica.Apply(Step(4, X1, false, 12, &X2)), ReplicaEvent::kGap);
  replica.Extrapolate(1, &out);
  EXPECT_LT(testing::RelativeError(out.cast<double>(), expected), 1e-6);

  // Version 3 arrives with a checksum that does not match: the copy is out of sync, and the
  // full value that repairs it at version 4 is not one step after anything it holds.
  VersionUpdate bad = Step(3, X1, false, 14, &X2);
  bad.checksum ^= 1;
  ASSERT_EQ(*replica.Apply(bad), ReplicaEvent::kChecksumMismatch);
  const Matrix X4 = Random(6, 4, 20);
  ASSERT_EQ(*replica.Apply(Full(4, X4)), ReplicaEvent::kReplaced);
  replica.Extrapolate(3, &out);
  EXPECT_EQ(WeightsChecksum(out), WeightsChecksum(X4));

  Replica untracked(Spec(6, 4));
  ASSERT_TRUE(untracked.Apply(Full(1, X0)).ok());
  ASSERT_EQ(*untracked.Apply(Step(2, X0, false, 10, &X1)), ReplicaEvent::kApplied);
  EXPECT_FALSE(untracked.tracks_last_step());
  untracked.Extrapolate(3, &out);
  EXPECT_EQ(WeightsChecksum(out), WeightsChecksum(X1));
}

TEST(Replica, GapNeedsResyncAndLeavesTheCopyUnchanged) {
  Replica replica(Spec(4, 3));
  const Matrix X0 = Random(4, 3, 2);
  ASSERT_TRUE(replica.Apply(Full(1, X0)).ok());
  Matrix X1;
  ReplicaEvent e = *replica.Apply(Step(3, X0, false, 5, &X1));  // version 2 was missed
  EXPECT_EQ(e, ReplicaEvent::kGap);
  EXPECT_TRUE(NeedsResync(e));
  EXPECT_EQ(replica.version(), 1);
  EXPECT_EQ(WeightsChecksum(replica.value()), WeightsChecksum(X0));
}

TEST(Replica, ChecksumMismatchIsReported) {
  Replica replica(Spec(4, 3));
  const Matrix X0 = Random(4, 3, 2);
  ASSERT_TRUE(replica.Apply(Full(1, X0)).ok());
  Matrix X1;
  VersionUpdate update = Step(2, X0, false, 5, &X1);
  update.checksum ^= 1;  // the server's weights differ from what this copy computes
  EXPECT_EQ(*replica.Apply(update), ReplicaEvent::kChecksumMismatch);
}

// The checksum's job now that every CPU computes the same step: a copy that really differs
// from the server's (here one element off by one ulp, as a flipped bit or a lost update would
// leave it) is caught by the next low-rank step, and a full value repairs it.
TEST(Replica, ACopyThatReallyDivergedIsCaughtAndRepairedByAFullValue) {
  for (bool transposed : {false, true}) {
    const int64_t m = transposed ? 5 : 9, n = transposed ? 9 : 5;
    Replica replica(Spec(m, n));
    const Matrix X0 = Random(m, n, 2);
    Matrix diverged = X0;
    diverged(m / 2, n / 2) = std::nextafter(diverged(m / 2, n / 2), 10.0f);
    ASSERT_TRUE(replica.Set(1, diverged, WeightsChecksum(diverged)).ok());
    Matrix X1, X2;
    const ReplicaEvent event = *replica.Apply(Step(2, X0, transposed, 5, &X1));
    EXPECT_EQ(event, ReplicaEvent::kChecksumMismatch);
    EXPECT_TRUE(NeedsResync(event));
    EXPECT_FALSE(replica.in_sync());
    ASSERT_EQ(*replica.Apply(Full(2, X1)), ReplicaEvent::kReplaced);
    EXPECT_TRUE(replica.in_sync());
    EXPECT_EQ(*replica.Apply(Step(3, X1, transposed, 7, &X2)), ReplicaEvent::kApplied);
    EXPECT_EQ(WeightsChecksum(replica.value()), WeightsChecksum(X2));
  }
}

TEST(Replica, OlderFullValueMeansTheShardWentBack) {
  Replica replica(Spec(2, 2));
  ASSERT_TRUE(replica.Apply(Full(9, Random(2, 2, 1))).ok());
  const Matrix older = Random(2, 2, 2);
  EXPECT_EQ(*replica.Apply(Full(5, older)), ReplicaEvent::kWentBack);
  EXPECT_EQ(replica.version(), 5);
  EXPECT_EQ(WeightsChecksum(replica.value()), WeightsChecksum(older));
}

TEST(Replica, RepeatedLowRankStepIsIgnored) {
  Replica replica(Spec(4, 3));
  const Matrix X0 = Random(4, 3, 2);
  ASSERT_TRUE(replica.Apply(Full(1, X0)).ok());
  Matrix X1;
  VersionUpdate update = Step(2, X0, false, 5, &X1);
  ASSERT_EQ(*replica.Apply(update), ReplicaEvent::kApplied);
  EXPECT_EQ(*replica.Apply(update), ReplicaEvent::kIgnored);
  EXPECT_EQ(WeightsChecksum(replica.value()), WeightsChecksum(X1));
}

TEST(Replica, WrongShapesAreRefusedWithoutChange) {
  Replica replica(Spec(4, 3));
  const Matrix X0 = Random(4, 3, 2);
  ASSERT_TRUE(replica.Apply(Full(1, X0)).ok());
  EXPECT_EQ(replica.Apply(Full(2, Random(3, 4, 1))).status().code(),
            absl::StatusCode::kInvalidArgument);
  Matrix unused;
  VersionUpdate wrong = Step(2, Random(3, 4, 3), false, 5, &unused);  // P 3 x 2 for a 4 x 3
  EXPECT_EQ(replica.Apply(wrong).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(replica.version(), 1);
  EXPECT_EQ(WeightsChecksum(replica.value()), WeightsChecksum(X0));
}

TEST(Replica, MismatchLeavesTheCopyOutOfSyncUntilAFullValue) {
  // After a mismatch the copy carries the new version number without its bits: it must not be
  // announced as held when resubscribing, and further steps cannot repair it.
  Replica replica(Spec(4, 3));
  const Matrix X0 = Random(4, 3, 2);
  ASSERT_TRUE(replica.Apply(Full(1, X0)).ok());
  EXPECT_TRUE(replica.in_sync());
  Matrix X1;
  VersionUpdate bad = Step(2, X0, false, 5, &X1);
  bad.checksum ^= 1;
  ASSERT_EQ(*replica.Apply(bad), ReplicaEvent::kChecksumMismatch);
  EXPECT_FALSE(replica.in_sync());
  // The next step matches the server's checksum of version 3 but applies to wrong bits.
  Matrix X2;
  VersionUpdate next = Step(3, X1, false, 7, &X2);
  EXPECT_EQ(*replica.Apply(next, /*verify_checksum=*/false), ReplicaEvent::kChecksumMismatch);
  EXPECT_FALSE(replica.in_sync());
  const uint64_t changes = replica.changes();
  ASSERT_TRUE(replica.Set(3, X2, WeightsChecksum(X2)).ok());
  EXPECT_TRUE(replica.in_sync());
  EXPECT_GT(replica.changes(), changes);
  // A gap leaves the copy as it was, in sync at its version.
  Matrix X4;
  EXPECT_EQ(*replica.Apply(Step(5, X2, false, 9, &X4)), ReplicaEvent::kGap);
  EXPECT_TRUE(replica.in_sync());
}

TEST(Replica, SetRefusesAValueThatDoesNotMatchItsChecksum) {
  Replica replica(Spec(2, 2));
  const Matrix X = Random(2, 2, 1);
  EXPECT_EQ(replica.Set(4, X, WeightsChecksum(X) ^ 1).code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(replica.has_value());
  EXPECT_FALSE(replica.in_sync());
}

// --- Split parameters: a replica assembled from its owners' row blocks.

// The blocks of the tall side (m rows when tall, n columns when wide) over 3 owners, cut
// here by hand: rows [0, 4), [4, 7), [7, 10) of a 10-long tall side.
std::vector<RowBlock> ThreeBlocks() { return {{0, 4}, {4, 7}, {7, 10}}; }

// X's part that `rows` covers, copied element by element (the reference's own slicing).
Matrix Slice(const Matrix& X, RowBlock rows, bool wide) {
  Matrix out(wide ? X.rows() : rows.size(), wide ? rows.size() : X.cols());
  for (int64_t i = 0; i < out.rows(); ++i) {
    for (int64_t j = 0; j < out.cols(); ++j) {
      out(i, j) = wide ? X(i, rows.begin + j) : X(rows.begin + i, j);
    }
  }
  return out;
}

// The owner of `rows`' update: the block's value at `version`.
VersionUpdate BlockValue(int64_t version, const Matrix& X, RowBlock rows, bool wide) {
  const Matrix block = Slice(X, rows, wide);
  VersionUpdate update{"w", version, WeightsChecksum(block), block};
  update.rows = rows;
  return update;
}

// The owner of `rows`' share of `whole` (a step of the whole parameter): P's rows, with the
// checksum of the block of `X_after` (the whole step's result).
VersionUpdate BlockStep(const VersionUpdate& whole, const Matrix& X_after, RowBlock rows,
                        bool wide) {
  LowRankStep step = std::get<LowRankStep>(whole.content);
  Matrix P(rows.size(), step.P.cols());
  for (int64_t i = 0; i < P.rows(); ++i) P.row(i) = step.P.row(rows.begin + i);
  step.P = P;
  VersionUpdate update{"w", whole.version, WeightsChecksum(Slice(X_after, rows, wide)), step};
  update.rows = rows;
  return update;
}

// Every owner's block of a step applied to its block = the whole step applied to X, bit for
// bit (the checksums of the whole step's blocks verify), tall and wide; and against a
// double-precision reference of decay X - scale P Q^T.
TEST(SplitReplica, BlockStepsEqualTheWholeStepBitForBit) {
  for (bool wide : {false, true}) {
    const int64_t m = wide ? 6 : 10, n = wide ? 10 : 6;
    Replica replica(Spec(m, n), /*track_last_step=*/true, ThreeBlocks());
    const Matrix X0 = Random(m, n, 1);
    for (const RowBlock& rows : ThreeBlocks()) {
      ASSERT_EQ(*replica.Apply(BlockValue(3, X0, rows, wide)), ReplicaEvent::kReplaced);
    }
    ASSERT_EQ(WeightsChecksum(replica.value()), WeightsChecksum(X0));
    Matrix X1;
    const VersionUpdate whole = Step(4, X0, /*transposed=*/wide, 10, &X1);
    for (const RowBlock& rows : ThreeBlocks()) {
      EXPECT_EQ(*replica.Apply(BlockStep(whole, X1, rows, wide)), ReplicaEvent::kApplied)
          << "wide " << wide << " rows " << rows.begin;
    }
    EXPECT_EQ(replica.version(), 4);
    EXPECT_TRUE(replica.in_sync());
    EXPECT_EQ(WeightsChecksum(replica.value()), WeightsChecksum(X1)) << "wide " << wide;
    const LowRankStep& s = std::get<LowRankStep>(whole.content);
    MatrixD delta = s.P.cast<double>() * s.Q.cast<double>().transpose();
    if (wide) delta.transposeInPlace();
    const MatrixD expected = 0.99 * X0.cast<double>() - 0.05 * delta;
    EXPECT_LT(testing::RelativeError(replica.value().cast<double>(), expected), 1e-6);
    // The last step is tracked per block too: X1 - X0 in every block.
    Matrix out;
    replica.Extrapolate(1, &out);
    EXPECT_LT(testing::RelativeError(out.cast<double>(),
                                     2.0 * X1.cast<double>() - X0.cast<double>()),
              1e-6);
  }
}

// The replica holds a version once every block reached it: the minimum over the blocks.
TEST(SplitReplica, VersionIsTheMinimumOverTheBlocks) {
  const bool wide = false;
  Replica replica(Spec(10, 6), false, ThreeBlocks());
  const Matrix X0 = Random(10, 6, 2);
  EXPECT_FALSE(replica.has_value());
  ASSERT_EQ(*replica.Apply(BlockValue(5, X0, {0, 4}, wide)), ReplicaEvent::kReplaced);
  ASSERT_EQ(*replica.Apply(BlockValue(7, X0, {4, 7}, wide)), ReplicaEvent::kReplaced);
  EXPECT_FALSE(replica.has_value());  // the last block has nothing yet
  EXPECT_EQ(replica.version(), -1);
  ASSERT_EQ(*replica.Apply(BlockValue(6, X0, {7, 10}, wide)), ReplicaEvent::kReplaced);
  EXPECT_EQ(replica.version(), 5);
  EXPECT_EQ(replica.block_version({4, 7}), 7);
  EXPECT_EQ(replica.block_version({7, 10}), 6);
  // A step of the first block only moves it; the minimum follows.
  Matrix X1;
  const VersionUpdate whole = Step(6, X0, false, 20, &X1);
  ASSERT_EQ(*replica.Apply(BlockStep(whole, X1, {0, 4}, wide)), ReplicaEvent::kApplied);
  EXPECT_EQ(replica.version(), 6);
  // A step that skips a version of its block is a gap of that block alone.
  Matrix ignored;
  VersionUpdate skip = BlockStep(Step(9, X0, false, 30, &ignored), ignored, {4, 7}, wide);
  EXPECT_EQ(*replica.Apply(skip), ReplicaEvent::kGap);
  EXPECT_EQ(replica.block_version({4, 7}), 7);
}

// A block whose step does not reproduce its owner's checksum is out of sync, alone: the other
// blocks stay in sync, and a value of that block (a resync) repairs it.
TEST(SplitReplica, ChecksumMismatchOfOneBlockIsDetectedAndRepairedByItsValue) {
  for (bool wide : {false, true}) {
    const int64_t m = wide ? 6 : 10, n = wide ? 10 : 6;
    Replica replica(Spec(m, n), false, ThreeBlocks());
    const Matrix X0 = Random(m, n, 3);
    for (const RowBlock& rows : ThreeBlocks()) {
      ASSERT_TRUE(replica.Apply(BlockValue(1, X0, rows, wide)).ok());
    }
    Matrix X1;
    const VersionUpdate whole = Step(2, X0, wide, 40, &X1);
    VersionUpdate wrong = BlockStep(whole, X1, {4, 7}, wide);
    wrong.checksum ^= 1;
    EXPECT_EQ(*replica.Apply(wrong), ReplicaEvent::kChecksumMismatch);
    EXPECT_FALSE(replica.block_in_sync({4, 7}));
    EXPECT_TRUE(replica.block_in_sync({0, 4}));
    EXPECT_FALSE(replica.in_sync());
    ASSERT_TRUE(replica.SetBlock({4, 7}, 2, Slice(X1, {4, 7}, wide),
                                 WeightsChecksum(Slice(X1, {4, 7}, wide)))
                    .ok());
    EXPECT_TRUE(replica.in_sync());
    EXPECT_EQ(replica.version(), 1);  // the other blocks are still at 1
  }
}

// Updates and values that name no block change nothing.
TEST(SplitReplica, RefusesRowsThatAreNoBlock) {
  Replica replica(Spec(10, 6), false, ThreeBlocks());
  const Matrix X0 = Random(10, 6, 4);
  EXPECT_EQ(replica.Apply(BlockValue(1, X0, {0, 5}, false)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(replica.Apply(Full(1, X0)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(replica.Set(1, X0, WeightsChecksum(X0)).code(), absl::StatusCode::kInvalidArgument);
  const Matrix block = Slice(X0, {0, 4}, false);
  EXPECT_EQ(replica.SetBlock({0, 3}, 1, block, WeightsChecksum(block)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(replica.SetBlock({4, 7}, 1, block, WeightsChecksum(block)).code(),
            absl::StatusCode::kInvalidArgument);  // 4 rows for a block of 3
  EXPECT_EQ(replica.changes(), 0u);
  // A whole parameter refuses a block.
  Replica whole(Spec(10, 6));
  EXPECT_EQ(whole.Apply(BlockValue(1, X0, {0, 4}, false)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dion
