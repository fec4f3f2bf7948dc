// One large Dion parameter's step split by rows over 1, 2, 4 ... owners (docs/algorithm.md,
// "One matrix over many shards"): what splitting buys, and what the reductions cost.
//
// For each owner count k, in one process, k threads each run one owner's step
// (DionRowStepFromMomentum) on its rows of an n x n parameter, with one OpenBLAS thread each,
// summing over gRPC on loopback between k ShardPeer servers in the process (--transport=grpc,
// the default: server/peer/, as shards do) or through an in-process LocalReduceGroup
// (--transport=local). A fresh gradient is folded into M before
// every repetition (outside the timed region). Per k it reports, as medians over repetitions:
//   step ms        wall time from the common start to the last owner's return;
//   reduce ms      the longest time an owner spent inside AllReduce: waiting for the slowest
//                  owner, the transport and the summing;
//   reduce bytes   float bytes one owner contributes per step (expected 4 (r^2 + n r) per
//                  Cholesky QR pass, the Gram and R);
// One owner runs the whole-matrix step (DionStepFromMomentum, no reductions): the baseline.
//   GEMM-bound ms  the four sgemm of the owner's rows, timed alone on one thread:
//                  P = B Q, R = B^T P, M -= (1 - mu) P R^T, X = decay X - scale P Q^T;
//   step / GEMM    the step over its own floor, and step(1) / step(k), the speed-up.
// With more owners than cores the owners share cores: the speed-up is capped by the cores.
//
// Output: a markdown table on stdout; progress on stderr.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/median.h"
#include "common/blas.h"
#include "common/dion.h"
#include "common/local_row_reduce.h"
#include "common/matrix.h"
#include "common/rng.h"
#include "common/row_reduce.h"
#include "bench/loopback_peers.h"

ABSL_FLAG(int, n, 8192, "The parameter is n x n");
ABSL_FLAG(int, rank, 512, "Dion rank r");
ABSL_FLAG(std::string, owners, "1,2,4", "Comma-separated owner counts");
ABSL_FLAG(int, reps, 3, "Timed repetitions per owner count (median), after one warm-up step");
ABSL_FLAG(std::string, method, "auto", "Orthonormalization method: auto, cqr, cqr2, rcqr");
ABSL_FLAG(uint64_t, seed, 1, "Seed of X, the gradients and Q");
ABSL_FLAG(std::string, transport, "grpc",
          "How the owners sum: grpc (ShardPeer over loopback, as shards do) or local (in "
          "process, no transport)");

namespace dion {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Times and counts what one owner's reductions take.
class TimedReducer : public RowReducer {
 public:
  explicit TimedReducer(RowReducer& inner) : inner_(inner) {}
  int owners() const override { return inner_.owners(); }
  int index() const override { return inner_.index(); }
  absl::Status AllReduce(absl::string_view tag, MatrixRef part) override {
    bytes += static_cast<int64_t>(part.size() * sizeof(float));
    const Clock::time_point start = Clock::now();
    absl::Status status = inner_.AllReduce(tag, part);
    seconds += Since(start);
    return status;
  }
  double seconds = 0;
  int64_t bytes = 0;

