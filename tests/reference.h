// Independent reference implementations for the numeric tests, written plainly in double
// precision with no BLAS and no shortcuts, so that they share no code (and no bug) with
// common/. Also helpers to build test matrices.
#ifndef DION_TESTS_REFERENCE_H_
#define DION_TESTS_REFERENCE_H_

#include <cstdint>

#include "common/matrix.h"

namespace dion::testing {

// Householder QR in double (reflectors applied one by one): returns Q (m x k, orthonormal
// columns) of A (m x k, m >= k), with the sign convention diag(R) >= 0.
MatrixD ReferenceHouseholderQ(const MatrixD& A);

// State of the reference Dion step (same meaning as DionState, in double).
struct ReferenceDionState {
  MatrixD M;  // m x n
  MatrixD Q;  // short x r
};

struct ReferenceDionConfig {
  double lr = 0.01, mu = 0.95, weight_decay = 0.01, eps = 1e-8;
  int power_iters = 1;
};

// One Dion step exactly as docs/algorithm.md writes it, on X^T when m < n.
void ReferenceDionStep(MatrixD& X, const MatrixD& G, ReferenceDionState& state,
                       const ReferenceDionConfig& config);

// A random m x k matrix (m >= k) with singular values spaced geometrically from 1 down to
// 1 / condition, built as U diag(s) V^T from reference QRs of Gaussian matrices.
MatrixD MatrixWithCondition(int64_t m, int64_t k, double condition, uint64_t seed);

// Gaussian matrix with N(0, stddev^2) entries from a seeded generator.
MatrixD GaussianD(int64_t rows, int64_t cols, uint64_t seed, double stddev = 1.0);

// max |a - b| / max(max |b|, tiny): relative error in the max norm.
double MaxRelativeError(const MatrixD& a, const MatrixD& b);

// ||a - b||_F / max(||b||_F, tiny): relative error in the Frobenius norm.
double RelativeError(const MatrixD& a, const MatrixD& b);

}  // namespace dion::testing

#endif  // DION_TESTS_REFERENCE_H_
