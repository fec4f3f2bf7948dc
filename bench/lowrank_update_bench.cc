// The cost of applying a Dion step to X with the project's deterministic kernel
// (common/lowrank_update.h, what the shard and every replica run) against the OpenBLAS sgemm
// it replaced, X = decay X - scale P Q^T (beta = decay), at the shapes and ranks of a run.
//
// For each m x n shape and rank r, both are timed in the same run, on the same operands and
// in the orientation DionStep uses (P on the tall side), alternating repetition by repetition
// so that load from other processes on a shared machine hits both alike; a repetition is a
// loop of calls long enough (--min_seconds) for the clock. Figures are medians.
//
// Output: a markdown table on stdout; progress on stderr.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "bench/median.h"
#include "common/blas.h"
#include "common/dion.h"
#include "common/lowrank_update.h"
#include "common/matrix.h"
#include "common/rng.h"

ABSL_FLAG(std::string, shapes, "784x256,256x784,256x256,1024x1024,4096x1024",
          "Comma-separated m x n shapes of X");
ABSL_FLAG(std::string, rank_fractions, "0.25,0.0625",
          "Comma-separated rank fractions; r = DionRank(m, n, fraction, 1)");
ABSL_FLAG(int, reps, 9, "Timed repetitions of each (median)");
ABSL_FLAG(double, min_seconds, 0.02, "Minimum duration of one repetition (calls are looped)");
ABSL_FLAG(int, threads, 1,
          "OpenBLAS threads, and the kernel's (dion-server's --blas_threads default is 1)");
ABSL_FLAG(uint64_t, seed, 1, "Seed of X, P and Q");

namespace dion {
namespace {

using Clock = std::chrono::steady_clock;

template <typename F>
double SecondsPerCall(int calls, F&& f) {
  const auto start = Clock::now();
  for (int i = 0; i < calls; ++i) f();
  return std::chrono::duration<double>(Clock::now() - start).count() / calls;
}

struct Row {
  int64_t m = 0, n = 0;
  int r = 0;
  double blas = 0, kernel = 0;  // median seconds per call
};

Row Bench(int64_t m, int64_t n, int r, int reps, double min_seconds, uint64_t seed) {
  const bool transposed = DionTransposed(m, n);
  const int64_t tall = std::max(m, n), short_side = std::min(m, n);
  Matrix X(m, n), P(tall, r), Q(short_side, r);
  Rng rng(seed);
  rng.FillNormal(X);
  rng.FillNormal(P);
  rng.FillNormal(Q);
  const float decay = 0.999f, scale = 1e-3f;
  // A and B of X = decay X - scale A B^T, as ApplyLowRankUpdate orients them.
  const Matrix& A = transposed ? Q : P;
  const Matrix& B = transposed ? P : Q;
  const auto blas = [&] { Gemm(Trans::kNo, Trans::kYes, -scale, A, B, decay, X); };
  const auto kernel = [&] { LowRankUpdate(X, decay, scale, A, B, BlasThreads()); };
  blas();  // warm-up, and a call count that fills --min_seconds
  kernel();
  const double once = std::max(SecondsPerCall(1, blas), SecondsPerCall(1, kernel));
  const int calls = std::max(1, static_cast<int>(min_seconds / std::max(once, 1e-7)));
  std::vector<double> t_blas, t_kernel;
  for (int rep = 0; rep < reps; ++rep) {
    t_blas.push_back(SecondsPerCall(calls, blas));
    t_kernel.push_back(SecondsPerCall(calls, kernel));
  }
  return Row{m, n, r, Median(t_blas), Median(t_kernel)};
}

bool ParseShape(absl::string_view text, int64_t* m, int64_t* n) {
  const std::vector<absl::string_view> parts = absl::StrSplit(text, 'x');
  return parts.size() == 2 && absl::SimpleAtoi(parts[0], m) && absl::SimpleAtoi(parts[1], n) &&
         *m > 0 && *n > 0;
}

int Main() {
  if (absl::Status s = SetBlasThreads(absl::GetFlag(FLAGS_threads)); !s.ok()) {
    absl::FPrintF(stderr, "note: --threads=%d: %s\n", absl::GetFlag(FLAGS_threads), s.message());
  }
  std::vector<double> fractions;
  for (absl::string_view part :
       absl::StrSplit(absl::GetFlag(FLAGS_rank_fractions), ',', absl::SkipWhitespace())) {
    double f = 0;
    if (!absl::SimpleAtod(part, &f) || !(f > 0 && f <= 1)) {
      absl::FPrintF(stderr, "--rank_fractions: '%s' is not a number in (0, 1]\n", part);
      return 2;
    }
    fractions.push_back(f);
  }
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  std::vector<Row> rows;
  for (absl::string_view shape :
       absl::StrSplit(absl::GetFlag(FLAGS_shapes), ',', absl::SkipWhitespace())) {
    int64_t m = 0, n = 0;
    if (!ParseShape(shape, &m, &n)) {
      absl::FPrintF(stderr, "--shapes: '%s' is not MxN with positive M and N\n", shape);
      return 2;
    }
    for (double f : fractions) {
      const int r = DionRank(m, n, f, 1);
      absl::FPrintF(stderr, "%dx%d r=%d ...\n", m, n, r);
      rows.push_back(Bench(m, n, r, reps, absl::GetFlag(FLAGS_min_seconds),
                           absl::GetFlag(FLAGS_seed) + rows.size()));
    }
  }
  absl::PrintF("OpenBLAS threads: %d; %d repetitions, medians\n\n", absl::GetFlag(FLAGS_threads),
               reps);
  absl::PrintF(
      "| X (m x n) | r | OpenBLAS sgemm ms | kernel ms | kernel / sgemm | kernel GFLOP/s |\n");
  absl::PrintF("|---|---|---|---|---|---|\n");
  for (const Row& row : rows) {
    const double flops = 2.0 * row.m * row.n * row.r;
    absl::PrintF("| %dx%d | %d | %.3f | %.3f | %.2f | %.1f |\n", row.m, row.n, row.r,
                 row.blas * 1e3, row.kernel * 1e3, row.kernel / row.blas, flops / row.kernel / 1e9);
  }
  return 0;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dion::Main();
}
