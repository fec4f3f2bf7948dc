#include "common/dion.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/lowrank_update.h"
#include "common/rng.h"
#include "common/row_reduce.h"

namespace dion {
namespace {

bool IsFiniteNumber(double x) { return std::isfinite(x); }

// Q = R / (||R_col||_2 + eps). One row-wise broadcast: filling Q column by column through a
// row-major matrix cost 87-126 ms at 4096 x 1024 against ~12 ms (dion_step_bench phases).
void ColumnNormalize(const Matrix& R, double eps, Matrix& Q) {
  const Eigen::RowVectorXf denominators =
      (R.colwise().norm().cast<double>().array() + eps).cast<float>().matrix();
  Q = (R.array().rowwise() / denominators.array()).matrix();
}

// The error feedback: M = B - (1 - mu) P R^T, in place in B's buffer (on X^T when
// transposed). The weights' kernel with decay 1 (exact) rather than an sgemm: on the step's
// threads it is the faster of the two here (docs/benchmarks.md, "Dion step"), and M's bits
// then no longer depend on the CPU model either.
void ErrorFeedback(Matrix& B, const Matrix& P, const Matrix& R, double mu, bool transposed) {
  const float scale = static_cast<float>(1.0 - mu);
  if (transposed) {
    LowRankUpdate(B, 1.0f, scale, R, P, BlasThreads());
  } else {
    LowRankUpdate(B, 1.0f, scale, P, R, BlasThreads());
  }
}

// Runs f(begin, end) over `parts` contiguous ranges of [0, rows) at once, on the calling
// thread and parts - 1 threads it starts and joins (a range whose thread cannot be started
// runs on the calling thread).
template <typename F>
void ForRowRanges(int64_t rows, int parts, F f) {
  std::vector<std::thread> helpers;
  for (int p = 1; p < parts; ++p) {
    const int64_t begin = rows * p / parts, end = rows * (p + 1) / parts;
    try {
      helpers.emplace_back(f, begin, end);
    } catch (const std::system_error&) {
      f(begin, end);
    }
  }
  f(int64_t{0}, rows / parts);
  for (std::thread& t : helpers) t.join();
}

// Elements below which an element-wise pass over a parameter stays on the calling thread.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 20;

// Whether G is finite and, only if so, M += G: both passes by row blocks over the step's
// threads (BlasThreads()); nothing is written unless every element of G is finite.
bool AddFiniteGradient(Matrix& M, ConstMatrixRef G) {
  const int64_t rows = M.rows();
  const int parts = static_cast<int>(std::clamp<int64_t>(
      std::min<int64_t>(BlasThreads(), M.size() / kMinElementsPerThread), 1,
      std::max<int64_t>(rows, 1)));
  std::atomic<bool> finite{true};
  ForRowRanges(rows, parts, [&](int64_t begin, int64_t end) {
    if (!AllFinite(G.middleRows(begin, end - begin))) finite = false;
  });
  if (!finite) return false;
  ForRowRanges(rows, parts, [&](int64_t begin, int64_t end) {
    M.middleRows(begin, end - begin) += G.middleRows(begin, end - begin);
  });
  return true;
}

// A power iteration that cannot go on: a zero P (B zero, or its rows orthogonal to Q) would
// have orthonormalization invent a direction and zero Q for good; NaN/Inf spread.
bool Degenerate(const Matrix& P) { return !AllFinite(P) || (P.array() == 0.0f).all(); }

// The starting Q: short_side x rank, N(0, 1) from Rng(seed).
Matrix InitialQ(int64_t short_side, int rank, uint64_t seed) {
  Matrix Q(short_side, rank);
  Rng rng(seed);
  rng.FillNormal(Q);
  return Q;
}

}  // namespace

absl::Status ValidateDionConfig(const DionConfig& c) {
  const auto bad = [](absl::string_view field, double value, absl::string_view expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("dion ", field, " = ", value, " is out of range: expected ", expected));
  };
  if (!IsFiniteNumber(c.lr) || c.lr < 0) return bad("lr", c.lr, "a finite value >= 0");
  if (!(c.mu >= 0 && c.mu < 1)) return bad("mu", c.mu, "0 <= mu < 1");
  if (!IsFiniteNumber(c.weight_decay) || c.weight_decay < 0) {
    return bad("weight_decay", c.weight_decay, "a finite value >= 0");
  }
  if (!IsFiniteNumber(c.eps) || c.eps <= 0) return bad("eps", c.eps, "a finite value > 0");
  if (c.power_iters < 1 || c.power_iters > 16) {
    return bad("power_iters", c.power_iters, "an integer in [1, 16]");
  }
  if (!(c.rank_fraction > 0 && c.rank_fraction <= 1)) {
    return bad("rank_fraction", c.rank_fraction, "0 < rank_fraction <= 1");
  }
  if (c.rank_multiple_of < 1) {
    return bad("rank_multiple_of", c.rank_multiple_of, "an integer >= 1");
  }
  if (!(c.ortho.oversample >= 1 && c.ortho.oversample <= 16)) {
    return bad("ortho.oversample", c.ortho.oversample, "1 <= oversample <= 16");
  }
  if (c.lr * c.weight_decay >= 1) {
    return bad("lr * weight_decay", c.lr * c.weight_decay, "< 1 so that weights are not flipped");
  }
  return absl::OkStatus();
}

