// Worker-side low-rank gradient compression with error feedback (PowerSGD-style, Vogels et
// al. 2019): what a worker sends instead of an m x n gradient.
//
//   E = E + G;  P = Orthonormalize(E Qw);  R = E^T P;  E = E - P R^T;  Qw = colnorm(R)
//
// The pair (P, R) travels, (m + n) r numbers instead of m n. Nothing is lost: whatever the
// rank-r factors did not capture stays in the residual E, and a contribution the server
// refuses is put back with Restore(). The factors are in the matrix's own orientation:
// P is m x r and R is n x r, so the contribution is P R^T (m x n).
//
// Thread-safety: not safe for concurrent use; one compressor per parameter per worker.
#ifndef DION_COMMON_COMPRESSOR_H_
#define DION_COMMON_COMPRESSOR_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "common/orthonormalize.h"

namespace dion {

struct LowRankFactors {
  Matrix P;  // m x r
  Matrix R;  // n x r; the contribution is P R^T
};

class LowRankCompressor {
 public:
  // An m x n parameter (REQUIRES m >= 1, n >= 1) compressed to rank r. A rank outside
  // [1, min(m, n)] is clamped into it (rank() reports the rank used): more than min(m, n)
  // columns cannot be orthonormal, and rank 0 would send nothing. Qw (n x r) starts N(0, 1)
  // from Rng(seed), so the same seed gives the same factors.
  LowRankCompressor(int64_t m, int64_t n, int rank, uint64_t seed, OrthoOptions ortho = {});

  // E += G. Shape must be m x n; non-finite G, or a G that would overflow E, is refused
  // with InvalidArgument and E is unchanged.
  absl::Status Accumulate(ConstMatrixRef G);

  // Compresses the residual: returns (P, R) with P^T P = I and subtracts P R^T from E, so
  // that P R^T + E is the residual before the call (to float rounding). Then Qw = colnorm(R).
  // When E Qw is zero (e.g. a zero residual), Orthonormalize reports failure or R comes out
  // zero, returns zero factors (P m x r, R n x r, all zero) and leaves E and Qw unchanged.
  // Never returns NaN or Inf.
  LowRankFactors Compress();

  // Puts a contribution the server refused back into the residual: E += P R^T. P must be
  // m x k and R n x k for one k (any k, normally rank()); mismatched shapes or non-finite
  // factors are refused with InvalidArgument and E is unchanged.
  absl::Status Restore(const LowRankFactors& factors);

  // Returns E and sets it to zero (a worker about to exit sends its residual whole); Qw is
  // kept.
  Matrix TakeResidual();

  // Changes the rank of the next Compress (clamped as in the constructor); E is untouched, so
  // nothing accumulated is lost. Shrinking keeps Qw's first columns, growing appends N(0, 1)
  // columns (from the seed and the number of changes so far, so a run is reproducible): any
  // Qw is a valid warm start, it only decides which directions the next factors capture
  // first. Contributions of an older rank can still be restored (Restore takes any k).
  void SetRank(int rank);

  const Matrix& residual() const { return E_; }
  int rank() const { return rank_; }
  int64_t rows() const { return E_.rows(); }
  int64_t cols() const { return E_.cols(); }

 private:
  Matrix E_;   // m x n residual
  Matrix Qw_;  // n x r warm-start right factor
  int rank_;
  OrthoOptions ortho_;
  uint64_t seed_;
  uint64_t rank_changes_ = 0;
};

}  // namespace dion

#endif  // DION_COMMON_COMPRESSOR_H_
