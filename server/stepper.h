// One optimizer step of one parameter from a closed batch: the weighted mean of the batch's
// contributions, then the Dion / AdamW / Lion / Muon step of common/.
//
// Dion: the batch is never expanded into m x n matrices. With weights w_i and factors
// (P_i: m x r_i, R_i: n x r_i), the weighted mean gradient sum_i w_i P_i R_i^T is folded into
// the momentum with one GEMM, M += [w_1 P_1 | ... | w_k P_k] [R_1 | ... | R_k]^T, and the step
// continues from the momentum (DionStepFromMomentum).
// Element-wise optimizers and Muon: G = sum_i w_i G_i, then the common step.
// Differential privacy: N(0, stddev^2) noise (server/dp_noise.h) is added to the weighted mean
// before the optimizer sees it: to M right after the fold for Dion (M += mean + noise), to G
// for the others.
//
// Thread-safety: the functions are safe for concurrent use on distinct parameters; the caller
// serialises steps of one parameter (server/parameter_store.h holds its lock).
#ifndef DION_SERVER_STEPPER_H_
#define DION_SERVER_STEPPER_H_

#include <cstdint>
#include <optional>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/dion.h"
#include "common/elementwise_optimizers.h"
#include "common/matrix.h"
#include "common/muon.h"
#include "common/orthonormalize.h"
#include "common/param_spec.h"
#include "common/contribution.h"
#include "common/version_update.h"

namespace dion {

using OptimizerState = std::variant<DionState, AdamWState, LionState, MuonState>;

// The spec with every learning rate multiplied by `scale` (the lr schedule's step).
ParamSpec WithLrScaled(const ParamSpec& spec, double scale);

// The starting state of the spec's optimizer; a Dion parameter's Q is drawn from `seed`.
OptimizerState InitOptimizerState(const ParamSpec& spec, uint64_t seed);

struct StepReport {
  std::optional<LowRankStep> low_rank_step;  // set when a Dion step was applied
  OrthoReport ortho;                         // Dion only
  double ortho_error = -1.0;                 // ||P^T P - I||_max, -1 if not measured
  absl::Duration aggregate;                  // forming the mean / folding it into M
  absl::Duration power_iteration;            // Dion only: the B Q and B^T P products
  absl::Duration orthonormalize;             // Dion only
  absl::Duration update;                     // the optimizer step proper (Dion: error feedback
                                             // and the weight update)
};

// The noise of one step (server/dp_noise.h).
struct StepNoise {
  double stddev = 0.0;
  uint64_t seed = 0;
};

// M += sum_i w_i P_i R_i^T over `entries` in summation order, as one GEMM (the fold of a Dion
// step). M may be one owner's block of a split parameter, the entries' factors its rows.
// REQUIRES: every entry low-rank, its factors fitting M.
void FoldIntoMomentum(const std::vector<WeightedContribution>& entries, Matrix& M);

// Applies the weighted mean of `entries` to (X, state) with the spec's optimizer. The mean is
// summed in (worker_id, sequence) order, so the result does not depend on the order of
// `entries`: the same batch gives the same bits however its pushes arrived.
// REQUIRES: entries non-empty, each validated for this parameter, weights > 0 summing to 1,
// state holding the spec's optimizer state. With `noise` (may be null: none), the mean gets
// that noise. On error nothing has changed.
absl::StatusOr<StepReport> ApplyWeightedStep(const ParamSpec& spec,
                                             const std::vector<WeightedContribution>& entries,
                                             MatrixRef X, OptimizerState& state,
                                             bool measure_ortho_error,
                                             const StepNoise* noise = nullptr);

}  // namespace dion

#endif  // DION_SERVER_STEPPER_H_
