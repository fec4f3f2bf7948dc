// The Dion step against an independent double-precision reference (tests/reference.cc:
// plain Householder QR, no BLAS), plus its guards and edge cases.
#include "common/dion.h"

#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "tests/reference.h"

namespace dion {
namespace {

using testing::GaussianD;
using testing::MaxRelativeError;
using testing::ReferenceDionConfig;
using testing::ReferenceDionState;
using testing::ReferenceDionStep;

MatrixD ToDouble(const Matrix& a) { return a.cast<double>(); }

struct Case {
  int64_t m, n;
  int rank;
  OrthoMethod method;
  double gradient_condition = 0;  // 0: Gaussian gradients; else singular values 1 .. 1/this
};

// The step's gradient number `step`. A square Gaussian matrix is occasionally nearly singular
// (cond(B Q) reached 1.2e6 at step 14 of the 32 x 32 full-rank case): then the last column of
// Q = colnorm(B^T P) is fixed by a direction that float32 rounding alone moves by ~1e-3, in
// any implementation. Where r = min(m, n) makes that direction matter, the test uses
// gradients of bounded condition so that it measures implementation error, not the problem's.
Matrix TestGradient(const Case& c, int step) {
  if (c.gradient_condition == 0) return GaussianD(c.m, c.n, 1000 + step).cast<float>();
  if (c.m >= c.n) {
    return testing::MatrixWithCondition(c.m, c.n, c.gradient_condition, 1000 + step).cast<float>();
  }
  return testing::MatrixWithCondition(c.n, c.m, c.gradient_condition, 1000 + step)
      .transpose()
      .cast<float>();
}

class DionMatchesReference : public ::testing::TestWithParam<Case> {};

// X and M after 1 and 20 steps agree with the double reference to 1e-5 relative (Frobenius
// norm), X also entry-wise to 2e-5 of its largest entry. Float32 rounding of one step is
// ~1e-7 relative and the QR's forward error grows like eps * cond(B Q), so 20 steps stay
// below the bound unless B Q is nearly singular (see TestGradient). P and Q are not
// compared: their column signs depend on the QR routine.
TEST_P(DionMatchesReference, XAndMAgreeAfterOneAndTwentySteps) {
  const Case c = GetParam();
  DionConfig config;
  config.lr = 0.05;  // large enough that the update dominates the weights' rounding
  config.ortho.method = c.method;
  ReferenceDionConfig ref_config;
  ref_config.lr = config.lr;

  DionState state = InitDionState(c.m, c.n, c.rank, /*seed=*/42);
  Matrix X = GaussianD(c.m, c.n, 1, 0.1).cast<float>();
  ReferenceDionState ref{ToDouble(state.M), ToDouble(state.Q)};
  MatrixD X_ref = ToDouble(X);

  for (int step = 1; step <= 20; ++step) {
    const Matrix G = TestGradient(c, step);
    auto result = DionStep(X, G, state, config);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE(result->applied);
    ReferenceDionStep(X_ref, ToDouble(G), ref, ref_config);
    if (step == 1 || step == 20) {
      EXPECT_LE(testing::RelativeError(ToDouble(X), X_ref), 1e-5) << "X after step " << step;
      EXPECT_LE(testing::RelativeError(ToDouble(state.M), ref.M), 1e-5)
          << "M after step " << step;
      // Entry-wise too, with the same bound but relative to the largest entry.
      EXPECT_LE(MaxRelativeError(ToDouble(X), X_ref), 2e-5) << "X after step " << step;
    }
  }
  EXPECT_TRUE(X.allFinite() && state.M.allFinite() && state.Q.allFinite());
  EXPECT_EQ(state.step, 20);
}

INSTANTIATE_TEST_SUITE_P(
    ShapesRanksMethods, DionMatchesReference,
    ::testing::Values(
        // square: rank 1, r < min, r = min
        Case{32, 32, 1, OrthoMethod::kAuto}, Case{32, 32, 8, OrthoMethod::kAuto},
        Case{32, 32, 32, OrthoMethod::kAuto, 4}, Case{32, 32, 32, OrthoMethod::kQr, 4},
        // tall
        Case{48, 20, 1, OrthoMethod::kAuto}, Case{48, 20, 5, OrthoMethod::kAuto},
        Case{48, 20, 20, OrthoMethod::kAuto}, Case{48, 20, 20, OrthoMethod::kAuto, 10},
        // wide: Dion runs on X^T, lr scale stays sqrt(m / n) of X
        Case{20, 48, 1, OrthoMethod::kAuto}, Case{20, 48, 5, OrthoMethod::kAuto},
        Case{20, 48, 20, OrthoMethod::kAuto}, Case{20, 48, 20, OrthoMethod::kAuto, 10},
        // every explicit method on a non-trivial shape
        Case{40, 24, 6, OrthoMethod::kQr}, Case{40, 24, 6, OrthoMethod::kCqr},
        Case{40, 24, 6, OrthoMethod::kCqr2}, Case{40, 24, 6, OrthoMethod::kRcqr},
        Case{24, 40, 6, OrthoMethod::kRcqr}),
    [](const auto& info) {
      const Case& c = info.param;
      return absl::StrCat(c.m, "x", c.n, "_r", c.rank, "_", OrthoMethodName(c.method),
                          c.gradient_condition > 0 ? "_conditioned" : "");
    });

TEST(DionStep, PowerIterationsMatchReference) {
  DionConfig config;
  config.lr = 0.05;
  config.power_iters = 3;
  ReferenceDionConfig ref_config;
  ref_config.lr = config.lr;
  ref_config.power_iters = 3;
  DionState state = InitDionState(30, 18, 4, 7);
  Matrix X = GaussianD(30, 18, 2, 0.1).cast<float>();
  ReferenceDionState ref{ToDouble(state.M), ToDouble(state.Q)};
  MatrixD X_ref = ToDouble(X);
  for (int step = 0; step < 5; ++step) {
    const Matrix G = GaussianD(30, 18, 500 + step).cast<float>();
    ASSERT_TRUE(DionStep(X, G, state, config).ok());
    ReferenceDionStep(X_ref, ToDouble(G), ref, ref_config);
  }
  // Same 1e-5 bound as above (see DionMatchesReference).
  EXPECT_LE(MaxRelativeError(ToDouble(X), X_ref), 1e-5);
  EXPECT_LE(MaxRelativeError(ToDouble(state.M), ref.M), 1e-5);
}

TEST(DionStep, ZeroGradientOnlyDecaysAndKeepsQ) {
  DionConfig config;
  DionState state = InitDionState(16, 12, 3, 1);
  const Matrix Q_before = state.Q;
  const Matrix X0 = GaussianD(16, 12, 3).cast<float>();
  Matrix X = X0;
  auto result = DionStep(X, Matrix::Zero(16, 12), state, config);
  ASSERT_TRUE(result.ok());
  EXPECT_FALSE(result->applied);
  EXPECT_TRUE((state.Q.array() == Q_before.array()).all()) << "Q must be left unchanged";
  EXPECT_TRUE((state.M.array() == 0.0f).all());
  const float decay = static_cast<float>(1 - config.lr * config.weight_decay);
  EXPECT_TRUE(X.isApprox(X0 * decay, 1e-7f));
  EXPECT_TRUE(result->P.allFinite() && (result->P.array() == 0.0f).all());
}

TEST(DionStep, RefusesNonFiniteGradientAndChangesNothing) {
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    DionConfig config;
    DionState state = InitDionState(10, 6, 2, 1);
    Matrix X = GaussianD(10, 6, 4).cast<float>();
    ASSERT_TRUE(DionStep(X, GaussianD(10, 6, 5).cast<float>(), state, config).ok());
    const Matrix X_before = X, M_before = state.M, Q_before = state.Q;
    Matrix G = GaussianD(10, 6, 6).cast<float>();
    G(3, 2) = bad;
    auto result = DionStep(X, G, state, config);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE((X.array() == X_before.array()).all());
    EXPECT_TRUE((state.M.array() == M_before.array()).all());
    EXPECT_TRUE((state.Q.array() == Q_before.array()).all());
    EXPECT_EQ(state.step, 1);
  }
}

// A gradient large enough that the finiteness check and B = M + G run by row blocks on two
// threads: a bad value in either thread's rows refuses the step before any row of M changed.
TEST(DionStep, RefusesNonFiniteGradientInAnyThreadsRows) {
  const int threads_before = BlasThreads();
  SetBlasThreads(2).IgnoreError();  // the check splits rows whatever OpenBLAS's workers do
  const int64_t m = 2048, n = 1024;  // 2 * 2^20 elements: two row blocks
  DionConfig config;
  DionState state = InitDionState(m, n, 4, 1);
  state.M = GaussianD(m, n, 7).cast<float>();
  Matrix X = GaussianD(m, n, 8).cast<float>();
  const Matrix X_before = X, M_before = state.M;
  Matrix G = GaussianD(m, n, 9).cast<float>();
  for (int64_t bad_row : {int64_t{0}, m / 2 - 1, m / 2, m - 1}) {
    const float good = G(bad_row, n - 1);
    G(bad_row, n - 1) = std::nanf("");
    auto result = DionStep(X, G, state, config);
    G(bad_row, n - 1) = good;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << bad_row;
    EXPECT_TRUE((X.array() == X_before.array()).all()) << bad_row;
    EXPECT_TRUE((state.M.array() == M_before.array()).all()) << bad_row;
    EXPECT_EQ(state.step, 0);
  }
  SetBlasThreads(threads_before).IgnoreError();
}

TEST(DionStep, RefusesMismatchedShapesAndState) {
  DionConfig config;
  DionState state = InitDionState(8, 6, 2, 1);
  Matrix X = Matrix::Zero(8, 6);
  EXPECT_EQ(DionStep(X, Matrix::Zero(6, 8), state, config).status().code(),
            absl::StatusCode::kInvalidArgument);
  DionState too_high_rank = InitDionState(8, 6, 7, 1);  // rank above min(m, n)
  EXPECT_EQ(DionStep(X, Matrix::Ones(8, 6), too_high_rank, config).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE((too_high_rank.M.array() == 0.0f).all());
}

// 1 x n and m x 1: rank 1 is the whole matrix, P is a unit vector; the step stays finite and
// matches the reference.
TEST(DionStep, VectorShapedMatricesMatchReference) {
  for (auto [m, n] : {std::pair<int64_t, int64_t>{1, 17}, {23, 1}, {1, 1}}) {
    DionConfig config;
    config.lr = 0.05;
    ReferenceDionConfig ref_config;
    ref_config.lr = config.lr;
    DionState state = InitDionState(m, n, DionRank(m, n, 0.25, 1), 9);
    ASSERT_EQ(state.Q.cols(), 1);
    Matrix X = GaussianD(m, n, 8, 0.1).cast<float>();
    ReferenceDionState ref{ToDouble(state.M), ToDouble(state.Q)};
    MatrixD X_ref = ToDouble(X);
    for (int step = 0; step < 5; ++step) {
      const Matrix G = GaussianD(m, n, 800 + step).cast<float>();
      ASSERT_TRUE(DionStep(X, G, state, config).ok());
      ReferenceDionStep(X_ref, ToDouble(G), ref, ref_config);
    }
    EXPECT_TRUE(X.allFinite() && state.M.allFinite() && state.Q.allFinite());
    EXPECT_LE(MaxRelativeError(ToDouble(X), X_ref), 1e-5) << m << "x" << n;
    EXPECT_LE(MaxRelativeError(ToDouble(state.M), ref.M), 1e-5) << m << "x" << n;
  }
}

TEST(DionStep, ReplicaApplyingTheStepReproducesXExactly) {
  for (auto [m, n] : {std::pair<int64_t, int64_t>{24, 16}, {16, 24}}) {
    DionConfig config;
    DionState state = InitDionState(m, n, 4, 3);
    Matrix X = GaussianD(m, n, 1).cast<float>();
    for (int step = 0; step < 3; ++step) {
      Matrix replica = X;
      auto result = DionStep(X, GaussianD(m, n, 50 + step).cast<float>(), state, config);
      ASSERT_TRUE(result.ok());
      ApplyLowRankUpdate(replica, result->decay, result->scale, result->P, result->Q,
                         result->transposed);
      EXPECT_TRUE((replica.array() == X.array()).all()) << m << "x" << n << " step " << step;
    }
  }
}

TEST(DionStep, ReportsOrthogonalityErrorWhenAsked) {
  DionConfig config;
  DionState state = InitDionState(64, 32, 8, 3);
  Matrix X = Matrix::Zero(64, 32);
  auto result = DionStep(X, GaussianD(64, 32, 1).cast<float>(), state, config, true);
  ASSERT_TRUE(result.ok());
  EXPECT_GE(result->ortho_error, 0.0);
  EXPECT_LE(result->ortho_error, 1e-5);
}

TEST(DionRank, RoundsUpToMultipleAndCaps) {
  EXPECT_EQ(DionRank(1024, 1024, 0.25, 1), 256);
  EXPECT_EQ(DionRank(4096, 4096, 1.0 / 16, 1), 256);
  EXPECT_EQ(DionRank(1000, 300, 1.0 / 16, 8), 24);  // 18.75 -> 3 units of 8
  EXPECT_EQ(DionRank(300, 1000, 1.0 / 16, 8), 24);  // the short side decides
  EXPECT_EQ(DionRank(100, 50, 1.0, 1), 50);
  EXPECT_EQ(DionRank(100, 50, 0.9, 128), 50);       // capped at min(m, n)
  EXPECT_EQ(DionRank(100, 50, 1e-6, 1), 1);         // at least 1
  EXPECT_EQ(DionRank(1, 17, 0.25, 1), 1);
}

TEST(DionConfig, ValidationNamesTheField) {
  EXPECT_TRUE(ValidateDionConfig(DionConfig{}).ok());
  DionConfig c;
  c.mu = 1.0;
  EXPECT_NE(ValidateDionConfig(c).message().find("mu"), absl::string_view::npos);
  c = {};
  c.rank_fraction = 0;
  EXPECT_NE(ValidateDionConfig(c).message().find("rank_fraction"), absl::string_view::npos);
  c = {};
  c.lr = std::nan("");
  EXPECT_EQ(ValidateDionConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c = {};
  c.power_iters = 0;
  EXPECT_NE(ValidateDionConfig(c).message().find("power_iters"), absl::string_view::npos);
}

}  // namespace
}  // namespace dion
