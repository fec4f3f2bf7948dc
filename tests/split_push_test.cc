// The worker's split pushes (worker/client/split_push.h): the owners' blocks of a contribution
// against an independent element-by-element slicing, and the follower-first commit order.
#include "worker/client/split_push.h"

#include <gtest/gtest.h>

#include <vector>

#include "common/rng.h"
#include "tests/reference.h"

namespace dion {
namespace {

ParamSpec Spec(int64_t m, int64_t n) {
  ParamSpec spec;
  spec.name = "w";
  spec.shape = {m, n};
  spec.optimizer = OptimizerKind::kDion;
  spec.split_owners = 3;
  return spec;
}

Matrix Random(int64_t m, int64_t n, uint64_t seed) {
  Matrix M(m, n);
  Rng(seed).FillNormal(M);
  return M;
}

Contribution Whole(int64_t m, int64_t n, int r) {
  Contribution c;
  c.worker_id = "w0";
  c.sequence = 17;
  c.parameter = "w";
  c.base_version = 5;
  c.sample_count = 32;
  c.loss = 1.25;
  c.payload = LowRankFactors{Random(m, r, 1), Random(n, r, 2)};
  return c;
}

// Rows [begin, end) of F, copied one element at a time.
Matrix RowsOf(const Matrix& F, RowBlock rows) {
  Matrix out(rows.size(), F.cols());
  for (int64_t i = 0; i < out.rows(); ++i) {
    for (int64_t j = 0; j < out.cols(); ++j) out(i, j) = F(rows.begin + i, j);
  }
  return out;
}

void ExpectSameHeader(const Contribution& block, const Contribution& whole) {
  EXPECT_EQ(block.worker_id, whole.worker_id);
  EXPECT_EQ(block.sequence, whole.sequence);
  EXPECT_EQ(block.parameter, whole.parameter);
  EXPECT_EQ(block.base_version, whole.base_version);
  EXPECT_EQ(block.sample_count, whole.sample_count);
  EXPECT_EQ(block.loss, whole.loss);
}

// Tall (rows >= cols): each owner takes P's rows of its block and R whole, so its P R^T is the
// block's rows of the whole P R^T.
TEST(ContributionBlock, TallCutsPByRows) {
  const Contribution whole = Whole(10, 6, 2);
  const LowRankFactors& f = whole.factors();
  const MatrixD full = f.P.cast<double>() * f.R.cast<double>().transpose();
  for (RowBlock rows : {RowBlock{0, 4}, RowBlock{4, 7}, RowBlock{7, 10}}) {
    const Contribution block = ContributionBlock(Spec(10, 6), whole, rows);
    ExpectSameHeader(block, whole);
    ASSERT_TRUE(block.is_low_rank());
    EXPECT_EQ(block.factors().P, RowsOf(f.P, rows));
    EXPECT_EQ(block.factors().R, f.R);
    const MatrixD part =
        block.factors().P.cast<double>() * block.factors().R.cast<double>().transpose();
    // Products of floats in double: equal up to the rounding of a 2-term sum.
    EXPECT_LT(testing::MaxRelativeError(part, full.middleRows(rows.begin, rows.size())), 1e-12);
  }
}

// Wide (rows < cols): the tall side is X's columns, so R (n x r) is cut and P goes whole.
TEST(ContributionBlock, WideCutsRByRows) {
  const Contribution whole = Whole(6, 10, 2);
  const LowRankFactors& f = whole.factors();
  const MatrixD full = f.P.cast<double>() * f.R.cast<double>().transpose();
  for (RowBlock rows : {RowBlock{0, 4}, RowBlock{4, 7}, RowBlock{7, 10}}) {
    const Contribution block = ContributionBlock(Spec(6, 10), whole, rows);
    ExpectSameHeader(block, whole);
    EXPECT_EQ(block.factors().P, f.P);
    EXPECT_EQ(block.factors().R, RowsOf(f.R, rows));
    const MatrixD part =
        block.factors().P.cast<double>() * block.factors().R.cast<double>().transpose();
    EXPECT_LT(testing::MaxRelativeError(part, full.middleCols(rows.begin, rows.size())), 1e-12);
  }
}

TEST(ContributionBlock, DenseGradientsAreCutOnTheTallSide) {
  Contribution whole = Whole(10, 6, 2);
  whole.payload = Random(10, 6, 3);
  const Contribution tall = ContributionBlock(Spec(10, 6), whole, {4, 7});
  EXPECT_EQ(tall.gradient(), RowsOf(whole.gradient(), {4, 7}));
  whole.payload = Random(6, 10, 4);
  const Contribution wide = ContributionBlock(Spec(6, 10), whole, {4, 7});
  const Matrix transposed = whole.gradient().transpose();
  EXPECT_EQ(wide.gradient(), Matrix(RowsOf(transposed, {4, 7}).transpose()));
}

std::vector<RowOwner> ThreeOwners() {
  return {{2, {0, 4}}, {0, {4, 7}}, {1, {7, 10}}};  // leader: shard 2
}

TEST(SplitPushes, SendsTheLeaderOnlyAfterEveryFollowerStaged) {
  SplitPushes pushes(ThreeOwners());
  EXPECT_EQ(pushes.OwnerIndex(2), 0);
  EXPECT_EQ(pushes.OwnerIndex(1), 2);
  EXPECT_EQ(pushes.OwnerIndex(5), -1);
  EXPECT_EQ(pushes.Begin(7), (std::vector<int>{1, 2}));
  EXPECT_FALSE(pushes.Awaits(7, 0));
  EXPECT_EQ(pushes.OnAnswer(7, 0, true), SplitPushes::Next::kIgnore);  // not sent to it yet
  EXPECT_EQ(pushes.OnAnswer(7, 2, true), SplitPushes::Next::kWait);
  EXPECT_EQ(pushes.OnAnswer(7, 2, true), SplitPushes::Next::kIgnore);  // answered already
  EXPECT_EQ(pushes.OnAnswer(7, 1, true), SplitPushes::Next::kSendLeader);
  EXPECT_TRUE(pushes.Awaits(7, 0));
  EXPECT_EQ(pushes.OnAnswer(7, 0, false), SplitPushes::Next::kSettle);  // whatever it says
  EXPECT_EQ(pushes.size(), 0u);
}

TEST(SplitPushes, AFollowerRefusalSettlesWithoutTheLeader) {
  SplitPushes pushes(ThreeOwners());
  pushes.Begin(7);
  EXPECT_EQ(pushes.OnAnswer(7, 1, true), SplitPushes::Next::kWait);
  EXPECT_EQ(pushes.OnAnswer(7, 2, false), SplitPushes::Next::kSettle);
  EXPECT_EQ(pushes.size(), 0u);
  EXPECT_FALSE(pushes.Awaits(7, 0));
  EXPECT_EQ(pushes.OnAnswer(7, 0, true), SplitPushes::Next::kIgnore);
}

TEST(SplitPushes, ResendsWhatEachOwnerStillOwesOncePerStream) {
  SplitPushes pushes(ThreeOwners());
  pushes.Begin(7);
  pushes.Begin(8);
  pushes.Queued(7, 1, 1);
  pushes.Queued(8, 1, 1);
  pushes.Queued(7, 2, 1);
  EXPECT_TRUE(pushes.ToResend(1, 1).empty());  // both queued on stream 1 already
  EXPECT_EQ(pushes.ToResend(1, 2), (std::vector<uint64_t>{7, 8}));
  EXPECT_EQ(pushes.OnAnswer(7, 1, true), SplitPushes::Next::kWait);
  EXPECT_EQ(pushes.ToResend(1, 2), (std::vector<uint64_t>{8}));  // 7 staged there
  EXPECT_TRUE(pushes.ToResend(0, 2).empty());  // the leader is owed nothing yet
  EXPECT_EQ(pushes.OnAnswer(7, 2, true), SplitPushes::Next::kSendLeader);
  EXPECT_EQ(pushes.ToResend(0, 2), (std::vector<uint64_t>{7}));
}

TEST(SplitPushes, OneOwnerIsItsOwnLeader) {
  SplitPushes pushes(std::vector<RowOwner>{{0, {0, 10}}});
  EXPECT_EQ(pushes.Begin(3), (std::vector<int>{0}));
  EXPECT_EQ(pushes.OnAnswer(3, 0, true), SplitPushes::Next::kSettle);
}

}  // namespace
}  // namespace dion
