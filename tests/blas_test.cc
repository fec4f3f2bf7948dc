// The OpenBLAS/LAPACK wrappers on row-major views, against Eigen products in double.
#include "common/blas.h"

#include <dirent.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <set>
#include <string>

#include "tests/reference.h"

namespace dion {
namespace {

using testing::GaussianD;

MatrixD Op(const MatrixD& a, Trans t) { return t == Trans::kYes ? MatrixD(a.transpose()) : a; }

// Float32 GEMM with inner dimension k has rounding ~ k * 6e-8 relative to the summands;
// 1e-5 of the largest entry is a safe bound for k <= 40.
constexpr double kGemmTolerance = 1e-5;

TEST(Gemm, AllTransposeCombinationsWithAlphaAndBeta) {
  for (Trans ta : {Trans::kNo, Trans::kYes}) {
    for (Trans tb : {Trans::kNo, Trans::kYes}) {
      const int m = 13, n = 7, k = 40;
      const MatrixD A = ta == Trans::kYes ? GaussianD(k, m, 1) : GaussianD(m, k, 1);
      const MatrixD B = tb == Trans::kYes ? GaussianD(n, k, 2) : GaussianD(k, n, 2);
      const MatrixD C0 = GaussianD(m, n, 3);
      Matrix C = C0.cast<float>();
      Gemm(ta, tb, -0.5f, A.cast<float>(), B.cast<float>(), 0.75f, C);
      const MatrixD expected = -0.5 * Op(A, ta) * Op(B, tb) + 0.75 * C0;
      EXPECT_LE(testing::MaxRelativeError(C.cast<double>(), expected), kGemmTolerance);
    }
  }
}

TEST(Gemm, WorksOnBlocksOfLargerMatrices) {
  const MatrixD big = GaussianD(20, 30, 4);
  Matrix bigf = big.cast<float>();
  Matrix C = Matrix::Zero(20, 30);
  // C[2:7, 3:9] = big[0:5, 0:4] * big[5:9, 10:16]
  Gemm(Trans::kNo, Trans::kNo, 1.0f, bigf.block(0, 0, 5, 4), bigf.block(5, 10, 4, 6), 0.0f,
       C.block(2, 3, 5, 6));
  const MatrixD expected = big.block(0, 0, 5, 4) * big.block(5, 10, 4, 6);
  EXPECT_LE(testing::MaxRelativeError(C.block(2, 3, 5, 6).cast<double>(), expected),
            kGemmTolerance);
  EXPECT_EQ(C.block(0, 0, 2, 30).cwiseAbs().sum(), 0.0f) << "GEMM wrote outside its block";
}

TEST(Gemm, EmptyInnerDimensionScalesByBeta) {
  Matrix C = Matrix::Constant(3, 4, 2.0f);
  Gemm(Trans::kNo, Trans::kNo, 1.0f, Matrix(3, 0), Matrix(0, 4), 0.5f, C);
  EXPECT_TRUE((C.array() == 1.0f).all());
}

TEST(Syrk, UpperTriangleOfAtA) {
  const MatrixD A = GaussianD(50, 9, 5);
  Matrix C = Matrix::Constant(9, 9, -7.0f);
  SyrkUpperAtA(1.0f, A.cast<float>(), 0.0f, C);
  const MatrixD expected = A.transpose() * A;
  for (int i = 0; i < 9; ++i) {
    for (int j = 0; j < 9; ++j) {
      if (j >= i) {
        EXPECT_NEAR(C(i, j), expected(i, j), 1e-4 * expected.cwiseAbs().maxCoeff());
      } else {
        EXPECT_EQ(C(i, j), -7.0f) << "lower triangle must be left alone";
      }
    }
  }
}

TEST(Cholesky, FactorsPositiveDefiniteAndSolves) {
  const MatrixD A = GaussianD(40, 6, 6);
  const MatrixD C = A.transpose() * A;
  Matrix U = C.cast<float>();
  ASSERT_TRUE(CholeskyUpper(U));
  Matrix Uu = U.triangularView<Eigen::Upper>();
  const MatrixD UtU = Uu.cast<double>().transpose() * Uu.cast<double>();
  EXPECT_LE(testing::MaxRelativeError(UtU, C), 1e-5);
  // P U^{-1} with P = A gives orthonormal columns (Cholesky QR).
  Matrix P = A.cast<float>();
  SolveUpperRight(Uu, P);
  const MatrixD PtP = P.cast<double>().transpose() * P.cast<double>();
  EXPECT_LE((PtP - MatrixD::Identity(6, 6)).cwiseAbs().maxCoeff(), 1e-4);
}

TEST(Cholesky, ReportsFailureOnIndefiniteMatrix) {
  Matrix C(2, 2);
  C << 1, 2, 2, 1;  // eigenvalues 3 and -1
  EXPECT_FALSE(CholeskyUpper(C));
}

TEST(HouseholderQr, GivesOrthonormalQAndUpperR) {
  const MatrixD A = GaussianD(30, 8, 7);
  Matrix Q = A.cast<float>();
  Matrix R;
  HouseholderQr(Q, &R);
  ASSERT_EQ(R.rows(), 8);
  const MatrixD QR = Q.cast<double>() * R.cast<double>();
  EXPECT_LE(testing::MaxRelativeError(QR, A), 1e-5);
  const MatrixD QtQ = Q.cast<double>().transpose() * Q.cast<double>();
  EXPECT_LE((QtQ - MatrixD::Identity(8, 8)).cwiseAbs().maxCoeff(), 1e-5);
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < i; ++j) EXPECT_EQ(R(i, j), 0.0f);
}

TEST(BlasThreads, SetAndGet) {
  const int before = BlasThreads();
  EXPECT_TRUE(SetBlasThreads(1).ok());
  EXPECT_EQ(BlasThreads(), 1);
  SetBlasThreads(before).IgnoreError();
  EXPECT_EQ(BlasThreads(), before);
}

constexpr char kTimeoutVariable[] = "OPENBLAS_THREAD_TIMEOUT";

std::optional<std::string> Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::nullopt : std::optional<std::string>(value);
}

