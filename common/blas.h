// Thin wrappers over OpenBLAS (cblas) and its LAPACK for the row-major matrices of matrix.h.
//
// Every heavy product in dion-ps goes through here so that one place decides how BLAS is
// called. The wrappers check shapes with assertions only (callers validate user input long
// before a GEMM); they never allocate except where noted.
//
// Thread-safety: the products and factorisations are stateless and safe for concurrent use;
// OpenBLAS parallelises each call internally over SetBlasThreads() threads. SetBlasThreads is
// not: call it only while no other thread calls BLAS or reads the environment (in practice at
// startup, before servers, clients or compute threads exist).
#ifndef DION_COMMON_BLAS_H_
#define DION_COMMON_BLAS_H_

#include "absl/status/status.h"
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

// Number of threads OpenBLAS uses for each call (at least 1).
//
// With 2 or more, OpenBLAS's pthread build keeps each of its worker threads polling (a
// sched_yield loop) for 2^28 TSC cycles, ~0.13 s at 2.1 GHz, after every threaded call, and
// whatever the process runs next on those cores (the Dion step's rank-r updates) gets half of
// them. So unless OPENBLAS_THREAD_TIMEOUT is in the environment (the user's value is kept),
// SetBlasThreads sets it to 16 (2^16 cycles, ~30 us: long enough to catch back-to-back calls,
// short enough that the worker sleeps through the work between the step's products; the next
// threaded call wakes it), makes OpenBLAS re-read it and restarts its worker threads, which
// read the timeout when they start. The variable stays set, so child processes start with
// it. This uses OpenBLAS internals looked up at run time; without them (another BLAS, another
// OpenBLAS) the workers keep their default polling and the returned status says so; it is OK
// otherwise, and always with 1 thread.
//
// Not thread-safe (see the top of this file): stopping the workers under a running BLAS call
// would break that call, and setenv races with getenv in other threads.
absl::Status SetBlasThreads(int threads);
int BlasThreads();

}  // namespace dion

#endif  // DION_COMMON_BLAS_H_
