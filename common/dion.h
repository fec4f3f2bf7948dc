// The Dion update for one float32 matrix parameter (Ahn et al., arXiv 2504.05295), as laid
// down in docs/algorithm.md. Variable names follow the paper: X weights, G gradient,
// M momentum / error-feedback buffer, Q right factor, P, R power-iteration factors.
//
// Thread-safety: the functions are safe for concurrent use on distinct parameters; one
// parameter's (X, DionState) must not be stepped concurrently.
#ifndef DION_COMMON_DION_H_
#define DION_COMMON_DION_H_

#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "common/orthonormalize.h"
#include "common/row_reduce.h"

namespace dion {

struct DionConfig {
  double lr = 0.01;               // learning rate
  double mu = 0.95;               // momentum; the fraction of the rank-r update kept in M
  double weight_decay = 0.01;     // decoupled weight decay (X *= 1 - lr * weight_decay)
  double eps = 1e-8;              // added to column norms of R when forming Q
  int power_iters = 1;            // power-iteration steps per update (>= 1)
  double rank_fraction = 0.25;    // r = rank_fraction * min(m, n), rounded up (see DionRank)
  int rank_multiple_of = 1;       // r is rounded up to a multiple of this, capped at min(m, n)
  OrthoOptions ortho;             // orthonormalization method for P
};

// Checks the ranges of every field (lr >= 0, 0 <= mu < 1, ...). InvalidArgument says which.
absl::Status ValidateDionConfig(const DionConfig& config);

// r = ceil(rank_fraction * min(m, n) / rank_multiple_of) * rank_multiple_of, capped at
// min(m, n) and at least 1.
int DionRank(int64_t m, int64_t n, double rank_fraction, int rank_multiple_of);

// Optimizer state of one m x n matrix parameter.
struct DionState {
  Matrix M;  // m x n, same orientation as X; momentum plus error feedback
  Matrix Q;  // min(m, n) x r, the warm-start right factor on the short side
  int64_t step = 0;  // number of updates applied
};

// Whether Dion runs on X^T for this shape (m < n), so that P lives on the tall side.
inline bool DionTransposed(int64_t m, int64_t n) { return m < n; }

// Fresh state for an m x n matrix: M = 0, Q ~ N(0, 1) drawn from Rng(seed).
DionState InitDionState(int64_t m, int64_t n, int rank, uint64_t seed);

// The step just taken, in the algorithm's orientation (on X^T when transposed), enough for
// a replica at the previous version to reproduce it: X = decay X - scale P Q^T (or its
// transpose when `transposed`).
struct DionStepResult {
  bool applied = false;  // false when P came out zero or non-finite: X was only decayed
  bool transposed = false;
  float decay = 1.0f;    // 1 - lr * weight_decay
  float scale = 0.0f;    // lr * sqrt(m / n) of the original X
  Matrix P;              // tall x r, orthonormal columns (zero when !applied)
  Matrix Q;              // short x r, the new state Q
  OrthoReport ortho;     // what the orthonormalization did
  double ortho_error = -1.0;  // ||P^T P - I||_max if measure_ortho_error was set, else -1
};

// The phases of one step, for callers that time them (the step reads no clock). DionStep
// first ends kMomentum (checks and B = M + G); then each power iteration ends kPowerIteration
// (P = B Q), kOrthonormalize, kPowerIteration (R = B^T P, Q = colnorm(R)); then kDiagnostic
// when the orthogonality error is measured, and kUpdate (error feedback and the weight
// update). A step that stops early ends fewer phases.
enum class DionPhase { kMomentum, kPowerIteration, kOrthonormalize, kDiagnostic, kUpdate };
// Called at the end of each phase, on the stepping thread.
using DionPhaseEnd = absl::FunctionRef<void(DionPhase)>;
inline void IgnoreDionPhase(DionPhase) {}

// One Dion step on X given the gradient G (both m x n): B = M + G and the rest of the
// update. Non-finite G is refused with InvalidArgument and nothing changes. The step is
// done in place: no m x n temporary is allocated.
absl::StatusOr<DionStepResult> DionStep(MatrixRef X, ConstMatrixRef G, DionState& state,
                                        const DionConfig& config,
                                        bool measure_ortho_error = false,
                                        DionPhaseEnd phase_end = IgnoreDionPhase);

// The same step when the gradient has already been added into state.M (so M holds B), as
// the server does when it folds low-rank contributions into M with one GEMM.
// REQUIRES: state.M finite.
DionStepResult DionStepFromMomentum(MatrixRef X, DionState& state, const DionConfig& config,
                                    bool measure_ortho_error = false,
                                    DionPhaseEnd phase_end = IgnoreDionPhase);

// One owner's part of the step of a Dion parameter split by rows over several owners
// (docs/algorithm.md, "One matrix over many shards"). The parameter is rows x cols; this owner
// holds the rows `block` of its tall side: X and state.M are X[block, :] when rows >= cols and
// X[:, block] otherwise (in X's orientation), state.Q is the whole short x r Q, the same on
// every owner. Every owner calls this at the same time, with the same config and Q, after
// folding the same batch into its M; the r x r and short x r products are summed through
// `reducer` (OrthonormalizeRows; R = sum_s B_s^T P_s), everything else is local. The result
// holds this owner's rows of P and the new Q: X[block] = decay X[block] - scale P Q^T (or its
// transpose), with the scale of the whole parameter. Together the owners take the same step
// as DionStepFromMomentum on the whole matrix, up to float rounding in the sums.
// Errors, with X and state unchanged (M still holds B, so the step may be retried as is):
// FailedPrecondition when the block, X, M or Q do not fit; InvalidArgument for the qr method
// (ValidateSplitOrthoMethod); the reducer's error, which every owner gets.
absl::StatusOr<DionStepResult> DionRowStepFromMomentum(MatrixRef X, DionState& state,
                                                       const DionConfig& config, int64_t rows,
                                                       int64_t cols, RowBlock block,
                                                       RowReducer& reducer,
                                                       bool measure_ortho_error = false,
                                                       DionPhaseEnd phase_end = IgnoreDionPhase);

// Fresh state of one owner's rows `block` of a rows x cols parameter: M = 0 of the block's
// shape, and the same Q as InitDionState(rows, cols, rank, seed).
DionState InitDionRowState(int64_t rows, int64_t cols, RowBlock block, int rank, uint64_t seed);

// Applies a step to a replica of X: X = decay X - scale P Q^T, or X = decay X - scale Q P^T
// when `transposed` (P tall x r, Q short x r). DionStep updates X with exactly this call, and
// its arithmetic is the same bits on every CPU and build (common/lowrank_update.h), so a
// replica at the previous version reproduces the server's X bit for bit wherever it runs.
// A large update runs on BlasThreads() threads, with the same bits as on one.
void ApplyLowRankUpdate(MatrixRef X, float decay, float scale, ConstMatrixRef P,
                        ConstMatrixRef Q, bool transposed);

}  // namespace dion

#endif  // DION_COMMON_DION_H_