 private:
  RowReducer& inner_;
};

struct Owner {
  RowBlock block;
  DionState state;
  Matrix X, G;
};

// The four sgemm of one owner's step on its rows, alone, on this thread (seconds, sum of
// per-product medians over `reps`).
double GemmBound(Owner& o, int64_t n, int rank, int reps) {
  const int64_t rows = o.block.size();
  Matrix P(rows, rank), R(n, rank);
  Rng rng(7);
  rng.FillNormal(P);
  std::vector<double> pq, r, ef, x;
  for (int i = 0; i < reps; ++i) {
    Clock::time_point t = Clock::now();
    Gemm(Trans::kNo, Trans::kNo, 1.0f, o.state.M, o.state.Q, 0.0f, P);
    pq.push_back(Since(t));
    t = Clock::now();
    Gemm(Trans::kYes, Trans::kNo, 1.0f, o.state.M, P, 0.0f, R);
    r.push_back(Since(t));
    t = Clock::now();
    Gemm(Trans::kNo, Trans::kYes, -0.05f, P, R, 1.0f, o.state.M);
    ef.push_back(Since(t));
    t = Clock::now();
    Gemm(Trans::kNo, Trans::kYes, -1e-3f, P, o.state.Q, 0.999f, o.X);
    x.push_back(Since(t));
  }
  return Median(pq) + Median(r) + Median(ef) + Median(x);
}

struct Row {
  int owners = 0;
  int64_t rows = 0;
  double step = 0, reduce = 0, bound = 0;
  int64_t bytes = 0;
};

Row Measure(int owners, int64_t n, int rank, int reps, const DionConfig& config, uint64_t seed,
            bool grpc) {
  std::vector<Owner> o(static_cast<size_t>(owners));
  for (int i = 0; i < owners; ++i) {
    o[i].block = SplitRowBlock(n, owners, i);
    o[i].state = InitDionRowState(n, n, o[i].block, rank, seed);
    o[i].X.resize(o[i].block.size(), n);
    o[i].G.resize(o[i].block.size(), n);
    Rng rng(MixSeed(seed, static_cast<uint64_t>(o[i].block.begin) + 1));
    rng.FillNormal(o[i].X, 0.02);
    rng.FillNormal(o[i].G);
  }
  LocalReduceGroup group(owners);
  std::unique_ptr<LoopbackPeers> peers;
  if (grpc && owners > 1) peers = std::make_unique<LoopbackPeers>(owners);
  std::vector<double> steps, reduces;
  int64_t bytes = 0;
  for (int rep = 0; rep <= reps; ++rep) {  // rep 0: warm-up
    std::vector<std::unique_ptr<RowReducer>> inner;
    std::vector<std::unique_ptr<TimedReducer>> timed;
    for (int i = 0; i < owners; ++i) {
      o[i].state.M += o[i].G;
      if (peers != nullptr) inner.push_back(peers->Reducer("bench", rep, i, absl::Seconds(600)));
      timed.push_back(
          std::make_unique<TimedReducer>(peers != nullptr ? *inner.back() : group.owner(i)));
    }
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<double> ends(static_cast<size_t>(owners));
    Clock::time_point start;
    std::vector<std::thread> threads;
    for (int i = 0; i < owners; ++i) {
      threads.emplace_back([&, i] {
        ready.fetch_add(1);
        while (!go.load()) std::this_thread::yield();
        // One owner: the whole-matrix step, the code path of an unsplit parameter.
        const absl::StatusOr<DionStepResult> result =
            owners == 1 ? DionStepFromMomentum(o[i].X, o[i].state, config)
                        : DionRowStepFromMomentum(o[i].X, o[i].state, config, n, n,
                                                  o[i].block, *timed[i]);
        if (!result.ok() || !result->applied) {
          absl::FPrintF(stderr, "owner %d: step failed: %s\n", i, result.status().ToString());
          std::exit(1);
        }
        ends[i] = Since(start);
      });
    }
    while (ready.load() < owners) std::this_thread::yield();
    start = Clock::now();
    go.store(true);
    for (std::thread& t : threads) t.join();
    if (rep == 0) continue;
    steps.push_back(*std::max_element(ends.begin(), ends.end()));
    double reduce = 0;
    for (const auto& t : timed) reduce = std::max(reduce, t->seconds);
    reduces.push_back(reduce);
    bytes = timed[0]->bytes;  // 0 for one owner: the whole-matrix step reduces nothing
    absl::FPrintF(stderr, "  %d owners, rep %d: step %.0f ms\n", owners, rep, 1e3 * steps.back());
  }
  Row row;
  row.owners = owners;
  row.rows = o[0].block.size();
  row.step = Median(steps);
  row.reduce = Median(reduces);
  row.bytes = bytes;
  row.bound = GemmBound(o[0], n, rank, reps);
  return row;
}

int Main() {
  const int64_t n = absl::GetFlag(FLAGS_n);
  const int rank = absl::GetFlag(FLAGS_rank);
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  DionConfig config;
  config.rank_fraction = static_cast<double>(rank) / static_cast<double>(n);
  absl::StatusOr<OrthoMethod> method = ParseOrthoMethod(absl::GetFlag(FLAGS_method));
  if (!method.ok()) {
    absl::FPrintF(stderr, "--method: %s\n", method.status().message());
    return 2;
  }
  config.ortho.method = *method;
  std::vector<int> owner_counts;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_owners), ',')) {
    int k = 0;
    if (!absl::SimpleAtoi(part, &k) || k < 1 || k > n) {
      absl::FPrintF(stderr, "--owners: '%s' is not an owner count in [1, n]\n", part);
      return 2;
    }
    owner_counts.push_back(k);
  }
  const std::string transport = absl::GetFlag(FLAGS_transport);
  if (transport != "grpc" && transport != "local") {
    absl::FPrintF(stderr, "--transport: '%s': expected grpc or local\n", transport);
    return 2;
  }
  const bool grpc = transport == "grpc";
  SetBlasThreads(1).IgnoreError();  // one thread: always OK
  std::vector<Row> rows;
  for (int k : owner_counts) {
    absl::FPrintF(stderr, "%d owner(s) of a %d x %d parameter, r = %d\n", k, n, n, rank);
    rows.push_back(Measure(k, n, rank, reps, config, absl::GetFlag(FLAGS_seed), grpc));
  }
  absl::PrintF(
      "n = %d, r = %d, method %s, %d repetitions, 1 BLAS thread per owner, %u cores, sums %s\n\n",
      n, rank, absl::GetFlag(FLAGS_method), reps, std::thread::hardware_concurrency(),
      grpc ? "over gRPC on loopback" : "in process");
  absl::PrintF("| owners | rows per owner | step ms | reduce ms | reduce bytes / owner / step "
               "| GEMM-bound ms (own rows) | step / GEMM-bound | step(1) / step |\n");
  absl::PrintF("|---|---|---|---|---|---|---|---|\n");
  const double base = rows.front().owners == 1 ? rows.front().step : 0;
  for (const Row& r : rows) {
    absl::PrintF("| %d | %d | %.1f | %.1f | %d | %.1f | %.2f | %s |\n", r.owners, r.rows,
                 1e3 * r.step, 1e3 * r.reduce, r.bytes, 1e3 * r.bound, r.step / r.bound,
                 base > 0 ? absl::StrFormat("%.2f", base / r.step) : "-");
  }
  return 0;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dion::Main();
}
