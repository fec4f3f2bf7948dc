#include "server/stepper.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/blas.h"
#include "server/dp_noise.h"

namespace dion {
namespace {

// The batch's entries in SummationOrderLess order. Batcher batches already are (a pointer
// sort of a few entries, against the step's GEMMs); this keeps the guarantee for any caller.
std::vector<const WeightedContribution*> CanonicalOrder(
    const std::vector<WeightedContribution>& entries) {
  std::vector<const WeightedContribution*> ordered;
  ordered.reserve(entries.size());
  for (const WeightedContribution& e : entries) ordered.push_back(&e);
  std::sort(ordered.begin(), ordered.end(),
            [](const WeightedContribution* a, const WeightedContribution* b) {
              return SummationOrderLess(*a->contribution, *b->contribution);
            });
  return ordered;
}

// M += sum_i w_i P_i R_i^T as one GEMM over the stacked factors.
void FoldLowRankIntoMomentum(const std::vector<const WeightedContribution*>& entries,
                             Matrix& M) {
  int64_t total_rank = 0;
  for (const WeightedContribution* e : entries) total_rank += e->contribution->factors().P.cols();
  Matrix P_stack(M.rows(), total_rank);
  Matrix R_stack(M.cols(), total_rank);
  int64_t column = 0;
  for (const WeightedContribution* e : entries) {
    const LowRankFactors& f = e->contribution->factors();
    const int64_t r = f.P.cols();
    P_stack.middleCols(column, r) = static_cast<float>(e->weight) * f.P;
    R_stack.middleCols(column, r) = f.R;
    column += r;
  }
  Gemm(Trans::kNo, Trans::kYes, 1.0f, P_stack, R_stack, 1.0f, M);
}

Matrix WeightedMeanGradient(const std::vector<const WeightedContribution*>& entries,
                            int64_t rows, int64_t cols) {
  Matrix G = Matrix::Zero(rows, cols);
  for (const WeightedContribution* e : entries) {
    G.noalias() += static_cast<float>(e->weight) * e->contribution->gradient();
  }
  return G;
}

// Where the time of a Dion phase is added up; nullptr for time outside the report's phases.
absl::Duration* PhaseTotal(StepReport& report, DionPhase phase) {
  switch (phase) {
    case DionPhase::kPowerIteration: return &report.power_iteration;
    case DionPhase::kOrthonormalize: return &report.orthonormalize;
    case DionPhase::kUpdate: return &report.update;
    case DionPhase::kMomentum:  // DionStep only; the stepper folds into M itself
    case DionPhase::kDiagnostic: return nullptr;
  }
  return nullptr;
}

}  // namespace

ParamSpec WithLrScaled(const ParamSpec& spec, double scale) {
  ParamSpec scaled = spec;
  scaled.dion.lr *= scale;
  scaled.adamw.lr *= scale;
  scaled.lion.lr *= scale;
  scaled.muon.lr *= scale;
  return scaled;
}

void FoldIntoMomentum(const std::vector<WeightedContribution>& entries, Matrix& M) {
  FoldLowRankIntoMomentum(CanonicalOrder(entries), M);
}

OptimizerState InitOptimizerState(const ParamSpec& spec, uint64_t seed) {
  const int64_t m = spec.rows(), n = spec.cols();
  switch (spec.optimizer) {
    case OptimizerKind::kDion: return InitDionState(m, n, spec.rank(), seed);
    case OptimizerKind::kAdamW: return InitAdamWState(m, n);
    case OptimizerKind::kLion: return InitLionState(m, n);
    case OptimizerKind::kMuon: return InitMuonState(m, n);
  }
  return InitAdamWState(m, n);
}

absl::StatusOr<StepReport> ApplyWeightedStep(const ParamSpec& spec,
                                             const std::vector<WeightedContribution>& entries,
                                             MatrixRef X, OptimizerState& state,
                                             bool measure_ortho_error,
                                             const StepNoise* noise) {
  StepReport report;
  absl::Time start = absl::Now();
  const std::vector<const WeightedContribution*> ordered = CanonicalOrder(entries);
  if (spec.optimizer == OptimizerKind::kDion) {
    DionState& dion = std::get<DionState>(state);
    FoldLowRankIntoMomentum(ordered, dion.M);
    if (noise != nullptr) AddGaussianNoise(dion.M, noise->stddev, noise->seed);
    const absl::Time folded = absl::Now();
    report.aggregate = folded - start;
    absl::Time lap = folded;
    const auto phase_end = [&](DionPhase phase) {
      const absl::Time now = absl::Now();
      if (absl::Duration* total = PhaseTotal(report, phase)) *total += now - lap;
      lap = now;
    };
    DionStepResult result =
        DionStepFromMomentum(X, dion, spec.dion, measure_ortho_error, phase_end);
    report.ortho = result.ortho;
    report.ortho_error = result.ortho_error;
    if (result.applied) {
      report.low_rank_step = LowRankStep{result.decay, result.scale, std::move(result.P),
                                         std::move(result.Q), result.transposed};
    }
    return report;
  }

  Matrix G = WeightedMeanGradient(ordered, spec.rows(), spec.cols());
  if (noise != nullptr) AddGaussianNoise(G, noise->stddev, noise->seed);
  const absl::Time averaged = absl::Now();
  report.aggregate = averaged - start;
  absl::Status status;
  switch (spec.optimizer) {
    case OptimizerKind::kAdamW:
      status = AdamWStep(X, G, std::get<AdamWState>(state), spec.adamw);
      break;
    case OptimizerKind::kLion:
      status = LionStep(X, G, std::get<LionState>(state), spec.lion);
      break;
    case OptimizerKind::kMuon:
      status = MuonStep(X, G, std::get<MuonState>(state), spec.muon);
      break;
    case OptimizerKind::kDion: break;  // handled above
  }
  if (!status.ok()) return status;
  report.update = absl::Now() - averaged;
  return report;
}

}  // namespace dion
