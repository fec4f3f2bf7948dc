// The Dion step of a matrix split by rows over several owners (DionRowStepFromMomentum,
// OrthonormalizeRows) against the same step on the whole matrix, which dion_test checks
// against the double-precision reference; the split step once against that reference too.
// The owners run on their own threads and sum through an in-process LocalReduceGroup.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dion.h"
#include "common/local_row_reduce.h"
#include "common/orthonormalize.h"
#include "common/row_reduce.h"
#include "tests/reference.h"

namespace dion {
namespace {

using testing::GaussianD;
using testing::MaxRelativeError;
using testing::RelativeError;

MatrixD ToDouble(const Matrix& a) { return a.cast<double>(); }

// Runs body(owner) on one thread per owner and waits for all.
void OnEveryOwner(int owners, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  for (int i = 0; i < owners; ++i) threads.emplace_back(body, i);
  for (std::thread& t : threads) t.join();
}

// Rows `block` of the tall side of A (rows of A when rows >= cols, else columns).
Matrix TallBlock(const Matrix& A, RowBlock block, bool transposed) {
  if (transposed) return A.middleCols(block.begin, block.size());
  return A.middleRows(block.begin, block.size());
}

// Q's columns are defined up to sign only in principle; the split and whole steps run the
// same algorithm and agree in sign, but the comparison should not depend on it.
MatrixD AlignColumnSigns(const MatrixD& a, const MatrixD& reference) {
  MatrixD aligned = a;
  for (Eigen::Index j = 0; j < a.cols(); ++j) {
    if (a.col(j).dot(reference.col(j)) < 0) aligned.col(j) *= -1.0;
  }
  return aligned;
}

TEST(SplitRowBlock, BalancedContiguousAndCovering) {
  const int64_t rows = 10;
  const int owners = 3;
  std::vector<int64_t> sizes;
  int64_t next = 0;
  for (int i = 0; i < owners; ++i) {
    const RowBlock block = SplitRowBlock(rows, owners, i);
    EXPECT_EQ(block.begin, next) << "block " << i;
    sizes.push_back(block.size());
    next = block.end;
  }
  EXPECT_EQ(next, rows);
  EXPECT_EQ(sizes, (std::vector<int64_t>{4, 3, 3}));
  EXPECT_EQ(SplitRowBlock(5, 5, 4), (RowBlock{4, 5}));
}

struct OrthoCase {
  OrthoMethod method;
  double condition;
};

class OrthonormalizeRowsMatchesWhole : public ::testing::TestWithParam<OrthoCase> {};

// The split methods give the rows of what the whole-matrix method gives, with the same
// method and fallbacks. Up to cond 100 the results agree to 1e-5 relative (the Grams are
// summed in another order: rounding only). Beyond, the orthonormal factor itself moves by
// ~u cond(P) under rounding in any implementation, so what is compared is that both are
// orthonormal and span the same space: P0 is in the span of the split result to 1e-5.
TEST_P(OrthonormalizeRowsMatchesWhole, OwnersHoldTheRowsOfTheWholeResult) {
  const OrthoCase c = GetParam();
  const int64_t m = 96, r = 16;
  const int owners = 3;
  const Matrix P0 = testing::MatrixWithCondition(m, r, c.condition, 7).cast<float>();
  OrthoOptions options;
  options.method = c.method;
  options.seed = 11;
  Matrix whole = P0;
  const OrthoReport whole_report = Orthonormalize(whole, options);
  ASSERT_TRUE(whole_report.ok);

  LocalReduceGroup group(owners);
  std::vector<Matrix> blocks(owners);
  std::vector<absl::StatusOr<OrthoReport>> reports(owners, absl::UnknownError("not run"));
  OnEveryOwner(owners, [&](int i) {
    const RowBlock block = SplitRowBlock(m, owners, i);
    blocks[i] = P0.middleRows(block.begin, block.size());
    reports[i] = OrthonormalizeRows(blocks[i], block, m, options, group.owner(i));
  });
  Matrix assembled(m, r);
  for (int i = 0; i < owners; ++i) {
    ASSERT_TRUE(reports[i].ok()) << reports[i].status();
    EXPECT_TRUE(reports[i]->ok);
    EXPECT_EQ(reports[i]->used, whole_report.used) << "owner " << i;
    EXPECT_EQ(reports[i]->fallbacks, whole_report.fallbacks) << "owner " << i;
    const RowBlock block = SplitRowBlock(m, owners, i);
    assembled.middleRows(block.begin, block.size()) = blocks[i];
  }
  EXPECT_LE(OrthogonalityError(assembled), 1e-5);
  if (c.condition <= 100) {
    EXPECT_LE(MaxRelativeError(ToDouble(assembled), ToDouble(whole)), 1e-5);
  } else {
    const MatrixD A = ToDouble(assembled), P = ToDouble(P0);
    EXPECT_LE(RelativeError(A * (A.transpose() * P), P), 1e-5) << "P0 outside span(result)";
  }
}

INSTANTIATE_TEST_SUITE_P(
    SplitMethods, OrthonormalizeRowsMatchesWhole,
    ::testing::Values(OrthoCase{OrthoMethod::kCqr, 2}, OrthoCase{OrthoMethod::kCqr2, 100},
                      OrthoCase{OrthoMethod::kRcqr, 1e4}, OrthoCase{OrthoMethod::kAuto, 2},
                      OrthoCase{OrthoMethod::kAuto, 100},
                      // cond 1e5: Cholesky QR cannot be trusted; auto falls back to rcqr
                      OrthoCase{OrthoMethod::kAuto, 1e5}),
    [](const auto& info) {
      return absl::StrCat(OrthoMethodName(info.param.method), "_cond",
                          static_cast<int64_t>(info.param.condition));
    });

TEST(OrthonormalizeRows, RefusesHouseholderAndLeavesPUnchanged) {
  LocalReduceGroup group(1);
  Matrix P = GaussianD(12, 3, 5).cast<float>();
  const Matrix before = P;
  OrthoOptions options;
  options.method = OrthoMethod::kQr;
  const absl::StatusOr<OrthoReport> report =
      OrthonormalizeRows(P, RowBlock{0, 12}, 12, options, group.owner(0));
  ASSERT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("expected one of auto, cqr, cqr2, rcqr"),
            std::string::npos)
      << report.status();
  EXPECT_EQ(P, before);
  EXPECT_EQ(group.rounds(), 0);
}

struct StepCase {
  int64_t m, n;
  int rank;
  int owners;
  OrthoMethod method;
};

// The whole step and the split step from the same start, on the same gradients.
class SplitStepMatchesWhole : public ::testing::TestWithParam<StepCase> {};

// After 1 and 20 steps, X, M and Q of the owners assembled equal the whole step's to 1e-5
// relative (Frobenius; X also entry-wise to 2e-5 of its largest entry), Q up to column sign.
TEST_P(SplitStepMatchesWhole, XMAndQAgreeAfterOneAndTwentySteps) {
  const StepCase c = GetParam();
  const bool transposed = DionTransposed(c.m, c.n);
  const int64_t tall = std::max(c.m, c.n);
  DionConfig config;
  config.lr = 0.05;
  config.ortho.method = c.method;
  DionState whole_state = InitDionState(c.m, c.n, c.rank, 42);
  Matrix whole_X = GaussianD(c.m, c.n, 1, 0.1).cast<float>();

  LocalReduceGroup group(c.owners);
  std::vector<RowBlock> blocks;
  std::vector<DionState> states;
  std::vector<Matrix> Xs;
  for (int i = 0; i < c.owners; ++i) {
    blocks.push_back(SplitRowBlock(tall, c.owners, i));
    states.push_back(InitDionRowState(c.m, c.n, blocks[i], c.rank, 42));
    ASSERT_EQ(states[i].Q, whole_state.Q) << "owners start from the whole step's Q";
    Xs.push_back(TallBlock(whole_X, blocks[i], transposed));
  }
  for (int step = 1; step <= 20; ++step) {
    const Matrix G = GaussianD(c.m, c.n, 1000 + step).cast<float>();
    whole_state.M += G;
    const DionStepResult whole = DionStepFromMomentum(whole_X, whole_state, config);
    ASSERT_TRUE(whole.applied);
    std::vector<absl::StatusOr<DionStepResult>> results(c.owners, absl::UnknownError(""));
    OnEveryOwner(c.owners, [&](int i) {
      states[i].M += TallBlock(G, blocks[i], transposed);
      results[i] = DionRowStepFromMomentum(Xs[i], states[i], config, c.m, c.n, blocks[i],
                                           group.owner(i));
    });
    if (step != 1 && step != 20) continue;
    Matrix X(c.m, c.n), M(c.m, c.n);
    for (int i = 0; i < c.owners; ++i) {
      ASSERT_TRUE(results[i].ok()) << results[i].status();
      ASSERT_TRUE(results[i]->applied) << "owner " << i;
      EXPECT_EQ(results[i]->Q, results[0]->Q) << "every owner holds the same Q";
      if (transposed) {
        X.middleCols(blocks[i].begin, blocks[i].size()) = Xs[i];
        M.middleCols(blocks[i].begin, blocks[i].size()) = states[i].M;
      } else {
        X.middleRows(blocks[i].begin, blocks[i].size()) = Xs[i];
        M.middleRows(blocks[i].begin, blocks[i].size()) = states[i].M;
      }
    }
    const MatrixD whole_Q = ToDouble(whole_state.Q);
    EXPECT_LE(RelativeError(ToDouble(X), ToDouble(whole_X)), 1e-5) << "X after " << step;
    EXPECT_LE(MaxRelativeError(ToDouble(X), ToDouble(whole_X)), 2e-5) << "X after " << step;
    EXPECT_LE(RelativeError(ToDouble(M), ToDouble(whole_state.M)), 1e-5) << "M after " << step;
    EXPECT_LE(RelativeError(AlignColumnSigns(ToDouble(states[0].Q), whole_Q), whole_Q), 1e-5)
        << "Q after " << step;
    EXPECT_EQ(states[0].step, step);
  }
}

INSTANTIATE_TEST_SUITE_P(
    SplitShapes, SplitStepMatchesWhole,
    ::testing::Values(
        // tall: rows split; wide: Dion runs on X^T, so the columns of X are split
        StepCase{96, 64, 16, 3, OrthoMethod::kAuto}, StepCase{64, 96, 16, 3, OrthoMethod::kAuto},
        StepCase{96, 64, 16, 3, OrthoMethod::kCqr}, StepCase{64, 96, 16, 3, OrthoMethod::kCqr},
        StepCase{96, 64, 16, 3, OrthoMethod::kCqr2}, StepCase{64, 96, 16, 3, OrthoMethod::kCqr2},
        StepCase{96, 64, 16, 3, OrthoMethod::kRcqr}, StepCase{64, 96, 16, 3, OrthoMethod::kRcqr},
        StepCase{96, 64, 16, 2, OrthoMethod::kAuto}, StepCase{64, 96, 16, 2, OrthoMethod::kAuto},
        // uneven blocks, rank 1
        StepCase{100, 30, 1, 3, OrthoMethod::kAuto}),
    [](const auto& info) {
      const StepCase& c = info.param;
      return absl::StrCat(c.m, "x", c.n, "_r", c.rank, "_over", c.owners, "_",
                          OrthoMethodName(c.method));
    });

// Independent of the whole step: the split step against the double-precision reference.
TEST(SplitStep, MatchesTheDoubleReference) {
  const int64_t m = 64, n = 96;  // wide: the transposed case
  const int owners = 3, rank = 8;
  DionConfig config;
  config.lr = 0.05;
  testing::ReferenceDionConfig ref_config;
  ref_config.lr = config.lr;
  LocalReduceGroup group(owners);
  std::vector<RowBlock> blocks;
  std::vector<DionState> states;
  std::vector<Matrix> Xs;
  const Matrix X0 = GaussianD(m, n, 1, 0.1).cast<float>();
  for (int i = 0; i < owners; ++i) {
    blocks.push_back(SplitRowBlock(n, owners, i));
    states.push_back(InitDionRowState(m, n, blocks[i], rank, 42));
    Xs.push_back(X0.middleCols(blocks[i].begin, blocks[i].size()));
  }
  testing::ReferenceDionState ref{MatrixD::Zero(m, n), ToDouble(states[0].Q)};
  MatrixD X_ref = ToDouble(X0);
  for (int step = 1; step <= 5; ++step) {
    const Matrix G = GaussianD(m, n, 500 + step).cast<float>();
    testing::ReferenceDionStep(X_ref, ToDouble(G), ref, ref_config);
    OnEveryOwner(owners, [&](int i) {
      states[i].M += G.middleCols(blocks[i].begin, blocks[i].size());
      ASSERT_TRUE(DionRowStepFromMomentum(Xs[i], states[i], config, m, n, blocks[i],
                                          group.owner(i))
                      .ok());
    });
  }
  Matrix X(m, n);
  for (int i = 0; i < owners; ++i) X.middleCols(blocks[i].begin, blocks[i].size()) = Xs[i];
  EXPECT_LE(RelativeError(ToDouble(X), X_ref), 1e-5);
}

// A reduction failing mid-step leaves every owner as it was (M still holding B), and the
// retried step equals a step that never failed.
TEST(SplitStep, AFailedReductionChangesNothingAndTheRetryMatches) {
  const int64_t m = 60, n = 24;
  const int owners = 3, rank = 6;
  DionConfig config;
  config.lr = 0.05;
  config.ortho.method = OrthoMethod::kCqr2;  // reductions: gram, gram, R
  const Matrix X0 = GaussianD(m, n, 3, 0.1).cast<float>();
  const Matrix G = GaussianD(m, n, 4).cast<float>();

  // Reference: the same owners, no failure.
  std::vector<Matrix> expected_X(owners);
  {
    LocalReduceGroup group(owners);
    OnEveryOwner(owners, [&](int i) {
      const RowBlock block = SplitRowBlock(m, owners, i);
      DionState state = InitDionRowState(m, n, block, rank, 9);
      state.M += G.middleRows(block.begin, block.size());
      expected_X[i] = X0.middleRows(block.begin, block.size());
      ASSERT_TRUE(
          DionRowStepFromMomentum(expected_X[i], state, config, m, n, block, group.owner(i))
              .ok());
    });
  }
  for (int64_t fail_round : {0, 1, 2}) {
    LocalReduceGroup group(owners);
    group.FailRound(fail_round, absl::DeadlineExceededError("peer 2 did not answer"));
    OnEveryOwner(owners, [&](int i) {
      const RowBlock block = SplitRowBlock(m, owners, i);
      DionState state = InitDionRowState(m, n, block, rank, 9);
      state.M += G.middleRows(block.begin, block.size());
      const DionState before = state;
      Matrix X = X0.middleRows(block.begin, block.size());
      const absl::StatusOr<DionStepResult> failed =
          DionRowStepFromMomentum(X, state, config, m, n, block, group.owner(i));
      EXPECT_EQ(failed.status().code(), absl::StatusCode::kDeadlineExceeded)
          << "round " << fail_round << " owner " << i;
      EXPECT_EQ(X, X0.middleRows(block.begin, block.size()));
      EXPECT_EQ(state.M, before.M);
      EXPECT_EQ(state.Q, before.Q);
      EXPECT_EQ(state.step, 0);
      const absl::StatusOr<DionStepResult> retried =
          DionRowStepFromMomentum(X, state, config, m, n, block, group.owner(i));
      ASSERT_TRUE(retried.ok()) << retried.status();
      EXPECT_EQ(X, expected_X[i]) << "round " << fail_round << " owner " << i;
    });
  }
}

// B = 0 on every owner: the reduced orthonormalization fails on all of them alike, and
// the step only decays X, as the whole step does.
TEST(SplitStep, ZeroMomentumOnlyDecaysOnEveryOwner) {
  const int64_t m = 30, n = 12;
  const int owners = 2;
  DionConfig config;
  LocalReduceGroup group(owners);
  OnEveryOwner(owners, [&](int i) {
    const RowBlock block = SplitRowBlock(m, owners, i);
    DionState state = InitDionRowState(m, n, block, 3, 1);
    const Matrix Q0 = state.Q;
    Matrix X = GaussianD(block.size(), n, 20 + i).cast<float>();
    const Matrix X0 = X;
    const absl::StatusOr<DionStepResult> result =
        DionRowStepFromMomentum(X, state, config, m, n, block, group.owner(i));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_FALSE(result->applied);
    EXPECT_TRUE(X.isApprox(X0 * result->decay, 1e-7f));
    EXPECT_EQ(state.Q, Q0);
  });
}

TEST(SplitStep, RefusesABlockThatDoesNotFitItsState) {
  LocalReduceGroup group(1);
  DionConfig config;
  DionState state = InitDionRowState(40, 10, RowBlock{0, 20}, 2, 1);
  Matrix X = Matrix::Zero(19, 10);  // one row short of the block
  const DionState before = state;
  const absl::StatusOr<DionStepResult> result =
      DionRowStepFromMomentum(X, state, config, 40, 10, RowBlock{0, 20}, group.owner(0));
  ASSERT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(result.status().message().find("X and M [20, 10]"), std::string::npos)
      << result.status();
  EXPECT_EQ(state.M, before.M);
  EXPECT_EQ(group.rounds(), 0);
}

// The orthogonality error measured over the owners equals the whole P's within the float
// rounding of the reduced deviations (~1e-7).
TEST(OrthogonalityErrorRows, MatchesTheWholeMatrix) {
  const int64_t m = 90, r = 10;
  const int owners = 3;
  Matrix P = GaussianD(m, r, 8).cast<float>();
  Orthonormalize(P);
  P.col(0) *= 1.0f + 3e-6f;  // a known deviation: ||p_0||^2 - 1 ~ 6e-6
  const double whole = OrthogonalityError(P);
  LocalReduceGroup group(owners);
  std::vector<absl::StatusOr<double>> split(owners, absl::UnknownError(""));
  OnEveryOwner(owners, [&](int i) {
    const RowBlock block = SplitRowBlock(m, owners, i);
    split[i] = OrthogonalityErrorRows(P.middleRows(block.begin, block.size()), block, m,
                                      group.owner(i));
  });
  for (int i = 0; i < owners; ++i) {
    ASSERT_TRUE(split[i].ok()) << split[i].status();
    EXPECT_NEAR(*split[i], whole, 2e-7) << "owner " << i;
  }
  EXPECT_GT(whole, 5e-6);
}

}  // namespace
}  // namespace dion
