// Clipping to a Frobenius norm, the worker's half of the differentially private mode
// (docs/privacy.md, "Clipping"): a contribution's update is scaled down to norm <= C, so one
// contribution moves the shard's aggregate by a bounded amount.
//
// Norms are computed in double; a matrix is scaled by C / norm when norm > C, and left
// bit-for-bit alone otherwise. Thread-safety: pure functions on the caller's data.
#ifndef DION_COMMON_PRIVACY_CLIP_H_
#define DION_COMMON_PRIVACY_CLIP_H_

#include "common/compressor.h"
#include "common/matrix.h"

namespace dion {

// ||A||_F in double.
double FrobeniusNorm(ConstMatrixRef A);
// ||P R^T||_F in double, without forming P R^T: sqrt(sum_ij (P^T P)_ij (R^T R)_ij).
double FrobeniusNorm(const LowRankFactors& f);

// Scales A so that ||A||_F <= clip (REQUIRES clip > 0). Returns the norm before.
double ClipToNorm(MatrixRef A, double clip);
// Scales R so that ||P R^T||_F <= clip (REQUIRES clip > 0). Returns the norm before.
double ClipToNorm(LowRankFactors& f, double clip);

}  // namespace dion

#endif  // DION_COMMON_PRIVACY_CLIP_H_
