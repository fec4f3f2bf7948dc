// How close a Dion step gets to its GEMM floor, and what it costs next to Muon.
//
// For each square n x n parameter and rank r the bench times, in the same run, at the same
// shapes and OpenBLAS thread count:
//   step       DionStep(X, G, state) with a fresh gradient G per repetition (generated
//              outside the timed region); the state persists across repetitions as in a real
//              run, after one warm-up step;
//   GEMM-bound the four sgemm calls a step consists of, each timed alone on the step's own
//              operands:  P = B Q,  R = B^T P,  M -= (1 - mu) P R^T (beta 1),
//              X = decay X - scale P Q^T (beta decay); the sum of their medians;
//   kernels    the two rank-r updates as the step runs them (LowRankUpdate on the step's
//              threads, common/lowrank_update.h), timed alone: with P = B Q and R = B^T P
//              they give the products-bound, the step's own four products;
//   split      the rest of a step, timed alone: the finiteness check of G and of the n x r
//              factors P and R (dion::AllFinite, as common/dion.cc does them), the
//              B = M + G pass, Orthonormalize(P) on the step's un-normalised P, the column
//              normalisation of R;
//   muon       NewtonSchulz (5 steps) on an n x n matrix.
// Also the minor page faults of the process during each step (getrusage): memory the step
// allocates and the allocator had returned to the kernel, and what one fault costs (~12 us on
// the development VM: docs/benchmarks.md "Page faults in the step"); running the bench with
// GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:glibc.malloc.mmap_threshold=... shows the step
// with an allocator that keeps freed memory.
// Step and GEMMs are interleaved repetition by repetition, so that load from other processes
// on a shared machine hits both alike. Every figure is a median over repetitions.
//
// Output: a markdown table (default) or one JSON object (--json) on stdout; progress on stderr.
#include <cblas.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "bench/median.h"
#include "common/blas.h"
#include "common/dion.h"
#include "common/lowrank_update.h"
#include "common/matrix.h"
#include "common/muon.h"
#include "common/orthonormalize.h"
#include "common/rng.h"

ABSL_FLAG(std::string, shapes, "1024,2048,4096", "Comma-separated n of the n x n parameters");
ABSL_FLAG(std::string, rank_fractions, "0.25,0.0625",
          "Comma-separated rank fractions; r = DionRank(n, n, fraction, 1). "
          "At n = 4096 the defaults give the target points r = 1024 and r = 256");
ABSL_FLAG(std::string, ranks, "",
          "Comma-separated explicit ranks used instead of --rank_fractions (capped at n)");
ABSL_FLAG(int, reps, 7, "Timed repetitions (median) for n < --large_n");
ABSL_FLAG(int, large_reps, 5, "Timed repetitions (median) for n >= --large_n");
ABSL_FLAG(int, large_n, 4096, "Shapes at least this large use --large_reps / --muon_large_reps");
ABSL_FLAG(int, muon_reps, 3, "Timed NewtonSchulz repetitions for n < --large_n");
ABSL_FLAG(int, muon_large_reps, 2, "Timed NewtonSchulz repetitions for n >= --large_n");
ABSL_FLAG(int, threads, 0, "OpenBLAS threads; 0 = hardware threads");
ABSL_FLAG(bool, json, false, "Print one JSON object on stdout instead of a markdown table");
ABSL_FLAG(std::string, json_out, "",
          "Also write the JSON object to this file (e.g. for compare_torch.py --cpp_json)");
ABSL_FLAG(bool, muon, true, "Also time NewtonSchulz (5 steps) at each shape");
ABSL_FLAG(std::string, method, "auto", "Orthonormalization method: auto, qr, cqr, cqr2, rcqr");
ABSL_FLAG(double, target_ratio, 1.10, "Target step / GEMM-bound ratio, flagged in the table");
ABSL_FLAG(uint64_t, seed, 1, "Seed of X, G and the initial Q");

