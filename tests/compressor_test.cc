// The worker-side low-rank compressor: nothing is lost (sent + residual == all gradients,
// checked in double), refused contributions go back, degenerate inputs give zero factors.
#include "common/compressor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <initializer_list>
#include <limits>
#include <ostream>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/orthonormalize.h"
#include "tests/reference.h"

namespace dion {
namespace {

using testing::GaussianD;

MatrixD Contribution(const LowRankFactors& f) {
  return f.P.cast<double>() * f.R.cast<double>().transpose();
}

double MaxAbs(const MatrixD& a) { return a.cwiseAbs().maxCoeff(); }

bool BitIdentical(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::equal(a.data(), a.data() + a.size(), b.data());
}

struct Shape {
  int64_t m, n;
  int rank;
};

void PrintTo(const Shape& s, std::ostream* os) { *os << s.m << "x" << s.n << " rank " << s.rank; }

class CompressorShapes : public ::testing::TestWithParam<Shape> {};

// Over 100 steps of Gaussian gradients, sum of every P R^T sent plus the final residual E
// equals the sum of all gradients. Float error: each step rounds E a few times at 6e-8
// relative; measured at most 1.2e-7 of max|sum G| over the shapes here, so 1e-6 is the
// tolerance, while one lost or doubly counted step would be off by ~0.1 of max|sum G|.
TEST_P(CompressorShapes, SentPlusResidualEqualsSumOfGradients) {
  const Shape s = GetParam();
  LowRankCompressor compressor(s.m, s.n, s.rank, /*seed=*/7);
  ASSERT_EQ(compressor.rank(), s.rank);
  MatrixD sum_G = MatrixD::Zero(s.m, s.n), sum_sent = MatrixD::Zero(s.m, s.n);
  for (int step = 0; step < 100; ++step) {
    const Matrix G = GaussianD(s.m, s.n, 1000 + step).cast<float>();
    sum_G += G.cast<double>();
    ASSERT_TRUE(compressor.Accumulate(G).ok());
    const LowRankFactors f = compressor.Compress();
    ASSERT_EQ(f.P.rows(), s.m);
    ASSERT_EQ(f.P.cols(), s.rank);
    ASSERT_EQ(f.R.rows(), s.n);
    ASSERT_EQ(f.R.cols(), s.rank);
    ASSERT_TRUE(f.P.allFinite() && f.R.allFinite()) << "step " << step;
    // P is what Orthonormalize returned; kAuto targets ~1e-5, 1e-4 catches a broken P only.
    ASSERT_LE(OrthogonalityError(f.P), 1e-4) << "step " << step;
    sum_sent += Contribution(f);
  }
  const MatrixD total = sum_sent + compressor.residual().cast<double>();
  EXPECT_LE(MaxAbs(total - sum_G) / MaxAbs(sum_G), 1e-6);
  // Sanity: the compressor did send something (the check above is not vacuous).
  EXPECT_GT(MaxAbs(sum_sent), 0.1 * MaxAbs(sum_G));
}

INSTANTIATE_TEST_SUITE_P(
    TallWideAndVectors, CompressorShapes,
    ::testing::Values(Shape{64, 48, 4}, Shape{48, 64, 4}, Shape{1, 37, 1}, Shape{37, 1, 1},
                      Shape{16, 16, 16}, Shape{12, 30, 12}),
    [](const ::testing::TestParamInfo<Shape>& info) {
      return absl::StrCat(info.param.m, "x", info.param.n, "_rank", info.param.rank);
    });

// Compress then Restore must give back the residual from before Compress: E - P R^T + P R^T,
// two float roundings of entries at most ~max|E| (measured 5e-8 of max|E|; 1e-6 allowed).
TEST(LowRankCompressor, RestorePutsRefusedContributionBack) {
  for (const auto& [m, n] : {std::pair{64, 48}, {48, 64}}) {
    LowRankCompressor compressor(m, n, 4, 11);
    ASSERT_TRUE(compressor.Accumulate(GaussianD(m, n, 12).cast<float>()).ok());
    (void)compressor.Compress();  // leave a non-trivial residual behind
    ASSERT_TRUE(compressor.Accumulate(GaussianD(m, n, 13).cast<float>()).ok());
    const MatrixD before = compressor.residual().cast<double>();
    const LowRankFactors f = compressor.Compress();
    ASSERT_GT(MaxAbs(Contribution(f)), 0.1 * MaxAbs(before));
    ASSERT_TRUE(compressor.Restore(f).ok());
    EXPECT_LE(MaxAbs(compressor.residual().cast<double>() - before), 1e-6 * MaxAbs(before))
        << m << "x" << n;
  }
}

// A gradient of rank <= r lies in the span the power step finds from a random Qw, so it is
// sent whole and the residual is rounding noise (measured 1.3e-6 of max|G|; 1e-5 allowed).
TEST(LowRankCompressor, GradientOfRankAtMostRIsSentWhole) {
  const int m = 64, n = 48, r = 4;
  const MatrixD G = GaussianD(m, r, 21) * GaussianD(r, n, 22);
  LowRankCompressor compressor(m, n, r, 23);
  ASSERT_TRUE(compressor.Accumulate(G.cast<float>()).ok());
  const LowRankFactors f = compressor.Compress();
  EXPECT_LE(MaxAbs(Contribution(f) - G) / MaxAbs(G), 1e-5);
  EXPECT_LE(MaxAbs(compressor.residual().cast<double>()) / MaxAbs(G), 1e-5);
}

// Rank 1 gradient, rank 3 compressor: E Qw is rank deficient, so Orthonormalize has to
// cope (Cholesky fails); the result must still be finite and send the gradient whole.
TEST(LowRankCompressor, RankDeficientGradientGivesFiniteFactors) {
  const int m = 10, n = 8;
  const MatrixD G = GaussianD(m, 1, 31) * GaussianD(1, n, 32);
  LowRankCompressor compressor(m, n, 3, 33);
  ASSERT_TRUE(compressor.Accumulate(G.cast<float>()).ok());
  for (int step = 0; step < 3; ++step) {  // later steps compress rounding noise only
    const LowRankFactors f = compressor.Compress();
    EXPECT_TRUE(f.P.allFinite() && f.R.allFinite()) << "step " << step;
    EXPECT_TRUE(compressor.residual().allFinite());
  }
  EXPECT_LE(MaxAbs(compressor.residual().cast<double>()) / MaxAbs(G), 1e-5);
}

TEST(LowRankCompressor, ZeroGradientGivesZeroFactorsAndKeepsWarmStart) {
  for (const auto& [m, n, r] : {std::tuple{8, 6, 2}, {6, 8, 2}, {1, 5, 1}, {5, 1, 1}}) {
    SCOPED_TRACE(absl::StrCat(m, "x", n, " rank ", r));
    LowRankCompressor compressor(m, n, r, 41);
    ASSERT_TRUE(compressor.Accumulate(Matrix::Zero(m, n)).ok());
    for (int i = 0; i < 2; ++i) {  // also with nothing accumulated since the last call
      const LowRankFactors f = compressor.Compress();
      ASSERT_EQ(f.P.rows(), m);
      ASSERT_EQ(f.P.cols(), r);
      ASSERT_EQ(f.R.rows(), n);
      ASSERT_EQ(f.R.cols(), r);
      EXPECT_TRUE(f.P.isZero(0.0));
      EXPECT_TRUE(f.R.isZero(0.0));
      EXPECT_TRUE(compressor.residual().isZero(0.0));
    }
    // Qw was kept: the next real gradient compresses exactly as in a fresh compressor.
    LowRankCompressor fresh(m, n, r, 41);
    const Matrix G = GaussianD(m, n, 42).cast<float>();
    ASSERT_TRUE(compressor.Accumulate(G).ok());
    ASSERT_TRUE(fresh.Accumulate(G).ok());
    const LowRankFactors a = compressor.Compress(), b = fresh.Compress();
    EXPECT_TRUE(BitIdentical(a.P, b.P) && BitIdentical(a.R, b.R));
  }
}

TEST(LowRankCompressor, SameSeedSameFactorsOtherSeedOtherFactors) {
  const Matrix G = GaussianD(20, 16, 51).cast<float>();
  LowRankCompressor a(20, 16, 2, 52), b(20, 16, 2, 52), c(20, 16, 2, 53);
  for (LowRankCompressor* x : {&a, &b, &c}) ASSERT_TRUE(x->Accumulate(G).ok());
  const LowRankFactors fa = a.Compress(), fb = b.Compress(), fc = c.Compress();
  EXPECT_TRUE(BitIdentical(fa.P, fb.P) && BitIdentical(fa.R, fb.R));
  // A different random Qw finds a different rank-2 subspace of a full-rank G.
  EXPECT_GT(MaxAbs(Contribution(fa) - Contribution(fc)), 1e-3 * MaxAbs(Contribution(fa)));
}

TEST(LowRankCompressor, AccumulateRefusesBadGradientAndChangesNothing) {
  LowRankCompressor compressor(6, 4, 2, 61);
  ASSERT_TRUE(compressor.Accumulate(GaussianD(6, 4, 62).cast<float>()).ok());
  const Matrix before = compressor.residual();

  Matrix nan_G = GaussianD(6, 4, 63).cast<float>();
  nan_G(2, 2) = std::numeric_limits<float>::quiet_NaN();
  Matrix inf_G = GaussianD(6, 4, 64).cast<float>();
  inf_G(5, 3) = -std::numeric_limits<float>::infinity();
  const Matrix wrong_shape = Matrix::Ones(4, 6);
  for (const Matrix* G : std::initializer_list<const Matrix*>{&nan_G, &inf_G, &wrong_shape}) {
    const absl::Status status = compressor.Accumulate(*G);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
  EXPECT_TRUE(BitIdentical(compressor.residual(), before));

  // Finite but overflowing: E + G would be Inf.
  Matrix big = Matrix::Constant(6, 4, 3e38f);
  ASSERT_TRUE(compressor.Accumulate(big).ok());
  const Matrix before_big = compressor.residual();
  EXPECT_EQ(compressor.Accumulate(big).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(BitIdentical(compressor.residual(), before_big));
}

TEST(LowRankCompressor, RestoreRefusesBadFactorsAndChangesNothing) {
  LowRankCompressor compressor(6, 4, 2, 71);
  ASSERT_TRUE(compressor.Accumulate(GaussianD(6, 4, 72).cast<float>()).ok());
  const LowRankFactors good = compressor.Compress();
  const Matrix before = compressor.residual();

  LowRankFactors wrong_P_rows{Matrix::Ones(5, 2), good.R};
  LowRankFactors wrong_R_rows{good.P, Matrix::Ones(6, 2)};
  LowRankFactors mismatched_rank{good.P, Matrix::Ones(4, 3)};
  LowRankFactors nan_R = good;
  nan_R.R(1, 1) = std::numeric_limits<float>::quiet_NaN();
  for (const LowRankFactors* f : {&wrong_P_rows, &wrong_R_rows, &mismatched_rank, &nan_R}) {
    const absl::Status status = compressor.Restore(*f);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
  EXPECT_TRUE(BitIdentical(compressor.residual(), before));
  EXPECT_TRUE(compressor.Restore(good).ok());
}

TEST(LowRankCompressor, RankIsClampedToOneThroughMinSide) {
  EXPECT_EQ(LowRankCompressor(8, 5, 100, 1).rank(), 5);
  EXPECT_EQ(LowRankCompressor(5, 8, 6, 1).rank(), 5);
  EXPECT_EQ(LowRankCompressor(8, 5, 0, 1).rank(), 1);
  EXPECT_EQ(LowRankCompressor(8, 5, -3, 1).rank(), 1);
  EXPECT_EQ(LowRankCompressor(1, 9, 3, 1).rank(), 1);
  LowRankCompressor clamped(8, 5, 100, 1);
  ASSERT_TRUE(clamped.Accumulate(GaussianD(8, 5, 2).cast<float>()).ok());
  const LowRankFactors f = clamped.Compress();
  EXPECT_EQ(f.P.cols(), 5);
  EXPECT_EQ(f.R.cols(), 5);
  // Full rank: everything is sent.
  EXPECT_LE(MaxAbs(clamped.residual().cast<double>()), 1e-5);
}

}  // namespace
}  // namespace dion
