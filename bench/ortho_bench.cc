// Time and orthogonality error of every orthonormalization method on an m x r matrix of
// chosen condition numbers, beside classical and modified Gram-Schmidt as baselines.
//
// The test matrix is A = U diag(s) V^T, s geometric from 1 to 1 / cond, built in double
// (Eigen Householder QR of Gaussians) and rounded to float once. Each method runs once as a
// warm-up (which also draws and caches the rcqr sketch), then --reps timed rounds, each
// running every method once on a fresh copy of A (copy outside the timed region), so that
// load from other processes hits all methods alike; the table shows the median and the
// minimum. The error is ||P^T P - I||_max in double (OrthogonalityError) of the warm-up
// result (every run of a method gives the same result).
// For scale, the table header also gives the median time of one m x n x r GEMM (P = B Q),
// of which a Dion step runs four.
//
// Gram-Schmidt is here as a baseline only, written plainly in float32 on a column-major copy:
// CGS with two BLAS-2 GEMVs per column, MGS with Eigen dot/axpy column operations.
//
// Output: a markdown table on stdout; progress on stderr. Numbers are wall-clock on whatever
// machine runs it; on a shared machine they are noisy (compare medians within one run).
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <Eigen/QR>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "bench/median.h"
#include "common/blas.h"
#include "common/matrix.h"
#include "common/orthonormalize.h"
#include "common/rng.h"

ABSL_FLAG(int, m, 4096, "Rows of P");
ABSL_FLAG(int, r, 256, "Columns of P (the Dion rank)");
ABSL_FLAG(int, n, 4096, "Inner dimension of the reference GEMM P = B Q (the other side of X)");
ABSL_FLAG(int, reps, 7, "Timed repetitions per method (median reported)");
ABSL_FLAG(std::string, conditions, "1e1,1e2,1e6",
          "Comma-separated condition numbers of P (1e1: auto does one pass, 1e2: two, 1e6: rcqr)");
ABSL_FLAG(bool, gram_schmidt, true, "Also time classical and modified Gram-Schmidt");
ABSL_FLAG(int, threads, 0, "OpenBLAS threads; 0 = OpenBLAS default");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the test matrices (and of the rcqr sketch)");

namespace dion {
namespace {

using Clock = std::chrono::steady_clock;
using ColMatrix = Eigen::MatrixXf;  // column-major: Gram-Schmidt works column by column

// U diag(s) V^T with s_i = cond^(-i / (r - 1)), in double, rounded to float.
Matrix MatrixWithCondition(int m, int r, double condition, uint64_t seed) {
  auto orthonormal = [](int rows, int cols, uint64_t s) {
    Rng rng(s);
    Eigen::MatrixXd G(rows, cols);
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j) G(i, j) = rng.Normal();
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(G);
    return Eigen::MatrixXd(qr.householderQ() * Eigen::MatrixXd::Identity(rows, cols));
  };
  const Eigen::MatrixXd U = orthonormal(m, r, seed);
  const Eigen::MatrixXd V = orthonormal(r, r, MixSeed(seed, 1));
  Eigen::VectorXd s(r);
  for (int i = 0; i < r; ++i) s(i) = r == 1 ? 1.0 : std::pow(condition, -double(i) / (r - 1));
  return (U * s.asDiagonal() * V.transpose()).cast<float>();
}

// Classical Gram-Schmidt: q_j = normalise(a_j - Q_{<j} (Q_{<j}^T a_j)).
void ClassicalGramSchmidt(MatrixRef P) {
  ColMatrix Q = P;
  const int m = static_cast<int>(Q.rows()), r = static_cast<int>(Q.cols());
  Eigen::VectorXf h(r);
  for (int j = 0; j < r; ++j) {
    float* q = Q.col(j).data();
    if (j > 0) {
      cblas_sgemv(CblasColMajor, CblasTrans, m, j, 1.0f, Q.data(), m, q, 1, 0.0f, h.data(), 1);
      cblas_sgemv(CblasColMajor, CblasNoTrans, m, j, -1.0f, Q.data(), m, h.data(), 1, 1.0f, q, 1);
    }
    Q.col(j) /= Q.col(j).norm();
  }
  P = Q;
}

// Modified Gram-Schmidt: subtract the projections one previous column at a time.
void ModifiedGramSchmidt(MatrixRef P) {
  ColMatrix Q = P;
  for (Eigen::Index j = 0; j < Q.cols(); ++j) {
    for (Eigen::Index i = 0; i < j; ++i) Q.col(j) -= Q.col(i).dot(Q.col(j)) * Q.col(i);
    Q.col(j) /= Q.col(j).norm();
  }
  P = Q;
}

struct Result {
  std::string used;
  std::vector<double> ms;
  double error = 0;
};

struct Named {
  std::string name;
  std::function<std::string(MatrixRef)> run;
};

// One warm-up call per method, then --reps rounds; each round runs every method once on a
// fresh copy of A, so that load from other processes on a shared machine hits all alike.
std::vector<Result> TimeRoundRobin(const Matrix& A, int reps, const std::vector<Named>& methods) {
  std::vector<Result> results(methods.size());
  Matrix P = A;
  for (size_t i = 0; i < methods.size(); ++i) {
    P = A;
    results[i].used = methods[i].run(P);
    results[i].error = OrthogonalityError(P);
  }
  for (int rep = 0; rep < reps; ++rep) {
    for (size_t i = 0; i < methods.size(); ++i) {
      P = A;
      const auto start = Clock::now();
      methods[i].run(P);
      results[i].ms.push_back(
          std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    }
  }
  return results;
}

double GemmMs(int m, int n, int r, int reps) {
  Matrix B(m, n), Q(n, r), P(m, r);
  Rng rng(7);
  rng.FillNormal(Q);
  B.setConstant(0.5f);  // values do not matter for the time of a GEMM
  std::vector<double> ms;
  for (int rep = 0; rep <= reps; ++rep) {
    const auto start = Clock::now();
    Gemm(Trans::kNo, Trans::kNo, 1.0f, B, Q, 0.0f, P);
    if (rep > 0) ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return Median(ms);
}

int Main() {
  const int m = absl::GetFlag(FLAGS_m), r = absl::GetFlag(FLAGS_r), n = absl::GetFlag(FLAGS_n);
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (m < r || r < 1) {
    absl::FPrintF(stderr, "need m >= r >= 1, got m %d r %d\n", m, r);
    return 2;
  }
  std::vector<double> conditions;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_conditions), ',')) {
    double c = 0;
    if (!absl::SimpleAtod(part, &c) || !(c >= 1)) {
      absl::FPrintF(stderr, "--conditions: '%s' is not a number >= 1\n", part);
      return 2;
    }
    conditions.push_back(c);
  }
  if (absl::GetFlag(FLAGS_threads) > 0) {
    if (absl::Status s = SetBlasThreads(absl::GetFlag(FLAGS_threads)); !s.ok()) {
      absl::FPrintF(stderr, "note: --threads=%d: %s\n", absl::GetFlag(FLAGS_threads), s.message());
    }
  }