namespace dion {
namespace {

using Clock = std::chrono::steady_clock;

template <typename F>
double Seconds(F&& f) {
  const auto start = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// What one minor page fault costs here: the first touch of every page of a fresh 64 MiB
// anonymous mapping, median of 5, in microseconds per page.
double FaultMicroseconds() {
  constexpr size_t kBytes = size_t{64} << 20;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<double> us;
  for (int rep = 0; rep < 5; ++rep) {
    void* map = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return NAN;
    volatile char* bytes = static_cast<char*>(map);
    const double t = Seconds([&] {
      for (size_t i = 0; i < kBytes; i += page) bytes[i] = 1;
    });
    munmap(map, kBytes);
    us.push_back(t * 1e6 / static_cast<double>(kBytes / page));
  }
  return Median(us);
}

// DionStep's phases, timed from outside through its phase_end callback.
struct PhaseSeconds {
  double power = 0, ortho = 0, update = 0;  // the rest of a step is in no phase here
  Clock::time_point lap = Clock::now();

  void End(DionPhase phase) {
    const Clock::time_point now = Clock::now();
    const double seconds = std::chrono::duration<double>(now - lap).count();
    lap = now;
    if (phase == DionPhase::kPowerIteration) power += seconds;
    if (phase == DionPhase::kOrthonormalize) ortho += seconds;
    if (phase == DionPhase::kUpdate) update += seconds;
  }
};

std::vector<double> ParseDoubles(absl::string_view flag, absl::string_view text) {
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    double v = 0.0;
    if (!absl::SimpleAtod(part, &v)) {
      absl::FPrintF(stderr, "--%s: '%s' is not a number\n", flag, part);
      std::exit(2);
    }
    out.push_back(v);
  }
  return out;
}

// Gaussian fill over two threads: the Box-Muller fill of a 4096^2 gradient takes about a
// second on one core, which would otherwise dominate the wall time of the bench.
void FillGradient(MatrixRef G, uint64_t seed) {
  const Eigen::Index half = G.rows() / 2;
  std::thread other([&] {
    Rng rng(MixSeed(seed, 1));
    rng.FillNormal(G.bottomRows(G.rows() - half));
  });
  Rng rng(MixSeed(seed, 0));
  rng.FillNormal(G.topRows(half));
  other.join();
}

struct Row {
  int64_t n = 0;
  int r = 0;
  double fraction = 0.0;  // 0 when the rank was given explicitly
  int reps = 0;
  double step = 0, gemm = 0;                          // medians, seconds
  // Noise checks for a shared machine: the fastest repetition of the step and the sum of
  // the four GEMMs' fastest calls (load from other processes only ever adds time), and the
  // median of the per-repetition GEMM sums.
  double step_min = 0, gemm_min = 0, gemm_rep_median = 0;
  double gemm_pq = 0, gemm_btp = 0, gemm_m = 0, gemm_x = 0;
  double kernel_m = 0, kernel_x = 0;  // the step's rank-r updates, timed alone
  double finite = 0, factor_checks = 0, b_pass = 0, ortho = 0, colnorm = 0;
  // The step's phases (timed through DionStep's phase_end), medians: where inside DionStep
  // the time goes, to compare with the isolated timings above.
  double in_power = 0, in_ortho = 0, in_update = 0, in_rest = 0;
  double faults = 0;             // minor page faults during a step, median
  int ortho_fallback_steps = 0;  // timed steps whose orthonormalization fell back
  std::string ortho_used;        // method(s) the timed steps reported
  double muon = NAN;             // NewtonSchulz median, seconds (NAN when not measured)
  int muon_reps = 0;

