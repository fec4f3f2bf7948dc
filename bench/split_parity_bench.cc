// How closely the step of a Dion parameter split by rows over several owners follows the
// whole-matrix step, at sizes the tests cannot afford (docs/algorithm.md, "One matrix over many
// shards"; tests/dion_rows_test.cc checks the same at 96 x 64).
//
// For each shape and orthonormalization method, one whole parameter (DionStepFromMomentum,
// the code path of an unsplit parameter) and the same parameter split over each owner count
// (DionRowStepFromMomentum, each owner on its own thread with one OpenBLAS thread, summing over
// gRPC between ShardPeer servers on loopback as shards do, or in process) start from the same
// X and Q and take the same 20 steps: every step a fresh N(0, 1) gradient is added into M, the
// owners adding their rows of it. After step 1 and the last step it compares, in double:
//   X, M   ||split - whole||_F / ||whole||_F, with the owners' blocks assembled;
//   X max  max |split - whole| / max |whole|, entry-wise;
//   dX     ||X_split - X_whole||_F / ||X_whole - X_0||_F: the difference against what the steps
//          changed (X itself is mostly its starting value, which both keep exactly);
//   Q      as X, after aligning each column's sign with the whole step's (Q is defined up to
//          column signs; the two steps agree in sign in practice);
//   same Q whether every owner holds bit-identical Q (the reductions give every owner the
//          same sums, so they must).
// A row fails when any relative error exceeds --tolerance (1e-5 by default); the bench then
// exits with status 1.
//
// Output: a markdown table on stdout; progress on stderr.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/loopback_peers.h"
#include "common/blas.h"
#include "common/dion.h"
#include "common/local_row_reduce.h"
#include "common/matrix.h"
#include "common/orthonormalize.h"
#include "common/rng.h"
#include "common/row_reduce.h"

ABSL_FLAG(std::string, shapes, "4096x1024,1024x4096",
          "Comma-separated parameter shapes, rows x cols (rows < cols: Dion runs on X^T and the "
          "columns are split)");
ABSL_FLAG(int, rank, 256, "Dion rank r");
ABSL_FLAG(std::string, owners, "2,3", "Comma-separated owner counts (each >= 2)");
ABSL_FLAG(std::string, methods, "auto,cqr,cqr2,rcqr",
          "Orthonormalization methods to run (qr is refused for split parameters)");
ABSL_FLAG(int, steps, 20, "Steps per run; the errors are reported after step 1 and this one");
ABSL_FLAG(double, tolerance, 1e-5, "Largest relative error a row may show");
ABSL_FLAG(uint64_t, seed, 1, "Seed of X, Q and the gradients");
ABSL_FLAG(std::string, transport, "grpc",
          "How the owners sum: grpc (ShardPeer over loopback, as shards do) or local (in "
          "process)");