  absl::FPrintF(stderr, "timing one %d x %d x %d GEMM\n", m, n, r);
  const double gemm_ms = GemmMs(m, n, r, reps);
  absl::PrintF("m = %d, r = %d, %d reps (median), OpenBLAS threads %d. "
               "One %d x %d x %d GEMM (P = B Q): %.2f ms; a Dion step runs four.\n\n",
               m, r, reps, BlasThreads(), m, n, r, gemm_ms);
  absl::PrintF("| cond | method | used | median ms | min ms | vs qr | vs GEMM | ||P^T P - I||_max |\n");
  absl::PrintF("|---|---|---|---|---|---|---|---|\n");

  for (double condition : conditions) {
    absl::FPrintF(stderr, "building the %d x %d matrix of condition %g\n", m, r, condition);
    const Matrix A = MatrixWithCondition(m, r, condition, seed);
    std::vector<Named> methods;
    for (OrthoMethod method : {OrthoMethod::kQr, OrthoMethod::kCqr, OrthoMethod::kCqr2,
                               OrthoMethod::kRcqr, OrthoMethod::kAuto}) {
      OrthoOptions options;
      options.method = method;
      options.seed = seed;
      methods.push_back({std::string(OrthoMethodName(method)), [options](MatrixRef P) {
                           const OrthoReport report = Orthonormalize(P, options);
                           std::string used(OrthoMethodName(report.used));
                           if (report.fallbacks > 0) used += " (fallback)";
                           if (!report.ok) used += " (FAILED)";
                           return used;
                         }});
    }
    if (absl::GetFlag(FLAGS_gram_schmidt)) {
      methods.push_back({"CGS", [](MatrixRef P) { ClassicalGramSchmidt(P); return std::string("-"); }});
      methods.push_back({"MGS", [](MatrixRef P) { ModifiedGramSchmidt(P); return std::string("-"); }});
    }
    const std::vector<Result> results = TimeRoundRobin(A, reps, methods);
    double qr_ms = 0;
    for (size_t i = 0; i < methods.size(); ++i) {
      const Result& result = results[i];
      const double median = Median(result.ms);
      const double min = *std::min_element(result.ms.begin(), result.ms.end());
      if (methods[i].name == "qr") qr_ms = median;
      absl::PrintF("| %.0e | %s | %s | %.2f | %.2f | %.2f | %.3f | %.1e |\n", condition,
                   methods[i].name, result.used, median, min, median / qr_ms, median / gemm_ms,
                   result.error);
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dion::Main();
}
