// AdamW and Lion against their formulas (docs/algorithm.md, "Other optimizers on the same
// server"), evaluated in double in the test.
#include "common/elementwise_optimizers.h"

#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <initializer_list>
#include <limits>

#include "absl/strings/str_cat.h"
#include "tests/reference.h"

namespace dion {
namespace {

using testing::GaussianD;

// Each float step rounds X, m and v a handful of times (relative ~6e-8 each); over three
// steps with |X| ~ 1 the drift from the double formulas stays far below 1e-6.
constexpr double kStepTolerance = 1e-6;

double MaxAbsDiff(const Matrix& a, const MatrixD& b) {
  return (a.cast<double>() - b).cwiseAbs().maxCoeff();
}

bool BitIdentical(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::equal(a.data(), a.data() + a.size(), b.data());
}

// ---------------------------------------------------------------- AdamW

struct ReferenceAdamW {
  MatrixD m, v;
  int t = 0;
};

// The AdamW formula of docs/algorithm.md, literally, in double.
void ReferenceAdamWStep(MatrixD& X, const MatrixD& G, ReferenceAdamW& s, const AdamWConfig& c) {
  s.t += 1;
  for (Eigen::Index i = 0; i < X.rows(); ++i) {
    for (Eigen::Index j = 0; j < X.cols(); ++j) {
      const double g = G(i, j);
      s.m(i, j) = c.beta1 * s.m(i, j) + (1 - c.beta1) * g;
      s.v(i, j) = c.beta2 * s.v(i, j) + (1 - c.beta2) * g * g;
      const double m_hat = s.m(i, j) / (1 - std::pow(c.beta1, s.t));
      const double v_hat = s.v(i, j) / (1 - std::pow(c.beta2, s.t));
      X(i, j) = X(i, j) * (1 - c.lr * c.weight_decay) - c.lr * m_hat / (std::sqrt(v_hat) + c.eps);
    }
  }
}

TEST(AdamW, ThreeStepsMatchDoubleFormulas) {
  AdamWConfig config;
  config.lr = 0.05;
  config.weight_decay = 0.1;
  const int rows = 5, cols = 7;
  MatrixD X_ref = GaussianD(rows, cols, 11);
  ReferenceAdamW ref{MatrixD::Zero(rows, cols), MatrixD::Zero(rows, cols)};
  Matrix X = X_ref.cast<float>();
  AdamWState state = InitAdamWState(rows, cols);
  for (int step = 0; step < 3; ++step) {
    const MatrixD G = GaussianD(rows, cols, 100 + step);
    ASSERT_TRUE(AdamWStep(X, G.cast<float>(), state, config).ok());
    ReferenceAdamWStep(X_ref, G.cast<float>().cast<double>(), ref, config);
  }
  EXPECT_EQ(state.step, 3);
  EXPECT_LE(MaxAbsDiff(X, X_ref), kStepTolerance);
  EXPECT_LE(MaxAbsDiff(state.m, ref.m), kStepTolerance);
  EXPECT_LE(MaxAbsDiff(state.v, ref.v), kStepTolerance);
}

// With bias correction the first step has m_hat = g and v_hat = g^2, so every coordinate
// moves by lr (times g / (|g| + eps) ~ sign g). Without it the move would be
// lr (1 - b1) / sqrt(1 - b2) = 0.447 lr for the defaults.
TEST(AdamW, BiasCorrectionMakesFirstStepMoveEachCoordinateByLr) {
  AdamWConfig config;
  config.lr = 0.01;
  config.weight_decay = 0.0;
  const MatrixD X0 = GaussianD(4, 6, 21);
  const MatrixD G = GaussianD(4, 6, 22);
  Matrix X = X0.cast<float>();
  AdamWState state = InitAdamWState(4, 6);
  ASSERT_TRUE(AdamWStep(X, G.cast<float>(), state, config).ok());
  const MatrixD moved = X0.cast<float>().cast<double>() - X.cast<double>();
  for (Eigen::Index i = 0; i < G.size(); ++i) {
    // |g| >= ~1e-3 for these Gaussians, so eps / |g| <= 1e-5; float rounding of X ~ 1e-7.
    EXPECT_NEAR(moved.data()[i], config.lr * (G.data()[i] > 0 ? 1 : -1), 2e-7 + 1e-5 * config.lr);
  }
}

// A zero gradient leaves m = v = 0, so the only change is the decoupled decay X (1 - lr wd).
TEST(AdamW, ZeroGradientOnlyAppliesDecoupledWeightDecay) {
  AdamWConfig config;
  config.lr = 0.1;
  config.weight_decay = 0.5;
  const MatrixD X0 = GaussianD(3, 4, 31);
  Matrix X = X0.cast<float>();
  AdamWState state = InitAdamWState(3, 4);
  ASSERT_TRUE(AdamWStep(X, Matrix::Zero(3, 4), state, config).ok());
  // One float multiplication: relative error <= 2^-24 plus the rounding of 0.95 to float.
  EXPECT_LE(MaxAbsDiff(X, 0.95 * X0), 2e-7);
  EXPECT_TRUE(state.m.isZero(0.0));
  EXPECT_TRUE(state.v.isZero(0.0));
}

TEST(AdamW, StepsAViewOfALargerMatrixAndNothingAround) {
  AdamWConfig config;
  const MatrixD big0 = GaussianD(6, 8, 41);
  Matrix big = big0.cast<float>();
  const MatrixD G = GaussianD(3, 4, 42);
  AdamWState state = InitAdamWState(3, 4);
  ASSERT_TRUE(AdamWStep(big.block(2, 3, 3, 4), G.cast<float>(), state, config).ok());
  MatrixD expected = big0.cast<float>().cast<double>();
  MatrixD block = expected.block(2, 3, 3, 4);
  ReferenceAdamW ref{MatrixD::Zero(3, 4), MatrixD::Zero(3, 4)};
  ReferenceAdamWStep(block, G.cast<float>().cast<double>(), ref, config);
  expected.block(2, 3, 3, 4) = block;
  EXPECT_LE(MaxAbsDiff(big, expected), kStepTolerance);
  big.block(2, 3, 3, 4) = expected.block(2, 3, 3, 4).cast<float>();
  EXPECT_TRUE(BitIdentical(big, expected.cast<float>()));  // outside the block untouched
}

TEST(AdamW, RefusesBadInputAndChangesNothing) {
  AdamWConfig config;
  Matrix X = GaussianD(3, 4, 51).cast<float>();
  AdamWState state = InitAdamWState(3, 4);
  ASSERT_TRUE(AdamWStep(X, GaussianD(3, 4, 52).cast<float>(), state, config).ok());
  const Matrix X_before = X;
  const AdamWState state_before = state;

  Matrix nan_G = GaussianD(3, 4, 53).cast<float>();
  nan_G(1, 2) = std::numeric_limits<float>::quiet_NaN();
  Matrix inf_G = GaussianD(3, 4, 54).cast<float>();
  inf_G(2, 0) = -std::numeric_limits<float>::infinity();
  const Matrix wrong_shape_G = Matrix::Ones(4, 3);
  for (const Matrix* G : std::initializer_list<const Matrix*>{&nan_G, &inf_G, &wrong_shape_G}) {
    const absl::Status status = AdamWStep(X, *G, state, config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
  AdamWState wrong_state = InitAdamWState(3, 5);
  EXPECT_EQ(AdamWStep(X, Matrix::Ones(3, 4), wrong_state, config).code(),
            absl::StatusCode::kInvalidArgument);
  AdamWConfig bad_config = config;
  bad_config.beta2 = 1.0;
  EXPECT_EQ(AdamWStep(X, Matrix::Ones(3, 4), state, bad_config).code(),
            absl::StatusCode::kInvalidArgument);

  EXPECT_TRUE(BitIdentical(X, X_before));
  EXPECT_TRUE(BitIdentical(state.m, state_before.m));
  EXPECT_TRUE(BitIdentical(state.v, state_before.v));
  EXPECT_EQ(state.step, state_before.step);
}

TEST(AdamW, ValidationNamesTheFieldAndTheRange) {
  EXPECT_TRUE(ValidateAdamWConfig(AdamWConfig{}).ok());
  struct Case {
    AdamWConfig config;
    const char* field;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const Case cases[] = {
      {{.lr = -1e-3}, "lr"},       {{.lr = inf}, "lr"},          {{.lr = nan}, "lr"},
      {{.beta1 = 1.0}, "beta1"},   {{.beta1 = -0.1}, "beta1"},   {{.beta1 = nan}, "beta1"},
      {{.beta2 = 1.5}, "beta2"},   {{.eps = 0.0}, "eps"},        {{.eps = -1e-8}, "eps"},
      {{.eps = inf}, "eps"},       {{.weight_decay = -0.1}, "weight_decay"},
      {{.weight_decay = nan}, "weight_decay"},
  };
  for (const Case& c : cases) {
    const absl::Status status = ValidateAdamWConfig(c.config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(status.message().find(absl::StrCat("AdamWConfig.", c.field)), absl::string_view::npos)
        << status;
  }
  // The message states the expected range.
  EXPECT_NE(ValidateAdamWConfig({.beta1 = 1.0}).message().find("[0, 1)"), absl::string_view::npos);
  // Boundary values that are allowed.
  EXPECT_TRUE(
      ValidateAdamWConfig({.lr = 0.0, .beta1 = 0.0, .beta2 = 0.0, .weight_decay = 0.0}).ok());
}

// ---------------------------------------------------------------- Lion

struct ReferenceLion {
  MatrixD m;
};

double Sign(double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }

void ReferenceLionStep(MatrixD& X, const MatrixD& G, ReferenceLion& s, const LionConfig& c) {
  for (Eigen::Index i = 0; i < X.rows(); ++i) {
    for (Eigen::Index j = 0; j < X.cols(); ++j) {
      const double u = Sign(c.beta1 * s.m(i, j) + (1 - c.beta1) * G(i, j));
      X(i, j) = X(i, j) * (1 - c.lr * c.weight_decay) - c.lr * u;
      s.m(i, j) = c.beta2 * s.m(i, j) + (1 - c.beta2) * G(i, j);
    }
  }
}

TEST(Lion, ThreeStepsMatchDoubleFormulas) {
  LionConfig config;
  config.lr = 0.01;
  config.weight_decay = 0.1;
  const int rows = 5, cols = 7;
  MatrixD X_ref = GaussianD(rows, cols, 61);
  ReferenceLion ref{MatrixD::Zero(rows, cols)};
  Matrix X = X_ref.cast<float>();
  LionState state = InitLionState(rows, cols);
  for (int step = 0; step < 3; ++step) {
    const MatrixD G = GaussianD(rows, cols, 200 + step).cast<float>().cast<double>();
    // The sign must not be decided by float rounding, or the test would be fragile.
    const MatrixD interpolated = config.beta1 * ref.m + (1 - config.beta1) * G;
    ASSERT_GT(interpolated.cwiseAbs().minCoeff(), 1e-5) << "pick another seed";
    ASSERT_TRUE(LionStep(X, G.cast<float>(), state, config).ok());
    ReferenceLionStep(X_ref, G, ref, config);
  }
  EXPECT_EQ(state.step, 3);
  EXPECT_LE(MaxAbsDiff(X, X_ref), kStepTolerance);
  EXPECT_LE(MaxAbsDiff(state.m, ref.m), kStepTolerance);
}

// After g = 10 the momentum is m = 0.1. With g = -2 the direction b1 m + (1-b1) g = -0.11 is
// negative while b2 m + (1-b2) g = +0.079 is positive: the update must use beta1.
TEST(Lion, DirectionInterpolatesWithBeta1AndMomentumDecaysWithBeta2) {
  LionConfig config;
  config.lr = 0.5;
  config.weight_decay = 0.0;
  Matrix X = Matrix::Zero(1, 1);
  LionState state = InitLionState(1, 1);
  ASSERT_TRUE(LionStep(X, Matrix::Constant(1, 1, 10.0f), state, config).ok());
  EXPECT_FLOAT_EQ(X(0, 0), -0.5f);
  EXPECT_FLOAT_EQ(state.m(0, 0), 0.1f);
  ASSERT_TRUE(LionStep(X, Matrix::Constant(1, 1, -2.0f), state, config).ok());
  EXPECT_FLOAT_EQ(X(0, 0), 0.0f);  // moved by +lr
  EXPECT_FLOAT_EQ(state.m(0, 0), 0.99f * 0.1f - 0.02f);
}

TEST(Lion, ZeroGradientOnlyAppliesDecoupledWeightDecay) {
  LionConfig config;
  config.lr = 0.1;
  config.weight_decay = 0.5;
  const MatrixD X0 = GaussianD(3, 4, 71);
  Matrix X = X0.cast<float>();
  LionState state = InitLionState(3, 4);
  ASSERT_TRUE(LionStep(X, Matrix::Zero(3, 4), state, config).ok());
  EXPECT_LE(MaxAbsDiff(X, 0.95 * X0), 2e-7);  // sign(0) = 0: no move, only the decay
  EXPECT_TRUE(state.m.isZero(0.0));
}

TEST(Lion, RefusesBadInputAndChangesNothing) {
  LionConfig config;
  Matrix X = GaussianD(3, 4, 81).cast<float>();
  LionState state = InitLionState(3, 4);
  ASSERT_TRUE(LionStep(X, GaussianD(3, 4, 82).cast<float>(), state, config).ok());
  const Matrix X_before = X;
  const LionState state_before = state;

  Matrix nan_G = GaussianD(3, 4, 83).cast<float>();
  nan_G(0, 3) = std::numeric_limits<float>::quiet_NaN();
  Matrix inf_G = GaussianD(3, 4, 84).cast<float>();
  inf_G(1, 1) = std::numeric_limits<float>::infinity();
  const Matrix wrong_shape_G = Matrix::Ones(3, 5);
  for (const Matrix* G : std::initializer_list<const Matrix*>{&nan_G, &inf_G, &wrong_shape_G}) {
    EXPECT_EQ(LionStep(X, *G, state, config).code(), absl::StatusCode::kInvalidArgument);
  }
  LionState wrong_state = InitLionState(2, 4);
  EXPECT_EQ(LionStep(X, Matrix::Ones(3, 4), wrong_state, config).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LionStep(X, Matrix::Ones(3, 4), state, {.lr = -1.0}).code(),
            absl::StatusCode::kInvalidArgument);

  EXPECT_TRUE(BitIdentical(X, X_before));
  EXPECT_TRUE(BitIdentical(state.m, state_before.m));
  EXPECT_EQ(state.step, state_before.step);
}

TEST(Lion, ValidationNamesTheFieldAndTheRange) {
  EXPECT_TRUE(ValidateLionConfig(LionConfig{}).ok());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Case {
    LionConfig config;
    const char* field;
  };
  const Case cases[] = {
      {{.lr = -1.0}, "lr"},          {{.lr = nan}, "lr"},
      {{.beta1 = 1.0}, "beta1"},     {{.beta2 = -0.5}, "beta2"},
      {{.beta2 = nan}, "beta2"},     {{.weight_decay = -1.0}, "weight_decay"},
  };
  for (const Case& c : cases) {
    const absl::Status status = ValidateLionConfig(c.config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(status.message().find(absl::StrCat("LionConfig.", c.field)), absl::string_view::npos)
        << status;
  }
  EXPECT_NE(ValidateLionConfig({.lr = -1.0}).message().find(">= 0"), absl::string_view::npos);
}

}  // namespace
}  // namespace dion
