#include "common/blas.h"

#include <cblas.h>

#include <algorithm>
#include <cassert>
#include <vector>

// LAPACK through OpenBLAS (Fortran calling convention, column-major). OpenBLAS implements
// potrf in C, but sgeqrf/sorgqr are the reference Fortran routines it bundles.
extern "C" {
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info);
void sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau, float* work,
             const int* lwork, int* info);
void sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda, const float* tau,
             float* work, const int* lwork, int* info);
}

namespace dion {
namespace {

CBLAS_TRANSPOSE ToCblas(Trans t) { return t == Trans::kYes ? CblasTrans : CblasNoTrans; }

// Row stride of a row-major view; BLAS insists on at least 1.
int Ld(Eigen::Index cols, Eigen::Index outer_stride) {
  return static_cast<int>(std::max<Eigen::Index>({1, cols, outer_stride}));
}

}  // namespace

void Gemm(Trans trans_a, Trans trans_b, float alpha, ConstMatrixRef A, ConstMatrixRef B,
          float beta, MatrixRef C) {
  const Eigen::Index m = C.rows(), n = C.cols();
  const Eigen::Index k = trans_a == Trans::kYes ? A.rows() : A.cols();
  assert((trans_a == Trans::kYes ? A.cols() : A.rows()) == m);
  assert((trans_b == Trans::kYes ? B.cols() : B.rows()) == k);
  assert((trans_b == Trans::kYes ? B.rows() : B.cols()) == n);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS leaves C untouched for k == 0 only when beta == 1.
    if (beta == 0.0f) C.setZero(); else C *= beta;
    return;
  }
  cblas_sgemm(CblasRowMajor, ToCblas(trans_a), ToCblas(trans_b), static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, A.data(),
              Ld(A.cols(), A.outerStride()), B.data(), Ld(B.cols(), B.outerStride()), beta,
              C.data(), Ld(C.cols(), C.outerStride()));
}

void SyrkUpperAtA(float alpha, ConstMatrixRef A, float beta, MatrixRef C) {
  assert(C.rows() == A.cols() && C.cols() == A.cols());
  if (C.rows() == 0) return;
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(A.cols()),
              static_cast<int>(A.rows()), alpha, A.data(), Ld(A.cols(), A.outerStride()), beta,
              C.data(), Ld(C.cols(), C.outerStride()));
}

bool CholeskyUpper(MatrixRef C) {
  assert(C.rows() == C.cols());
  const int n = static_cast<int>(C.rows());
  if (n == 0) return true;
  // The upper triangle of a row-major matrix is the lower triangle of the same memory read
  // column-major, so LAPACK's 'L' factor L = U^T lands exactly where U belongs.
  const char uplo = 'L';
  const int lda = Ld(C.cols(), C.outerStride());
  int info = 0;
  spotrf_(&uplo, &n, C.data(), &lda, &info);
  return info == 0;
}

void SolveUpperRight(ConstMatrixRef U, MatrixRef P) {
  assert(U.rows() == U.cols() && U.rows() == P.cols());
  if (P.rows() == 0 || P.cols() == 0) return;
  cblas_strsm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit,
              static_cast<int>(P.rows()), static_cast<int>(P.cols()), 1.0f, U.data(),
              Ld(U.cols(), U.outerStride()), P.data(), Ld(P.cols(), P.outerStride()));
}

void HouseholderQr(MatrixRef P, Matrix* R) {
  const int m = static_cast<int>(P.rows()), k = static_cast<int>(P.cols());
  assert(m >= k);
  if (k == 0) {
    if (R != nullptr) R->resize(0, 0);
    return;
  }
  Eigen::MatrixXf a = P;  // column-major copy for LAPACK
  std::vector<float> tau(k);
  int info = 0, lwork = -1;
  float query = 0.0f;
  sgeqrf_(&m, &k, a.data(), &m, tau.data(), &query, &lwork, &info);
  lwork = std::max(1, static_cast<int>(query));
  std::vector<float> work(lwork);
  sgeqrf_(&m, &k, a.data(), &m, tau.data(), work.data(), &lwork, &info);
  assert(info == 0);
  if (R != nullptr) *R = a.topRows(k).triangularView<Eigen::Upper>();
  lwork = -1;
  sorgqr_(&m, &k, &k, a.data(), &m, tau.data(), &query, &lwork, &info);
  lwork = std::max(1, static_cast<int>(query));
  work.resize(lwork);
  sorgqr_(&m, &k, &k, a.data(), &m, tau.data(), work.data(), &lwork, &info);
  assert(info == 0);
  P = a;
}

void SetBlasThreads(int threads) { openblas_set_num_threads(std::max(1, threads)); }

int BlasThreads() { return openblas_get_num_threads(); }

}  // namespace dion