int DionRank(int64_t m, int64_t n, double rank_fraction, int rank_multiple_of) {
  const int64_t short_side = std::min(m, n);
  const int64_t multiple = std::max(1, rank_multiple_of);
  // Subtract a hair before ceil so that e.g. 0.25 * 1024 = 256.00000000001 stays 256.
  const double units = std::ceil(rank_fraction * static_cast<double>(short_side) /
                                     static_cast<double>(multiple) - 1e-9);
  const int64_t rank = static_cast<int64_t>(units) * multiple;
  return static_cast<int>(std::clamp<int64_t>(rank, 1, std::max<int64_t>(1, short_side)));
}

DionState InitDionState(int64_t m, int64_t n, int rank, uint64_t seed) {
  DionState state;
  state.M = Matrix::Zero(m, n);
  state.Q = InitialQ(std::min(m, n), rank, seed);
  return state;
}

void ApplyLowRankUpdate(MatrixRef X, float decay, float scale, ConstMatrixRef P,
                        ConstMatrixRef Q, bool transposed) {
  // Not a BLAS GEMM: its bits depend on the CPU model (lowrank_update.h). The kernel gets
  // the threads an sgemm would, which change nothing in its bits.
  const int threads = BlasThreads();
  if (transposed) {
    LowRankUpdate(X, decay, scale, Q, P, threads);  // X^T = decay X^T - scale P Q^T
  } else {
    LowRankUpdate(X, decay, scale, P, Q, threads);
  }
}

namespace {

// The owners of a row-split parameter and this owner's rows (DionRowStepFromMomentum).
struct StepSplit {
  RowBlock block;
  int64_t total_rows = 0;  // of the tall side
  RowReducer* reducer = nullptr;
};

// Algorithm 1 of the paper from B = M + G, which state.M holds on entry (docs/algorithm.md,
// "One step"), for the whole m x n parameter or, with `split`, for one owner's rows of it
// (X, M and P are then the owner's rows; "One matrix over many shards"). Dion keeps P on the
// tall side; for a wide X it works on X^T, which for row-major storage is only a transposed
// GEMM operand, never a copy. A reduction error returns before anything in X or state
// changed (M still holds B).
absl::StatusOr<DionStepResult> StepFromMomentum(MatrixRef X, DionState& state,
                                                const DionConfig& config, int64_t m, int64_t n,
                                                const StepSplit* split,
                                                bool measure_ortho_error,
                                                DionPhaseEnd phase_end) {
  const double lr = config.lr, mu = config.mu, eps = config.eps;
  DionStepResult result;
  result.transposed = DionTransposed(m, n);
  result.decay = static_cast<float>(1.0 - lr * config.weight_decay);
  result.scale = static_cast<float>(lr * std::sqrt(static_cast<double>(m) / n));
  const Trans B_op = result.transposed ? Trans::kYes : Trans::kNo;   // B of the algorithm
  const Trans Bt_op = result.transposed ? Trans::kNo : Trans::kYes;  // its transpose
  Matrix& B = state.M;
  Matrix& P = result.P;
  Matrix& Q = result.Q;
  Matrix R(std::min(m, n), state.Q.cols());
  P.resize(result.transposed ? X.cols() : X.rows(), state.Q.cols());  // the (local) tall side

  const Matrix* Q_prev = &state.Q;  // warm start
  for (int it = 0; it < config.power_iters; ++it) {
    Gemm(B_op, Trans::kNo, 1.0f, B, *Q_prev, 0.0f, P);  // P = B Q
    // Split: no local verdict; a zero or non-finite P fails the reduced orthonormalization.
    if (split == nullptr && Degenerate(P)) break;
    phase_end(DionPhase::kPowerIteration);
    if (split == nullptr) {
      result.ortho = Orthonormalize(P, config.ortho);    // P = Orthonormalize(P)
    } else {
      absl::StatusOr<OrthoReport> ortho = OrthonormalizeRows(
          P, split->block, split->total_rows, config.ortho, *split->reducer);
      if (!ortho.ok()) return ortho.status();
      result.ortho = *ortho;
    }
    phase_end(DionPhase::kOrthonormalize);
    if (!result.ortho.ok) break;
    Gemm(Bt_op, Trans::kNo, 1.0f, B, P, 0.0f, R);        // R = B^T P
    if (split != nullptr) {
      if (absl::Status s = split->reducer->AllReduce("R", R); !s.ok()) return s;
    }
    if (!AllFinite(R)) break;
    ColumnNormalize(R, eps, Q);                          // Q = R / (||R_col|| + eps)
    phase_end(DionPhase::kPowerIteration);
    Q_prev = &Q;
    result.applied = it + 1 == config.power_iters;
  }
  if (result.applied && measure_ortho_error) {
    if (split == nullptr) {
      result.ortho_error = OrthogonalityError(P);
    } else {
      absl::StatusOr<double> error =
          OrthogonalityErrorRows(P, split->block, split->total_rows, *split->reducer);
      if (!error.ok()) return error.status();
      result.ortho_error = *error;
    }
    phase_end(DionPhase::kDiagnostic);
  }
  // Every reduction is done: from here on the step cannot fail.
  ++state.step;
  if (!result.applied) {
    // No update: M keeps B (nothing is lost), Q is unchanged, only the decay applies.
    P.setZero();
    Q = state.Q;
    X *= result.decay;
    return result;
  }
  ErrorFeedback(B, P, R, mu, result.transposed);  // M = B - (1 - mu) P R^T
  state.Q = Q;
  // X = (1 - lr wd) X - lr sqrt(m/n) P Q^T
  ApplyLowRankUpdate(X, result.decay, result.scale, P, Q, result.transposed);
  phase_end(DionPhase::kUpdate);
  return result;
}

}  // namespace

