// ParameterStore: the checks of a batch, and what the store does for the parameters it holds
// split by rows (docs/algorithm.md, "One matrix over many shards"): their state and budget, and
// one owner's part of their step.
#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/checksum.h"
#include "common/dion.h"
#include "server/parameter_store.h"

namespace dion {

absl::StatusOr<StepStats> ParameterStore::CheckBatch(const Batch& batch) {
  if (batch.entries.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter '", batch.parameter, "': a batch must not be empty"));
  }
  StepStats stats;
  double weight_sum = 0;
  absl::flat_hash_set<absl::string_view> workers;
  for (const WeightedContribution& entry : batch.entries) {
    const Contribution& c = *entry.contribution;
    if (c.parameter != batch.parameter) {
      return absl::InvalidArgumentError(absl::StrCat("a batch of '", batch.parameter,
                                                     "' holds a contribution for '", c.parameter,
                                                     "'"));
    }
    if (!(entry.weight > 0 && std::isfinite(entry.weight))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter '", batch.parameter, "': weight ", entry.weight, " is not positive"));
    }
    weight_sum += entry.weight;
    stats.samples += c.sample_count;
    stats.mean_loss += static_cast<double>(c.sample_count) * c.loss;
    workers.insert(c.worker_id);
  }
  if (std::abs(weight_sum - 1.0) > 1e-6) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter '", batch.parameter, "': batch weights sum to ", weight_sum, ", expected 1"));
  }
  if (!(batch.noise_stddev >= 0 && std::isfinite(batch.noise_stddev))) {
    return absl::InvalidArgumentError(absl::StrCat("parameter '", batch.parameter,
                                                   "': noise stddev ", batch.noise_stddev,
                                                   " is not finite and >= 0"));
  }
  stats.contributions = static_cast<int>(batch.entries.size());
  stats.workers = static_cast<int>(workers.size());
  stats.mean_loss /= static_cast<double>(stats.samples);
  return stats;
}

void ParameterStore::InitState(const ParameterDefinition& definition, Parameter& parameter) {
  const ParamSpec& spec = definition.spec;
  Matrix X = definition.initial_value ? *definition.initial_value : InitialValue(spec);
  MutexLock lock(&parameter.mu);
  if (parameter.split.has_value()) {
    // The block of the whole initial value, so a split run starts where the unsplit one does.
    const RowBlock rows = parameter.split->rows;
    parameter.X = CopyRowBlock(X, rows);
    parameter.state = InitDionRowState(spec.rows(), spec.cols(), rows, spec.rank(),
                                       DionStateSeed(spec));
  } else {
    parameter.X = std::move(X);
    parameter.state = InitOptimizerState(spec, DionStateSeed(spec));
  }
  parameter.checksum = WeightsChecksum(parameter.X);
}

int64_t ParameterStore::OwnedStateBytes(const ParamSpec& spec, const Placement& placement,
                                        int shard) {
  if (!placement.is_split()) return StateBytes(spec);
  const int64_t m = spec.rows(), n = spec.cols();
  const int64_t short_side = std::min(m, n);
  int64_t bytes = 0;
  for (const RowOwner& owner : placement.split) {
    if (owner.shard != shard) continue;
    // X and M of the block, and the whole Q.
    bytes += (2 * owner.rows.size() * short_side + short_side * spec.rank()) *
             static_cast<int64_t>(sizeof(float));
  }
  return bytes;
}

uint64_t ParameterStore::BatchMembersDigest(const Batch& batch) {
  std::vector<std::pair<std::string, uint64_t>> members;
  for (const WeightedContribution& e : batch.entries) {
    members.emplace_back(e.contribution->worker_id, e.contribution->sequence);
  }
  return absl::HashOf(members);
}

std::pair<int64_t, int64_t> ParameterStore::HeldShape(const Parameter& parameter) {
  const ParamSpec& spec = parameter.spec;
  if (!parameter.split.has_value()) return {spec.rows(), spec.cols()};
  const int64_t rows = parameter.split->rows.size();
  if (spec.rows() >= spec.cols()) return {rows, spec.cols()};
  return {spec.rows(), rows};
}

absl::StatusOr<std::optional<SplitOwnership>> ParameterStore::Split(
    absl::string_view parameter) const {
  absl::StatusOr<Parameter*> found = Find(parameter);
  if (!found.ok()) return found.status();
  return (*found)->split;  // immutable after registration
}