namespace dion {
namespace {

struct Shape {
  int64_t rows = 0, cols = 0;
};

struct Split {
  int owners = 0;
  std::vector<RowBlock> blocks;
  std::vector<DionState> states;
  std::vector<Matrix> X;
  std::unique_ptr<LoopbackPeers> peers;
  std::unique_ptr<LocalReduceGroup> local;
};

struct Errors {
  double x = 0, x_max = 0, dx = 0, m = 0, q = 0;
  bool same_q = true;
};

MatrixD ToDouble(const Matrix& a) { return a.cast<double>(); }

double Relative(const MatrixD& a, const MatrixD& reference) {
  return (a - reference).norm() / reference.norm();
}

double MaxRelative(const MatrixD& a, const MatrixD& reference) {
  return (a - reference).cwiseAbs().maxCoeff() / reference.cwiseAbs().maxCoeff();
}

// Rows `block` of the tall side of A: rows of A, or its columns when Dion runs on A^T.
Matrix TallBlock(const Matrix& A, RowBlock block, bool transposed) {
  if (transposed) return A.middleCols(block.begin, block.size());
  return A.middleRows(block.begin, block.size());
}

Matrix Assemble(const std::vector<Matrix>& parts, const std::vector<RowBlock>& blocks,
                Shape shape, bool transposed) {
  Matrix whole(shape.rows, shape.cols);
  for (size_t i = 0; i < parts.size(); ++i) {
    if (transposed) {
      whole.middleCols(blocks[i].begin, blocks[i].size()) = parts[i];
    } else {
      whole.middleRows(blocks[i].begin, blocks[i].size()) = parts[i];
    }
  }
  return whole;
}

Errors Compare(const Split& split, const Matrix& whole_X, const Matrix& start_X,
               const DionState& whole, Shape shape, bool transposed) {
  std::vector<Matrix> M;
  for (const DionState& s : split.states) M.push_back(s.M);
  const MatrixD X = ToDouble(Assemble(split.X, split.blocks, shape, transposed));
  const MatrixD X_ref = ToDouble(whole_X);
  const MatrixD Q_ref = ToDouble(whole.Q);
  MatrixD Q = ToDouble(split.states[0].Q);
  for (Eigen::Index j = 0; j < Q.cols(); ++j) {
    if (Q.col(j).dot(Q_ref.col(j)) < 0) Q.col(j) *= -1.0;
  }
  Errors e;
  e.x = Relative(X, X_ref);
  e.x_max = MaxRelative(X, X_ref);
  e.dx = (X - X_ref).norm() / (X_ref - ToDouble(start_X)).norm();
  e.m = Relative(ToDouble(Assemble(M, split.blocks, shape, transposed)), ToDouble(whole.M));
  e.q = Relative(Q, Q_ref);
  for (const DionState& s : split.states) e.same_q = e.same_q && s.Q == split.states[0].Q;
  return e;
}

// One step of every owner of `split`, each on its own thread; false (with a message) when an
// owner's step failed.
bool StepOwners(Split& split, const Matrix& G, const DionConfig& config, Shape shape,
                bool transposed, int64_t step) {
  std::vector<std::thread> threads;
  std::vector<std::string> failures(static_cast<size_t>(split.owners));
  for (int i = 0; i < split.owners; ++i) {
    threads.emplace_back([&, i] {
      split.states[i].M += TallBlock(G, split.blocks[i], transposed);
      std::unique_ptr<RowReducer> grpc =
          split.peers != nullptr ? split.peers->Reducer("parity", step, i, absl::Seconds(600))
                                 : nullptr;
      RowReducer& reducer = grpc != nullptr ? *grpc : split.local->owner(i);
      const absl::StatusOr<DionStepResult> result =
          DionRowStepFromMomentum(split.X[i], split.states[i], config, shape.rows, shape.cols,
                                  split.blocks[i], reducer);
      if (!result.ok()) {
        failures[i] = result.status().ToString();
      } else if (!result->applied) {
        failures[i] = "the step applied no update";
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < split.owners; ++i) {
    if (!failures[i].empty()) {
      absl::FPrintF(stderr, "owner %d of %d, step %d: %s\n", i, split.owners, step, failures[i]);
      return false;
    }
  }
  return true;
}

struct Row {
  Shape shape;
  std::string method;
  int owners = 0;
  int step = 0;
  Errors errors;
};

// Runs the whole parameter and every split of it for `steps` steps; appends a row per owner
// count after step 1 and the last step. False when a step failed.
bool Run(Shape shape, int rank, const std::vector<int>& owner_counts, OrthoMethod method,
         int steps, uint64_t seed, bool grpc, std::vector<Row>& rows) {
  const bool transposed = DionTransposed(shape.rows, shape.cols);
  const int64_t tall = std::max(shape.rows, shape.cols);
  DionConfig config;
  config.ortho.method = method;
  DionState whole = InitDionState(shape.rows, shape.cols, rank, seed);
  Matrix whole_X(shape.rows, shape.cols);
  Rng(MixSeed(seed, 1)).FillNormal(whole_X, 0.02);
  const Matrix start_X = whole_X;
  std::vector<Split> splits(owner_counts.size());
  for (size_t k = 0; k < owner_counts.size(); ++k) {
    Split& s = splits[k];
    s.owners = owner_counts[k];
    for (int i = 0; i < s.owners; ++i) {
      s.blocks.push_back(SplitRowBlock(tall, s.owners, i));
      s.states.push_back(InitDionRowState(shape.rows, shape.cols, s.blocks[i], rank, seed));
      s.X.push_back(TallBlock(whole_X, s.blocks[i], transposed));
    }
    if (grpc) {
      s.peers = std::make_unique<LoopbackPeers>(s.owners);
    } else {
      s.local = std::make_unique<LocalReduceGroup>(s.owners);
    }
  }
  Matrix G(shape.rows, shape.cols);
  for (int step = 1; step <= steps; ++step) {
    Rng(MixSeed(seed, 2, static_cast<uint64_t>(step))).FillNormal(G);
    whole.M += G;
    if (!DionStepFromMomentum(whole_X, whole, config).applied) {
      absl::FPrintF(stderr, "whole step %d applied no update\n", step);
      return false;
    }
    for (Split& s : splits) {
      if (!StepOwners(s, G, config, shape, transposed, step)) return false;
    }
    if (step != 1 && step != steps) continue;
    for (const Split& s : splits) {
      rows.push_back(Row{shape, std::string(OrthoMethodName(method)), s.owners, step,
                         Compare(s, whole_X, start_X, whole, shape, transposed)});
    }
  }
  return true;
}

std::vector<std::string> Parts(const std::string& list) {
  return absl::StrSplit(list, ',', absl::SkipEmpty());
}

int Main() {
  const int rank = absl::GetFlag(FLAGS_rank);
  const int steps = absl::GetFlag(FLAGS_steps);
  const double tolerance = absl::GetFlag(FLAGS_tolerance);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const std::string transport = absl::GetFlag(FLAGS_transport);
  if (transport != "grpc" && transport != "local") {
    absl::FPrintF(stderr, "--transport: '%s': expected grpc or local\n", transport);
    return 2;
  }
  if (steps < 1 || rank < 1) {
    absl::FPrintF(stderr, "--steps and --rank must be >= 1 (got %d and %d)\n", steps, rank);
    return 2;
  }
  std::vector<Shape> shapes;
  for (const std::string& part : Parts(absl::GetFlag(FLAGS_shapes))) {
    std::vector<std::string> dims = absl::StrSplit(part, 'x');
    Shape s;
    if (dims.size() != 2 || !absl::SimpleAtoi(dims[0], &s.rows) ||
        !absl::SimpleAtoi(dims[1], &s.cols) || s.rows < 1 || s.cols < 1 ||
        rank > std::min(s.rows, s.cols)) {
      absl::FPrintF(stderr, "--shapes: '%s' is not ROWSxCOLS with both >= --rank (%d)\n", part,
                    rank);
      return 2;
    }
    shapes.push_back(s);
  }
  std::vector<int> owner_counts;
  for (const std::string& part : Parts(absl::GetFlag(FLAGS_owners))) {
    int k = 0;
    if (!absl::SimpleAtoi(part, &k) || k < 2) {
      absl::FPrintF(stderr, "--owners: '%s' is not an owner count >= 2\n", part);
      return 2;
    }
    owner_counts.push_back(k);
  }
  std::vector<OrthoMethod> methods;
  for (const std::string& part : Parts(absl::GetFlag(FLAGS_methods))) {
    absl::StatusOr<OrthoMethod> method = ParseOrthoMethod(part);
    absl::Status allowed =
        method.ok() ? ValidateSplitOrthoMethod(*method) : method.status();
    if (!allowed.ok()) {
      absl::FPrintF(stderr, "--methods: '%s': %s\n", part, allowed.message());
      return 2;
    }
    methods.push_back(*method);
  }
  if (shapes.empty() || owner_counts.empty() || methods.empty()) {
    absl::FPrintF(stderr, "--shapes, --owners and --methods must each name at least one\n");
    return 2;
  }
  SetBlasThreads(1).IgnoreError();  // one thread: always OK
  std::vector<Row> rows;
  for (Shape shape : shapes) {
    for (OrthoMethod method : methods) {
      absl::FPrintF(stderr, "%d x %d, r = %d, %s: %d steps, whole and over %s owners\n",
                    shape.rows, shape.cols, rank, OrthoMethodName(method), steps,
                    absl::GetFlag(FLAGS_owners));
      if (!Run(shape, rank, owner_counts, method, steps, seed, transport == "grpc", rows)) {
        return 1;
      }
    }
  }
  absl::PrintF("r = %d, %d steps, default DionConfig (lr 0.01, mu 0.95), sums %s, tolerance "
               "%g\n\n",
               rank, steps, transport == "grpc" ? "over gRPC on loopback" : "in process",
               tolerance);
  absl::PrintF("| shape | method | owners | after step | X rel | X max-entry rel | dX rel | M rel "
               "| Q rel (column signs aligned) | same Q on every owner | within tolerance |\n");
  absl::PrintF("|---|---|---|---|---|---|---|---|---|---|---|\n");
  int failed = 0;
  for (const Row& r : rows) {
    const Errors& e = r.errors;
    const bool ok = e.same_q && std::max({e.x, e.x_max, e.dx, e.m, e.q}) <= tolerance;
    failed += ok ? 0 : 1;
    absl::PrintF("| %dx%d | %s | %d | %d | %.2e | %.2e | %.2e | %.2e | %.2e | %s | %s |\n",
                 r.shape.rows, r.shape.cols, r.method, r.owners, r.step, e.x, e.x_max, e.dx, e.m,
                 e.q, e.same_q ? "yes" : "no", ok ? "yes" : "NO");
  }
  absl::PrintF("\n%d of %d rows within %g\n", static_cast<int>(rows.size()) - failed,
               static_cast<int>(rows.size()), tolerance);
  return failed == 0 ? 0 : 1;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dion::Main();
}
