// Newton-Schulz and the Muon step against double-precision references written in the test.
#include "common/muon.h"

#include <gtest/gtest.h>

#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>

#include "absl/strings/str_cat.h"
#include "tests/reference.h"

namespace dion {
namespace {

using testing::GaussianD;
using testing::ReferenceHouseholderQ;

constexpr double kA = 3.4445, kB = -4.7750, kC = 2.0315;

// The scalar map each singular value goes through: p applied `steps` times.
double ScalarMap(double x, int steps = 5) {
  for (int i = 0; i < steps; ++i) x = kA * x + kB * x * x * x + kC * std::pow(x, 5);
  return x;
}

// Newton-Schulz as Jordan et al. write it (wide orientation, X X^T), plainly, in double.
MatrixD ReferenceNewtonSchulz(MatrixD A, int steps = 5) {
  const bool transposed = A.rows() > A.cols();
  if (transposed) A.transposeInPlace();
  A /= A.norm() + 1e-7;
  for (int i = 0; i < steps; ++i) {
    const MatrixD S = A * A.transpose();
    const MatrixD B = kB * S + kC * S * S;
    A = (kA * A + B * A).eval();
  }
  if (transposed) A.transposeInPlace();
  return A;
}

// A = U diag(s) V^T (rows x cols) with k = min(rows, cols) singular values spaced
// geometrically from 1 down to `spread`, and random orthonormal U, V.
struct Spectral {
  MatrixD A, U, V;
  Eigen::VectorXd s;
};

Spectral WithSpectrum(int64_t rows, int64_t cols, double spread, uint64_t seed) {
  const int64_t k = std::min(rows, cols);
  Spectral out;
  out.U = ReferenceHouseholderQ(GaussianD(rows, k, seed));
  out.V = ReferenceHouseholderQ(GaussianD(cols, k, seed + 1));
  out.s.resize(k);
  for (int64_t i = 0; i < k; ++i) out.s(i) = std::pow(spread, static_cast<double>(i) / (k - 1));
  out.A = out.U * out.s.asDiagonal() * out.V.transpose();
  return out;
}

// Band edges documented in muon.h (exact arithmetic). Float NewtonSchulz follows the scalar
// map to ~3e-6 (measured), so 1e-4 of slack is ample and still far tighter than the band.
constexpr double kBandLow = 0.6818, kBandHigh = 1.2024, kBandHighAbove5e3 = 1.1344;
constexpr double kBandSlack = 1e-4;

// JacobiSVD, not BDCSVD: the matrices here are at most 64 x 64, where one-sided Jacobi is
// fast and at least as accurate, and BDCSVD<MatrixD> alone made this the slowest file of the
// build (75 s of -O3 compile against 28 s).
Eigen::VectorXd SingularValues(const Matrix& O) {
  return Eigen::JacobiSVD<MatrixD>(O.cast<double>()).singularValues();
}

TEST(NewtonSchulz, SingularValuesLieInDocumentedBand) {
  // Spectra from 1 down to 1e-2 (relative to the largest): every x = s / ||A||_F is then
  // >= 1.51e-3 and the documented band is [0.6818, 1.2024]. Down to 1e-1: x >= 5.2e-3 and
  // the band is [0.6818, 1.1344].
  for (const auto& [spread, high] : {std::pair{1e-2, kBandHigh}, {1e-1, kBandHighAbove5e3}}) {
    for (const auto& [rows, cols] : {std::pair{64, 40}, {40, 64}, {32, 32}}) {
      for (uint64_t seed : {1, 2, 3}) {
        const Spectral a = WithSpectrum(rows, cols, spread, seed);
        Matrix O = a.A.cast<float>();
        const double x_min = spread / O.cast<double>().norm();
        ASSERT_GE(x_min, high == kBandHigh ? 1.51e-3 : 5.2e-3);
        NewtonSchulz(O);
        const Eigen::VectorXd sv = SingularValues(O);
        SCOPED_TRACE(absl::StrCat(rows, "x", cols, " spread ", spread, " seed ", seed));
        EXPECT_GE(sv.minCoeff(), kBandLow - kBandSlack);
        EXPECT_LE(sv.maxCoeff(), high + kBandSlack);
      }
    }
  }
}

TEST(NewtonSchulz, GaussianMatrixLandsInTheTightBand) {
  // A typical gradient: no singular value is small relative to ||A||_F.
  Matrix O = GaussianD(48, 20, 9).cast<float>();
  NewtonSchulz(O);
  const Eigen::VectorXd sv = SingularValues(O);
  EXPECT_GE(sv.minCoeff(), kBandLow - kBandSlack);
  EXPECT_LE(sv.maxCoeff(), kBandHighAbove5e3 + kBandSlack);
}

// Pairs each input singular value with its output one through U^T O V (the map is not
// monotone, so sorted singular values cannot be paired). Spectrum spread over [1e-4, 1]
// relative to the largest covers all three regimes documented in muon.h.
TEST(NewtonSchulz, EachSingularValueFollowsTheScalarMap) {
  for (const auto& [rows, cols] : {std::pair{64, 40}, {40, 64}}) {
    const Spectral a = WithSpectrum(rows, cols, 1e-4, 5);
    Matrix O = a.A.cast<float>();
    const double norm = O.cast<double>().norm() + 1e-7;
    NewtonSchulz(O);
    const MatrixD D = a.U.transpose() * O.cast<double>() * a.V;
    // Measured deviation <= 2.7e-6: float rounding of A (6e-8 relative) times the map's
    // slope and GEMM rounding; 2e-5 allowed, far below the band's width.
    constexpr double kMapTolerance = 2e-5;
    for (Eigen::Index i = 0; i < D.rows(); ++i) {
      const double x = a.s(i) / norm;
      SCOPED_TRACE(absl::StrCat(rows, "x", cols, " x = ", x));
      EXPECT_NEAR(D(i, i), ScalarMap(x), kMapTolerance);
      if (x >= 1.51e-3) {
        EXPECT_GE(D(i, i), kBandLow - kBandSlack);
        EXPECT_LE(D(i, i), kBandHigh + kBandSlack);
      } else {
        EXPECT_GE(D(i, i), 453 * x - kMapTolerance);
        EXPECT_LE(D(i, i), 485 * x + kMapTolerance);
      }
    }
    const MatrixD off = D - MatrixD(D.diagonal().asDiagonal());
    EXPECT_LE(off.cwiseAbs().maxCoeff(), kMapTolerance);  // singular vectors are kept
  }
}

TEST(NewtonSchulz, MatchesDoubleReferenceInBothOrientations) {
  for (const auto& [rows, cols] : {std::pair{24, 16}, {16, 24}, {1, 9}, {9, 1}}) {
    const MatrixD A = GaussianD(rows, cols, 7);
    Matrix O = A.cast<float>();
    NewtonSchulz(O);
    // Float GEMM rounding over 5 steps: measured <= 6.3e-7 (entries are O(1)); 5e-6 allowed.
    EXPECT_LE((O.cast<double>() - ReferenceNewtonSchulz(A)).cwiseAbs().maxCoeff(), 5e-6)
        << rows << "x" << cols;
  }
}

TEST(NewtonSchulz, TransposedInputGivesTransposedOutput) {
  const Matrix A = GaussianD(20, 12, 8).cast<float>();
  Matrix O = A;
  Matrix Ot = A.transpose();
  NewtonSchulz(O);
  NewtonSchulz(Ot);
  EXPECT_LE((O - Ot.transpose()).cwiseAbs().maxCoeff(), 1e-6);
}

TEST(NewtonSchulz, AllZeroInputStaysZero) {
  for (const auto& [rows, cols] : {std::pair{5, 3}, {3, 5}, {4, 4}}) {
    Matrix O = Matrix::Zero(rows, cols);
    NewtonSchulz(O);
    EXPECT_TRUE(O.isZero(0.0)) << rows << "x" << cols;
  }
}

// ---------------------------------------------------------------- MuonStep

struct ReferenceMuon {
  MatrixD M;
};

void ReferenceMuonStep(MatrixD& X, const MatrixD& G, ReferenceMuon& s, const MuonConfig& c) {
  s.M = c.mu * s.M + G;
  const MatrixD D = c.nesterov ? MatrixD(G + c.mu * s.M) : s.M;
  const MatrixD O = ReferenceNewtonSchulz(D, c.ns_steps);
  const double scale = std::sqrt(std::max(1.0, double(X.rows()) / double(X.cols())));
  X = X * (1 - c.lr * c.weight_decay) - c.lr * scale * O;
}

TEST(MuonStep, ThreeStepsMatchDoubleReference) {
  for (bool nesterov : {true, false}) {
    // Tall exercises the sqrt(m / n) scale, wide the max(1, .) in it.
    for (const auto& [rows, cols] : {std::pair{24, 16}, {16, 24}}) {
      MuonConfig config;
      config.lr = 0.1;
      config.nesterov = nesterov;
      MatrixD X_ref = GaussianD(rows, cols, 30);
      Matrix X = X_ref.cast<float>();
      ReferenceMuon ref{MatrixD::Zero(rows, cols)};
      MuonState state = InitMuonState(rows, cols);
      for (int step = 0; step < 3; ++step) {
        const MatrixD G = GaussianD(rows, cols, 40 + step).cast<float>().cast<double>();
        ASSERT_TRUE(MuonStep(X, G.cast<float>(), state, config).ok());
        ReferenceMuonStep(X_ref, G, ref, config);
      }
      SCOPED_TRACE(absl::StrCat(rows, "x", cols, " nesterov ", nesterov));
      EXPECT_EQ(state.step, 3);
      // Rounding of X (|X| ~ 3, ulp 2.4e-7) plus three NewtonSchulz results each within
      // ~6e-7: measured <= 4.5e-7, 3e-6 allowed.
      EXPECT_LE((X.cast<double>() - X_ref).cwiseAbs().maxCoeff(), 3e-6);
      EXPECT_LE(testing::MaxRelativeError(state.M.cast<double>(), ref.M), 1e-6);
    }
  }
}

TEST(MuonStep, ZeroGradientOnlyAppliesDecoupledWeightDecay) {
  MuonConfig config;
  config.lr = 0.1;
  config.weight_decay = 0.5;
  const MatrixD X0 = GaussianD(6, 4, 50);
  Matrix X = X0.cast<float>();
  MuonState state = InitMuonState(6, 4);
  ASSERT_TRUE(MuonStep(X, Matrix::Zero(6, 4), state, config).ok());
  EXPECT_LE((X.cast<double>() - 0.95 * X0).cwiseAbs().maxCoeff(), 2e-7);
  EXPECT_TRUE(state.M.isZero(0.0));
  EXPECT_TRUE(X.allFinite());
}

bool BitIdentical(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::equal(a.data(), a.data() + a.size(), b.data());
}

TEST(MuonStep, RefusesBadInputAndChangesNothing) {
  MuonConfig config;
  Matrix X = GaussianD(6, 4, 60).cast<float>();
  MuonState state = InitMuonState(6, 4);
  ASSERT_TRUE(MuonStep(X, GaussianD(6, 4, 61).cast<float>(), state, config).ok());
  const Matrix X_before = X;
  const MuonState state_before = state;

  Matrix nan_G = GaussianD(6, 4, 62).cast<float>();
  nan_G(3, 1) = std::numeric_limits<float>::quiet_NaN();
  Matrix inf_G = GaussianD(6, 4, 63).cast<float>();
  inf_G(0, 0) = std::numeric_limits<float>::infinity();
  const Matrix wrong_shape_G = Matrix::Ones(4, 6);
  for (const Matrix* G : std::initializer_list<const Matrix*>{&nan_G, &inf_G, &wrong_shape_G}) {
    EXPECT_EQ(MuonStep(X, *G, state, config).code(), absl::StatusCode::kInvalidArgument);
  }
  MuonState wrong_state = InitMuonState(6, 5);
  EXPECT_EQ(MuonStep(X, Matrix::Ones(6, 4), wrong_state, config).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MuonStep(X, Matrix::Ones(6, 4), state, {.mu = 1.0}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(BitIdentical(X, X_before));
  EXPECT_TRUE(BitIdentical(state.M, state_before.M));
  EXPECT_EQ(state.step, state_before.step);

  // Finite G whose momentum overflows float: refused, nothing changes.
  MuonState huge = InitMuonState(6, 4);
  huge.M.setConstant(3e38f);
  const Matrix huge_M = huge.M;
  EXPECT_EQ(MuonStep(X, Matrix::Constant(6, 4, 3e38f), huge, config).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(BitIdentical(X, X_before));
  EXPECT_TRUE(BitIdentical(huge.M, huge_M));
}

TEST(MuonStep, ValidationNamesTheFieldAndTheRange) {
  EXPECT_TRUE(ValidateMuonConfig(MuonConfig{}).ok());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Case {
    MuonConfig config;
    const char* field;
  };
  const Case cases[] = {
      {{.lr = -0.1}, "lr"},       {{.lr = nan}, "lr"},
      {{.mu = 1.0}, "mu"},        {{.mu = -0.1}, "mu"},
      {{.weight_decay = -1}, "weight_decay"}, {{.ns_steps = 0}, "ns_steps"},
  };
  for (const Case& c : cases) {
    const absl::Status status = ValidateMuonConfig(c.config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(status.message().find(absl::StrCat("MuonConfig.", c.field)), absl::string_view::npos)
        << status;
  }
  EXPECT_NE(ValidateMuonConfig({.mu = 1.0}).message().find("[0, 1)"), absl::string_view::npos);
}

}  // namespace
}  // namespace dion