  double Gflops() const { return 8.0 * n * n * r / gemm / 1e9; }
  double Ratio() const { return step / gemm; }
  // The step over its own four products (two sgemm, two kernel updates).
  double Products() const { return gemm_pq + gemm_btp + kernel_m + kernel_x; }
  double ProductsRatio() const { return step / Products(); }
  double MinRatio() const { return step_min / gemm_min; }
  double Rest() const { return finite + factor_checks + b_pass + ortho + colnorm; }
};

// Per-repetition timings of BenchDion, seconds.
struct Samples {
  std::vector<double> step, gemm, pq, btp, gm, gx, km, kx, finite, checks, b_pass, ortho, colnorm;
  std::vector<double> in_power, in_ortho, in_update, in_rest;
  std::vector<double> faults;
};

// The medians of `s`, and the minima of the noise checks, into `row`.
void Summarise(const Samples& s, Row& row) {
  const auto min_of = [](const std::vector<double>& v) {
    return *std::min_element(v.begin(), v.end());
  };
  row.step = Median(s.step);
  row.step_min = min_of(s.step);
  row.gemm_min = min_of(s.pq) + min_of(s.btp) + min_of(s.gm) + min_of(s.gx);
  row.gemm_rep_median = Median(s.gemm);
  row.gemm_pq = Median(s.pq);
  row.gemm_btp = Median(s.btp);
  row.gemm_m = Median(s.gm);
  row.gemm_x = Median(s.gx);
  row.kernel_m = Median(s.km);
  row.kernel_x = Median(s.kx);
  // The brief's GEMM-bound: the sum of the four medians (robust to one slow call).
  row.gemm = row.gemm_pq + row.gemm_btp + row.gemm_m + row.gemm_x;
  row.finite = Median(s.finite);
  row.factor_checks = Median(s.checks);
  row.b_pass = Median(s.b_pass);
  row.ortho = Median(s.ortho);
  row.colnorm = Median(s.colnorm);
  row.in_power = Median(s.in_power);
  row.in_ortho = Median(s.in_ortho);
  row.in_update = Median(s.in_update);
  row.in_rest = Median(s.in_rest);
  row.faults = Median(s.faults);
}

// Minor page faults of this process so far.
int64_t MinorFaults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

Row BenchDion(int64_t n, int r, double fraction, int reps, const DionConfig& config,
              uint64_t seed) {
  Row row;
  row.n = n;
  row.r = r;
  row.fraction = fraction;
  row.reps = reps;
  const float decay = static_cast<float>(1.0 - config.lr * config.weight_decay);
  const float scale = static_cast<float>(config.lr);  // sqrt(m / n) = 1 for square X
  const float m_alpha = static_cast<float>(-(1.0 - config.mu));

  Matrix X(n, n), G(n, n);
  Rng(MixSeed(seed, 2)).FillNormal(X, 0.02);
  DionState state = InitDionState(n, n, r, MixSeed(seed, 3));
  // GEMM-bound operands: B is the step's own B = M + G, Q its incoming Q; M and X get
  // buffers of their own so the GEMM timing does not disturb the optimizer state.
  Matrix B(n, n), Q0(n, r), P(n, r), Po(n, r), R(n, r), Qn(n, r);
  Matrix Mg = Matrix::Zero(n, n), Xg = X;

  Samples samples;
  std::vector<std::string> used;
  for (int rep = -1; rep < reps; ++rep) {  // rep -1 is the warm-up
    FillGradient(G, MixSeed(seed, 4, rep + 1));
    Q0 = state.Q;
    bool all_finite = true;
    const double t_finite = Seconds([&] { all_finite = AllFinite(G); });
    const double t_b = Seconds([&] { B.noalias() = state.M + G; });

    absl::StatusOr<DionStepResult> result;
    PhaseSeconds phases;
    const int64_t faults_before = MinorFaults();
    const double t_step = Seconds([&] {
      phases.lap = Clock::now();
      result = DionStep(X, G, state, config, false, [&](DionPhase p) { phases.End(p); });
    });
    const int64_t step_faults = MinorFaults() - faults_before;
    if (!result.ok() || !all_finite) {
      absl::FPrintF(stderr, "DionStep failed at n=%d r=%d: %s\n", n, r,
                    result.status().ToString());
      std::exit(1);
    }

    const double t_pq = Seconds([&] { Gemm(Trans::kNo, Trans::kNo, 1.0f, B, Q0, 0.0f, P); });
    Po = P;
    const double t_ortho = Seconds([&] { Orthonormalize(Po, config.ortho); });
    const double t_btp = Seconds([&] { Gemm(Trans::kYes, Trans::kNo, 1.0f, B, Po, 0.0f, R); });
    const double t_colnorm = Seconds([&] {
      const Eigen::RowVectorXf norms = R.colwise().norm();
      Qn = R.array().rowwise() / (norms.array() + static_cast<float>(config.eps));
    });
    bool factors_finite = true;
    const double t_checks = Seconds([&] { factors_finite = AllFinite(P) && AllFinite(R); });
    if (!factors_finite) std::abort();  // impossible for a finite Gaussian G
    const double t_m = Seconds([&] { Gemm(Trans::kNo, Trans::kYes, m_alpha, Po, R, 1.0f, Mg); });
    const double t_x = Seconds([&] { Gemm(Trans::kNo, Trans::kYes, -scale, Po, Qn, decay, Xg); });
    const int threads = BlasThreads();
    const double t_km = Seconds([&] { LowRankUpdate(Mg, 1.0f, -m_alpha, Po, R, threads); });
    const double t_kx = Seconds([&] { LowRankUpdate(Xg, decay, scale, Po, Qn, threads); });
    if (rep < 0) continue;

    samples.step.push_back(t_step);
    samples.pq.push_back(t_pq);
    samples.btp.push_back(t_btp);
    samples.gm.push_back(t_m);
    samples.gx.push_back(t_x);
    samples.km.push_back(t_km);
    samples.kx.push_back(t_kx);
    samples.gemm.push_back(t_pq + t_btp + t_m + t_x);
    samples.finite.push_back(t_finite);
    samples.checks.push_back(t_checks);
    samples.b_pass.push_back(t_b);
    samples.ortho.push_back(t_ortho);
    samples.colnorm.push_back(t_colnorm);
    samples.in_power.push_back(phases.power);
    samples.in_ortho.push_back(phases.ortho);
    samples.in_update.push_back(phases.update);
    samples.in_rest.push_back(t_step - phases.power - phases.ortho - phases.update);
    samples.faults.push_back(static_cast<double>(step_faults));
    if (result->ortho.fallbacks > 0) ++row.ortho_fallback_steps;
    const std::string name(OrthoMethodName(result->ortho.used));
    if (std::find(used.begin(), used.end(), name) == used.end()) used.push_back(name);
  }
  Summarise(samples, row);
  row.ortho_used = absl::StrJoin(used, "+");
  return row;
}

double BenchMuon(int64_t n, int reps, uint64_t seed) {
  Matrix G(n, n), A(n, n);
  FillGradient(G, MixSeed(seed, 5));
  std::vector<double> times;
  for (int rep = 0; rep < reps; ++rep) {
    A = G;
    times.push_back(Seconds([&] { NewtonSchulz(A, 5); }));
  }
  return Median(times);
}

std::string Ms(double seconds) {
  return std::isnan(seconds) ? "-" : absl::StrFormat("%.1f", seconds * 1e3);
}

void PrintMarkdown(const std::vector<Row>& rows, int threads, absl::string_view method,
                   double target) {
  absl::PrintF("Dion step, float32, OpenBLAS threads %d, ortho method %s, medians\n\n", threads,
               method);
  absl::PrintF(
      "| n | r | reps | step ms | GEMM-bound ms | sgemm GFLOP/s | step / GEMM | target <= %.2f"
      " | min step / min GEMM | products-bound ms | step / products | Newton-Schulz ms"
      " | step / NS | page faults / step |\n",
      target);
  absl::PrintF("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& row : rows) {
    const bool ok = row.Ratio() <= target;
    absl::PrintF("| %d | %d | %d | %s | %s | %.1f | %.3f | %s | %.3f | %s | %.3f | %s | %s | %.0f |\n",
                 row.n,
                 row.r, row.reps, Ms(row.step), Ms(row.gemm), row.Gflops(), row.Ratio(),
                 ok ? "met" : absl::StrFormat("missed by %.1f%%", (row.Ratio() / target - 1) * 100),
                 row.MinRatio(), Ms(row.Products()), row.ProductsRatio(), Ms(row.muon),
                 std::isnan(row.muon) ? "-" : absl::StrFormat("%.3f", row.step / row.muon),
                 row.faults);
  }
  absl::PrintF(
      "\nSplit of the step (medians, ms; each part timed alone on the step's own operands)\n\n");
  absl::PrintF(
      "| n | r | B Q | B^T P | M -= P R^T | X = dX - s P Q^T | M kernel | X kernel | finite(G) | finite(P), finite(R) "
      "| B = M + G | orthonormalize | colnorm(R) | products + rest | step | unexplained "
      "| ortho used (fallback steps) |\n");
  absl::PrintF("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& row : rows) {
    const double sum = row.Products() + row.Rest();
    absl::PrintF(
        "| %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s "
        "| %s (%d) |\n",
        row.n, row.r, Ms(row.gemm_pq), Ms(row.gemm_btp), Ms(row.gemm_m), Ms(row.gemm_x),
        Ms(row.kernel_m), Ms(row.kernel_x),
        Ms(row.finite), Ms(row.factor_checks), Ms(row.b_pass), Ms(row.ortho), Ms(row.colnorm),
        Ms(sum), Ms(row.step), Ms(row.step - sum), row.ortho_used, row.ortho_fallback_steps);
  }
}

void PrintPhases(const std::vector<Row>& rows) {
  absl::PrintF(
      "\nInside the step (phases timed through phase_end, medians, ms) next to the same work timed "
      "alone\n\n");
  absl::PrintF(
      "| n | r | power iteration: B Q, B^T P, checks, colnorm | alone | orthonormalize | alone | "
      "update: M, X kernels, Q copy | alone | rest: finite(G), B = M + G, allocation | alone |\n");
  absl::PrintF("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& row : rows) {
    absl::PrintF("| %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", row.n, row.r,
                 Ms(row.in_power),
                 Ms(row.gemm_pq + row.gemm_btp + row.factor_checks + row.colnorm),
                 Ms(row.in_ortho), Ms(row.ortho), Ms(row.in_update),
                 Ms(row.kernel_m + row.kernel_x), Ms(row.in_rest), Ms(row.finite + row.b_pass));
  }
}

std::string JsonNumber(double v) { return std::isnan(v) ? "null" : absl::StrFormat("%.6g", v); }

std::string Json(const std::vector<Row>& rows, int threads, absl::string_view method) {
  std::vector<std::string> items;
  for (const Row& row : rows) {
    items.push_back(absl::StrFormat(
        "{\"n\": %d, \"r\": %d, \"fraction\": %s, \"reps\": %d, \"step_s\": %s, "
        "\"gemm_bound_s\": %s, \"sgemm_gflops\": %s, \"ratio\": %s, \"gemm_pq_s\": %s, "
        "\"gemm_btp_s\": %s, \"gemm_m_s\": %s, \"gemm_x_s\": %s, \"finite_s\": %s, "
        "\"factor_checks_s\": %s, "
        "\"b_pass_s\": %s, \"ortho_s\": %s, \"colnorm_s\": %s, \"ortho_used\": \"%s\", "
        "\"ortho_fallback_steps\": %d, \"muon_s\": %s, \"muon_reps\": %d, \"step_min_s\": %s, "
        "\"gemm_bound_min_s\": %s, \"min_ratio\": %s, \"gemm_rep_median_s\": %s, "
        "\"in_step_power_s\": %s, \"in_step_ortho_s\": %s, \"in_step_update_s\": %s, "
        "\"in_step_rest_s\": %s, \"kernel_m_s\": %s, \"kernel_x_s\": %s, "
        "\"products_bound_s\": %s, \"products_ratio\": %s, \"step_page_faults\": %s}",
        row.n, row.r, JsonNumber(row.fraction), row.reps, JsonNumber(row.step),
        JsonNumber(row.gemm), JsonNumber(row.Gflops()), JsonNumber(row.Ratio()),
        JsonNumber(row.gemm_pq), JsonNumber(row.gemm_btp), JsonNumber(row.gemm_m),
        JsonNumber(row.gemm_x), JsonNumber(row.finite), JsonNumber(row.factor_checks),
        JsonNumber(row.b_pass),
        JsonNumber(row.ortho), JsonNumber(row.colnorm), row.ortho_used,
        row.ortho_fallback_steps, JsonNumber(row.muon), row.muon_reps, JsonNumber(row.step_min),
        JsonNumber(row.gemm_min), JsonNumber(row.MinRatio()), JsonNumber(row.gemm_rep_median),
        JsonNumber(row.in_power), JsonNumber(row.in_ortho), JsonNumber(row.in_update),
        JsonNumber(row.in_rest), JsonNumber(row.kernel_m), JsonNumber(row.kernel_x),
        JsonNumber(row.Products()), JsonNumber(row.ProductsRatio()), JsonNumber(row.faults)));
  }
  return absl::StrFormat("{\"bench\": \"dion_step\", \"threads\": %d, \"method\": \"%s\", "
                         "\"openblas\": \"%s\", \"rows\": [\n  %s\n]}\n",
                         threads, method,
                         absl::StripTrailingAsciiWhitespace(openblas_get_config()),
                         absl::StrJoin(items, ",\n  "));
}

int Main() {
  const std::string method_name = absl::GetFlag(FLAGS_method);
  absl::StatusOr<OrthoMethod> method = ParseOrthoMethod(method_name);
  if (!method.ok()) {
    absl::FPrintF(stderr, "--method: %s\n", method.status().ToString());
    return 2;
  }
  DionConfig config;
  config.ortho.method = *method;
  if (absl::Status s = ValidateDionConfig(config); !s.ok()) {
    absl::FPrintF(stderr, "%s\n", s.ToString());
    return 2;
  }
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  if (absl::Status s = SetBlasThreads(threads); !s.ok()) {
    absl::FPrintF(stderr, "note: %d OpenBLAS threads: %s\n", threads, s.message());
  }

  std::vector<int64_t> shapes;
  for (double v : ParseDoubles("shapes", absl::GetFlag(FLAGS_shapes))) {
    shapes.push_back(static_cast<int64_t>(v));
  }
  const std::vector<double> fractions =
      ParseDoubles("rank_fractions", absl::GetFlag(FLAGS_rank_fractions));
  const std::vector<double> explicit_ranks = ParseDoubles("ranks", absl::GetFlag(FLAGS_ranks));
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const bool json = absl::GetFlag(FLAGS_json);

  std::vector<Row> rows;
  for (int64_t n : shapes) {
    const bool large = n >= absl::GetFlag(FLAGS_large_n);
    const int reps =
        std::max(1, large ? absl::GetFlag(FLAGS_large_reps) : absl::GetFlag(FLAGS_reps));
    std::vector<std::pair<int, double>> ranks;  // (r, fraction)
    if (!explicit_ranks.empty()) {
      for (double r : explicit_ranks) {
        ranks.push_back({static_cast<int>(std::clamp<double>(r, 1, static_cast<double>(n))), 0.0});
      }
    } else {
      for (double f : fractions) ranks.push_back({DionRank(n, n, f, 1), f});
    }
    const size_t first = rows.size();
    for (auto [r, f] : ranks) {
      absl::FPrintF(stderr, "dion step n=%d r=%d reps=%d ...\n", n, r, reps);
      rows.push_back(BenchDion(n, r, f, reps, config, MixSeed(seed, n, r)));
    }
    if (absl::GetFlag(FLAGS_muon)) {
      const int muon_reps = std::max(
          1, large ? absl::GetFlag(FLAGS_muon_large_reps) : absl::GetFlag(FLAGS_muon_reps));
      absl::FPrintF(stderr, "newton-schulz n=%d reps=%d ...\n", n, muon_reps);
      const double muon = BenchMuon(n, muon_reps, MixSeed(seed, n));
      for (size_t i = first; i < rows.size(); ++i) {
        rows[i].muon = muon;
        rows[i].muon_reps = muon_reps;
      }
    }
  }
  const std::string json_text = Json(rows, threads, method_name);
  if (const std::string path = absl::GetFlag(FLAGS_json_out); !path.empty()) {
    FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr || std::fputs(json_text.c_str(), f) < 0 || std::fclose(f) != 0) {
      absl::FPrintF(stderr, "--json_out: cannot write %s\n", path);
      return 1;
    }
  }
  if (json) {
    absl::PrintF("%s", json_text);
  } else {
    PrintMarkdown(rows, threads, method_name, absl::GetFlag(FLAGS_target_ratio));
    PrintPhases(rows);
    absl::PrintF("\nA minor page fault (first touch of a fresh page) costs %.2f us here\n",
                 FaultMicroseconds());
  }
  return 0;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dion::Main();
}