// The environment the process started with, which OpenBLAS read when it loaded.
const std::optional<std::string> kTimeoutAtStart = Env(kTimeoutVariable);

// OpenBLAS's own copy of OPENBLAS_THREAD_TIMEOUT as it last read it (0 when unset), or nullopt
// for a BLAS that does not export it.
std::optional<unsigned> LibraryTimeout() {
  auto get = reinterpret_cast<unsigned (*)()>(dlsym(RTLD_DEFAULT, "openblas_thread_timeout"));
  if (get == nullptr) return std::nullopt;
  return get();
}

// The ids of this process's threads, OpenBLAS's workers among them.
std::set<std::string> ThreadIds() {
  std::set<std::string> ids;
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return ids;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ids.insert(entry->d_name);
  }
  closedir(dir);
  return ids;
}

// Products big enough that OpenBLAS splits them over its threads (its sgemm stays on the
// caller's thread below m n k = 2^18), each checked against the product in double.
// Not under ThreadSanitizer: OpenBLAS is not instrumented, so TSan sees its worker's memset of
// C but not the synchronisation that hands C back, and reports a race (the TSan build runs
// with one BLAS thread for that reason; the restart itself is still checked there).
void ExpectThreadedGemmsCorrect() {
#if defined(__SANITIZE_THREAD__)
  return;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
  return;
#endif
#endif
  const int m = 96, n = 80, k = 128;
  for (uint64_t seed = 10; seed < 13; ++seed) {
    const MatrixD A = GaussianD(m, k, seed), B = GaussianD(k, n, seed + 100);
    Matrix C(m, n);
    Gemm(Trans::kNo, Trans::kNo, 1.0f, A.cast<float>(), B.cast<float>(), 0.0f, C);
    // Far above float32 rounding at k = 128 with random signs, far below a block of C that a
    // worker left unwritten or wrote twice.
    EXPECT_LE(testing::MaxRelativeError(C.cast<double>(), A * B), 1e-5) << seed;
  }
}

// Two or more threads give OpenBLAS's workers the short polling timeout, by setting the
// variable, having OpenBLAS re-read it and restarting the workers; one thread changes nothing.
TEST(BlasThreads, TwoThreadsGiveOpenBlasWorkersTheShortTimeout) {
  if (!LibraryTimeout().has_value()) GTEST_SKIP() << "not OpenBLAS: no openblas_thread_timeout";
  const int before = BlasThreads();
  // Unless the user set it, the variable is ours from an earlier SetBlasThreads(2) in this
  // process (any test's): unset it so that this test sees the restart.
  if (!kTimeoutAtStart.has_value()) unsetenv(kTimeoutVariable);

  ASSERT_TRUE(SetBlasThreads(1).ok());
  EXPECT_EQ(Env(kTimeoutVariable), kTimeoutAtStart) << "one thread must leave it alone";

  const std::set<std::string> threads_before = ThreadIds();
  const absl::Status status = SetBlasThreads(2);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(BlasThreads(), 2);
  if (kTimeoutAtStart.has_value()) {
    // The user's value, as OpenBLAS read it when it loaded.
    EXPECT_EQ(Env(kTimeoutVariable), kTimeoutAtStart);
    EXPECT_EQ(LibraryTimeout(), static_cast<unsigned>(std::atoi(kTimeoutAtStart->c_str())));
  } else {
    EXPECT_EQ(Env(kTimeoutVariable), "16");
    EXPECT_EQ(LibraryTimeout(), 16u);
    // This call restarted the workers: a thread exists that did not before.
    const std::set<std::string> threads_after = ThreadIds();
    bool new_thread = false;
    for (const std::string& id : threads_after) new_thread |= threads_before.count(id) == 0;
    EXPECT_TRUE(new_thread) << "OpenBLAS's workers were not restarted";
  }
  // The restarted workers compute, and the ones asleep between calls wake up for the next.
  ExpectThreadedGemmsCorrect();

  SetBlasThreads(before).IgnoreError();
}

// A timeout in the environment is the user's: kept, not re-read, the workers left running.
TEST(BlasThreads, KeepsTheTimeoutTheEnvironmentNames) {
  if (!LibraryTimeout().has_value()) GTEST_SKIP() << "not OpenBLAS: no openblas_thread_timeout";
  const int before = BlasThreads();
  const std::optional<std::string> at_entry = Env(kTimeoutVariable);
  ASSERT_EQ(setenv(kTimeoutVariable, "28", /*overwrite=*/1), 0);
  const std::optional<unsigned> library_before = LibraryTimeout();
  const std::set<std::string> threads_before = ThreadIds();

  EXPECT_TRUE(SetBlasThreads(2).ok());
  EXPECT_EQ(Env(kTimeoutVariable), "28");
  EXPECT_EQ(LibraryTimeout(), library_before) << "OpenBLAS re-read the environment";
  const std::set<std::string> threads_after = ThreadIds();
  for (const std::string& id : threads_before) {
    EXPECT_EQ(threads_after.count(id), 1u) << "thread " << id << " was stopped";
  }
  ExpectThreadedGemmsCorrect();

  SetBlasThreads(before).IgnoreError();  // before the variable goes: no restart
  if (at_entry.has_value()) {
    setenv(kTimeoutVariable, at_entry->c_str(), /*overwrite=*/1);
  } else {
    unsetenv(kTimeoutVariable);
  }
}

}  // namespace
}  // namespace dion
