#include "common/blas.h"

#include <cblas.h>
#include <dlfcn.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

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

namespace {

constexpr char kTimeoutVariable[] = "OPENBLAS_THREAD_TIMEOUT";
// log2 of the TSC cycles an idle OpenBLAS worker polls before it sleeps (OpenBLAS clamps it to
// [4, 30]; its default is 28, ~0.13 s at 2.1 GHz). 2^16 cycles (~30 us) still catch the next of
// back-to-back products, where 4 (sleep at once) has every one wake the worker, a cost the
// smallest steps show; at 1024^2 and up 16 keeps the worker out of the step's rank-r updates
// as well as 4 does (docs/benchmarks.md, "OpenBLAS's spinning threads and the M update").
constexpr char kShortTimeout[] = "16";
constexpr unsigned kShortTimeoutValue = 16;

// The OpenBLAS internals that let a running process change the timeout. OpenBLAS 0.3.21 reads
// OPENBLAS_THREAD_TIMEOUT into a private variable when it loads (openblas_read_env, called
// from its constructor), and blas_thread_init copies it into the polling loop's limit only
// when it starts the workers; so: set the variable, re-read it, stop the workers
// (blas_thread_shutdown_, what OpenBLAS runs before a fork) and start them again. None of
// these is in cblas.h, so they are looked up at run time: a BLAS without them still links and
// keeps its default polling.
struct OpenBlasInternals {
  int (*get_parallel)() = nullptr;  // 0 sequential, 1 pthreads, 2 OpenMP
  void (*read_env)() = nullptr;
  unsigned (*thread_timeout)() = nullptr;
  int (*thread_shutdown)() = nullptr;
  int (*thread_init)() = nullptr;
};

OpenBlasInternals FindOpenBlasInternals() {
  // Look in the library this file's calls are bound to, not whichever comes first in the
  // global scope: in a Python extension (loaded RTLD_LOCAL) our OpenBLAS need not be there,
  // and another one may be.
  void* library = nullptr;
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&openblas_set_num_threads), &info) != 0 &&
      info.dli_fname != nullptr) {
    library = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  }
  void* scope = library != nullptr ? library : RTLD_DEFAULT;
  OpenBlasInternals f;
  f.get_parallel = reinterpret_cast<int (*)()>(dlsym(scope, "openblas_get_parallel"));
  f.read_env = reinterpret_cast<void (*)()>(dlsym(scope, "openblas_read_env"));
  f.thread_timeout = reinterpret_cast<unsigned (*)()>(dlsym(scope, "openblas_thread_timeout"));
  f.thread_shutdown = reinterpret_cast<int (*)()>(dlsym(scope, "blas_thread_shutdown_"));
  f.thread_init = reinterpret_cast<int (*)()>(dlsym(scope, "blas_thread_init"));
  // RTLD_NOLOAD only took another reference to a library this program is linked against:
  // dropping it leaves the library, and the pointers above, in place.
  if (library != nullptr) dlclose(library);
  return f;
}

// Gives OpenBLAS's worker threads the short polling timeout (see blas.h), unless the
// environment already names one: the user's, or ours from an earlier call.
absl::Status ShortenWorkerTimeout() {
  if (std::getenv(kTimeoutVariable) != nullptr) return absl::OkStatus();
  const std::string advice = absl::StrCat(
      "its worker threads keep polling for up to 2^28 cycles after each call, slowing what "
      "runs next; start the process with ",
      kTimeoutVariable, "=", kShortTimeout, " to have them sleep soon after");
  const OpenBlasInternals f = FindOpenBlasInternals();
  if (f.get_parallel == nullptr || f.read_env == nullptr || f.thread_timeout == nullptr ||
      f.thread_shutdown == nullptr || f.thread_init == nullptr) {
    return absl::UnimplementedError(absl::StrCat(
        "this BLAS lacks OpenBLAS 0.3's openblas_get_parallel, openblas_read_env, "
        "openblas_thread_timeout, blas_thread_shutdown_ or blas_thread_init; if it is "
        "OpenBLAS, ",
        advice));
  }
  const int parallel = f.get_parallel();
  if (parallel == 0) return absl::OkStatus();  // sequential build: no worker threads at all
  if (parallel != 1) {
    return absl::UnimplementedError(absl::StrCat(
        "OpenBLAS is not its pthread build (openblas_get_parallel() = ", parallel,
        ", expected 1): its threads follow OpenMP's wait policy, not ", kTimeoutVariable));
  }
  if (setenv(kTimeoutVariable, kShortTimeout, /*overwrite=*/0) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot set ", kTimeoutVariable, ": ", std::strerror(errno), "; ", advice));
  }
  f.read_env();
  if (const unsigned read = f.thread_timeout(); read != kShortTimeoutValue) {
    // Not the OpenBLAS these internals were written against: leave it as it was.
    unsetenv(kTimeoutVariable);
    f.read_env();
    return absl::UnimplementedError(absl::StrCat(
        "OpenBLAS re-read ", kTimeoutVariable, "=", kShortTimeout, " as ", read, "; ", advice));
  }
  f.thread_shutdown();
  f.thread_init();
  return absl::OkStatus();
}

}  // namespace

absl::Status SetBlasThreads(int threads) {
  threads = std::max(1, threads);
  openblas_set_num_threads(threads);
  return threads >= 2 ? ShortenWorkerTimeout() : absl::OkStatus();
}

int BlasThreads() { return openblas_get_num_threads(); }

}  // namespace dion