DionStepResult DionStepFromMomentum(MatrixRef X, DionState& state, const DionConfig& config,
                                    bool measure_ortho_error, DionPhaseEnd phase_end) {
  // Without reductions the step cannot fail.
  return *StepFromMomentum(X, state, config, X.rows(), X.cols(), nullptr, measure_ortho_error,
                           phase_end);
}

absl::StatusOr<DionStepResult> DionRowStepFromMomentum(MatrixRef X, DionState& state,
                                                       const DionConfig& config, int64_t rows,
                                                       int64_t cols, RowBlock block,
                                                       RowReducer& reducer,
                                                       bool measure_ortho_error,
                                                       DionPhaseEnd phase_end) {
  if (absl::Status s = ValidateSplitOrthoMethod(config.ortho.method); !s.ok()) return s;
  const int64_t tall = std::max(rows, cols), short_side = std::min(rows, cols);
  const bool transposed = DionTransposed(rows, cols);
  const int64_t block_rows = transposed ? rows : block.size();
  const int64_t block_cols = transposed ? block.size() : cols;
  if (block.begin < 0 || block.begin >= block.end || block.end > tall ||
      X.rows() != block_rows || X.cols() != block_cols || state.M.rows() != block_rows ||
      state.M.cols() != block_cols || state.Q.rows() != short_side || state.Q.cols() < 1 ||
      state.Q.cols() > short_side) {
    return absl::FailedPreconditionError(absl::StrCat(
        "row block [", block.begin, ", ", block.end, ") of a [", rows, ", ", cols,
        "] parameter does not fit its state: X is [", X.rows(), ", ", X.cols(), "], M [",
        state.M.rows(), ", ", state.M.cols(), "], Q [", state.Q.rows(), ", ", state.Q.cols(),
        "]; expected a non-empty block within [0, ", tall, "), X and M [", block_rows, ", ",
        block_cols, "] and Q [", short_side, ", r] with 1 <= r <= ", short_side));
  }
  const StepSplit split{block, tall, &reducer};
  return StepFromMomentum(X, state, config, rows, cols, &split, measure_ortho_error,
                          phase_end);
}

DionState InitDionRowState(int64_t rows, int64_t cols, RowBlock block, int rank,
                           uint64_t seed) {
  DionState state;
  state.M = DionTransposed(rows, cols) ? Matrix::Zero(rows, block.size())
                                       : Matrix::Zero(block.size(), cols);
  state.Q = InitialQ(std::min(rows, cols), rank, seed);
  return state;
}

absl::StatusOr<DionStepResult> DionStep(MatrixRef X, ConstMatrixRef G, DionState& state,
                                        const DionConfig& config, bool measure_ortho_error,
                                        DionPhaseEnd phase_end) {
  const int64_t m = X.rows(), n = X.cols();
  if (G.rows() != m || G.cols() != n) {
    return absl::InvalidArgumentError(absl::StrCat("gradient shape [", G.rows(), ", ", G.cols(),
                                                   "] does not match the parameter's [", m, ", ",
                                                   n, "]"));
  }
  if (state.M.rows() != m || state.M.cols() != n || state.Q.rows() != std::min(m, n) ||
      state.Q.cols() < 1 || state.Q.cols() > std::min(m, n)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Dion state does not fit a [", m, ", ", n, "] parameter: M is [", state.M.rows(), ", ",
        state.M.cols(), "], Q is [", state.Q.rows(), ", ", state.Q.cols(), "]; expected M [", m,
        ", ", n, "] and Q [", std::min(m, n), ", r] with 1 <= r <= ", std::min(m, n)));
  }
  if (!AddFiniteGradient(state.M, G)) {  // B = M + G, in place
    return absl::InvalidArgumentError("gradient contains NaN or Inf; step refused, state unchanged");
  }
  phase_end(DionPhase::kMomentum);
  return DionStepFromMomentum(X, state, config, measure_ortho_error, phase_end);
}

}  // namespace dion