absl::StatusOr<double> ParameterStore::NextLrScale(absl::string_view parameter) const {
  absl::StatusOr<Parameter*> found = Find(parameter);
  if (!found.ok()) return found.status();
  return LrScale(options_.lr_schedule,
                 (*found)->samples_applied.load(std::memory_order_relaxed));
}

absl::StatusOr<StepOutcome> ParameterStore::ApplyRowBatch(const Batch& batch, double lr_scale,
                                                          RowReducer& reducer) {
  absl::StatusOr<Parameter*> found = Find(batch.parameter);
  if (!found.ok()) return found.status();
  Parameter& parameter = **found;
  if (!parameter.split.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter '", batch.parameter, "' is not split: it steps alone (ApplyBatch)"));
  }
  if (!(lr_scale > 0 && std::isfinite(lr_scale))) {
    return absl::InvalidArgumentError(absl::StrCat("parameter '", batch.parameter,
                                                   "': lr scale ", lr_scale,
                                                   " is not finite and > 0"));
  }
  absl::StatusOr<StepStats> checked = CheckBatch(batch);
  if (!checked.ok()) return checked.status();
  StepStats stats = *std::move(checked);
  const ParamSpec& spec = parameter.spec;
  const RowBlock rows = parameter.split->rows;

  MutexLock lock(&parameter.mu);
  const int64_t version = parameter.version.load(std::memory_order_relaxed);
  if (batch.version != version) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter '", batch.parameter, "': the batch applies to version ", batch.version,
        " but this owner's rows [", rows.begin, ", ", rows.end, ") are at version ", version));
  }
  DionState& state = std::get<DionState>(parameter.state);
  const absl::Time start = absl::Now();
  const uint64_t members = BatchMembersDigest(batch);
  if (parameter.folded_version == version && parameter.folded_members != members) {
    // M holds another batch of this version from a failed attempt (its leader restarted and
    // batched anew): folding this one too, or stepping with that one, would apply a batch to
    // only some rows of the parameter.
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter '", batch.parameter, "': the momentum of rows [", rows.begin, ", ", rows.end,
        ") already holds another batch for version ", version,
        " from a failed step; this owner cannot take a different one"));
  }
  if (parameter.folded_version != version) {
    FoldIntoMomentum(batch.entries, state.M);
    parameter.folded_version = version;
    parameter.folded_members = members;
  }
  stats.report.aggregate = absl::Now() - start;
  absl::Time lap = absl::Now();
  const auto phase_end = [&](DionPhase phase) {
    const absl::Time now = absl::Now();
    if (phase == DionPhase::kPowerIteration) stats.report.power_iteration += now - lap;
    if (phase == DionPhase::kOrthonormalize) stats.report.orthonormalize += now - lap;
    if (phase == DionPhase::kUpdate) stats.report.update += now - lap;
    lap = now;
  };
  absl::StatusOr<DionStepResult> result = DionRowStepFromMomentum(
      parameter.X, state, WithLrScaled(spec, lr_scale).dion, spec.rows(), spec.cols(), rows,
      reducer, options_.measure_ortho_error, phase_end);
  if (!result.ok()) return result.status();  // M keeps the batch: folded_version says so
  parameter.folded_version = -1;
  parameter.samples_applied.store(
      parameter.samples_applied.load(std::memory_order_relaxed) + stats.samples,
      std::memory_order_relaxed);
  parameter.checksum = WeightsChecksum(parameter.X);
  parameter.contributions_applied.store(
      parameter.contributions_applied.load(std::memory_order_relaxed) + stats.contributions,
      std::memory_order_relaxed);
  parameter.steps.store(state.step, std::memory_order_relaxed);
  parameter.version.store(version + 1, std::memory_order_release);

  StepOutcome outcome;
  outcome.update.parameter = batch.parameter;
  outcome.update.version = version + 1;
  outcome.update.checksum = parameter.checksum;
  outcome.update.rows = rows;
  stats.report.ortho = result->ortho;
  stats.report.ortho_error = result->ortho_error;
  if (result->applied) {
    outcome.update.content = LowRankStep{result->decay, result->scale, std::move(result->P),
                                         std::move(result->Q), result->transposed};
  } else {
    outcome.update.content = parameter.X;
  }
  outcome.stats = std::move(stats);
  return outcome;
}

}  // namespace dion
