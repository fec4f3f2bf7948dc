#include "common/compressor.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/rng.h"

namespace dion {
namespace {

// Added to each column norm of R so that a zero column normalises to zero, not NaN.
constexpr float kColumnNormEps = 1e-8f;

// More than min(m, n) columns cannot be orthonormal; fewer than one would send nothing.
int ClampRank(int64_t m, int64_t n, int rank) {
  const int64_t max_rank = std::max<int64_t>(1, std::min(m, n));
  return static_cast<int>(std::clamp<int64_t>(rank, 1, max_rank));
}

LowRankFactors ZeroFactors(int64_t m, int64_t n, int rank) {
  return LowRankFactors{Matrix::Zero(m, rank), Matrix::Zero(n, rank)};
}

}  // namespace

LowRankCompressor::LowRankCompressor(int64_t m, int64_t n, int rank, uint64_t seed,
                                     OrthoOptions ortho)
    : E_(Matrix::Zero(m, n)),
      rank_(ClampRank(m, n, rank)),
      ortho_(ortho),
      seed_(seed) {
  assert(m >= 1 && n >= 1);
  Qw_.resize(n, rank_);
  Rng rng(seed);
  rng.FillNormal(Qw_);
}

absl::Status LowRankCompressor::Accumulate(ConstMatrixRef G) {
  if (G.rows() != E_.rows() || G.cols() != E_.cols()) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankCompressor::Accumulate: G is ",
                                                   G.rows(), "x", G.cols(), ", expected ",
                                                   E_.rows(), "x", E_.cols()));
  }
  if (!AllFinite(G)) {
    return absl::InvalidArgumentError(
        "LowRankCompressor::Accumulate: G contains NaN or Inf; expected finite values");
  }
  // Checked before writing (the sum is evaluated lazily, twice) so E stays finite.
  if (!(((E_ + G).array() * 0.0f).sum() == 0.0f)) {  // AllFinite(E + G) without a temporary
    return absl::InvalidArgumentError(
        "LowRankCompressor::Accumulate: E + G overflows float range; expected gradients of "
        "finite magnitude");
  }
  E_ += G;
  return absl::OkStatus();
}

LowRankFactors LowRankCompressor::Compress() {
  const int64_t m = E_.rows(), n = E_.cols();
  LowRankFactors f{Matrix(m, rank_), Matrix(n, rank_)};
  Gemm(Trans::kNo, Trans::kNo, 1.0f, E_, Qw_, 0.0f, f.P);  // P = E Qw
  // Nothing to send when E Qw is zero (orthonormalising it would invent directions) or when
  // no method produced a finite P; the warm start Qw is kept for the next step.
  if ((f.P.array() == 0.0f).all()) return ZeroFactors(m, n, rank_);
  if (!Orthonormalize(f.P, ortho_).ok) return ZeroFactors(m, n, rank_);
  Gemm(Trans::kYes, Trans::kNo, 1.0f, E_, f.P, 0.0f, f.R);  // R = E^T P
  if ((f.R.array() == 0.0f).all() || !AllFinite(f.R)) return ZeroFactors(m, n, rank_);
  Gemm(Trans::kNo, Trans::kYes, -1.0f, f.P, f.R, 1.0f, E_);  // E -= P R^T, in place
  const Eigen::RowVectorXf column_norms = f.R.colwise().norm().array() + kColumnNormEps;
  Qw_ = f.R.array().rowwise() / column_norms.array();
  return f;
}

absl::Status LowRankCompressor::Restore(const LowRankFactors& factors) {
  const Matrix& P = factors.P;
  const Matrix& R = factors.R;
  if (P.rows() != E_.rows() || R.rows() != E_.cols() || P.cols() != R.cols()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LowRankCompressor::Restore: factors are P ", P.rows(), "x", P.cols(), " and R ",
        R.rows(), "x", R.cols(), ", expected P ", E_.rows(), "x r and R ", E_.cols(),
        "x r with the same r"));
  }
  if (!AllFinite(P) || !AllFinite(R)) {
    return absl::InvalidArgumentError(
        "LowRankCompressor::Restore: factors contain NaN or Inf; expected finite values");
  }
  Gemm(Trans::kNo, Trans::kYes, 1.0f, P, R, 1.0f, E_);  // E += P R^T
  return absl::OkStatus();
}

Matrix LowRankCompressor::TakeResidual() {
  Matrix E = Matrix::Zero(E_.rows(), E_.cols());
  E.swap(E_);
  return E;
}

void LowRankCompressor::SetRank(int rank) {
  const int r = ClampRank(E_.rows(), E_.cols(), rank);
  if (r == rank_) return;
  ++rank_changes_;
  if (r < rank_) {
    Qw_ = Matrix(Qw_.leftCols(r));
  } else {
    Matrix added(Qw_.rows(), r - rank_);
    Rng rng(MixSeed(seed_, 0x5E7, rank_changes_));
    rng.FillNormal(added);
    Matrix grown(Qw_.rows(), r);
    grown << Qw_, added;
    Qw_.swap(grown);
  }
  rank_ = r;
}

}  // namespace dion
