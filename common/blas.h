// Thin wrappers over OpenBLAS (cblas) and its LAPACK for the row-major matrices of matrix.h.
//
// Every heavy product in dion-ps goes through here so that one place decides how BLAS is
// called. The wrappers check shapes with assertions only (callers validate user input long
// before a GEMM); they never allocate except where noted.
//
// Thread-safety: stateless and safe for concurrent use. OpenBLAS parallelises each call
// internally over SetBlasThreads() threads.
#ifndef DION_COMMON_BLAS_H_
#define DION_COMMON_BLAS_H_

#include "common/matrix.h"

namespace dion {

enum class Trans { kNo, kYes };

// C = alpha * op(A) * op(B) + beta * C.
void Gemm(Trans trans_a, Trans trans_b, float alpha, ConstMatrixRef A, ConstMatrixRef B,
          float beta, MatrixRef C);

// C = alpha * A^T * A + beta * C, C symmetric k x k where A is m x k. Only the upper
// triangle of C is written (the lower one is left as it was).
void SyrkUpperAtA(float alpha, ConstMatrixRef A, float beta, MatrixRef C);

// Cholesky factorisation of a symmetric positive-definite C (upper triangle read):
// C = U^T U with U upper triangular, written into the upper triangle of C.
// Returns false when C is not numerically positive definite (LAPACK info > 0).
bool CholeskyUpper(MatrixRef C);

// P := P * U^{-1} for U upper triangular (k x k) and P (m x k): a triangular solve
// from the right.
void SolveUpperRight(ConstMatrixRef U, MatrixRef P);

// Householder QR of a tall or square P (m x k, m >= k): P := Q (m x k, orthonormal columns).
// If R is non-null it receives the k x k upper-triangular factor. Allocates workspace.
void HouseholderQr(MatrixRef P, Matrix* R);

// Number of threads OpenBLAS uses for each call.
void SetBlasThreads(int threads);
int BlasThreads();

}  // namespace dion

#endif  // DION_COMMON_BLAS_H_
