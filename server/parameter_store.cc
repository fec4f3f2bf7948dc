#include "server/parameter_store.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/rng.h"
#include "common/checksum.h"

namespace dion {
namespace {

// FNV-1a 64 of the name's bytes: a stable, platform-independent number for a name.
uint64_t NameHash(absl::string_view name) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Identifies the Dion-Q stream among the parameter's random streams.
constexpr uint64_t kDionStateStream = 0x446f6e51;  // "DonQ"

bool SameShape(const Matrix& a, int64_t rows, int64_t cols) {
  return a.rows() == rows && a.cols() == cols;
}

// Whether `state` is a valid state of `spec`'s optimizer for an X of m x n (the parameter's
// shape, or one owner's block of a split one; Q is always the whole parameter's).
absl::Status CheckStateShape(const ParamSpec& spec, const OptimizerState& state, int64_t m,
                             int64_t n) {
  const auto error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter '", spec.name, "': restored optimizer state ", what));
  };
  switch (spec.optimizer) {
    case OptimizerKind::kDion: {
      const DionState* s = std::get_if<DionState>(&state);
      if (s == nullptr) return error("is not a dion state");
      if (!SameShape(s->M, m, n)) return error("M has the wrong shape");
      if (!SameShape(s->Q, std::min(spec.rows(), spec.cols()), spec.rank())) {
        return error("Q has the wrong shape");
      }
      if (!s->M.allFinite() || !s->Q.allFinite()) return error("has NaN or Inf");
      return absl::OkStatus();
    }
    case OptimizerKind::kAdamW: {
      const AdamWState* s = std::get_if<AdamWState>(&state);
      if (s == nullptr) return error("is not an adamw state");
      if (!SameShape(s->m, m, n) || !SameShape(s->v, m, n)) return error("has the wrong shape");
      if (!s->m.allFinite() || !s->v.allFinite()) return error("has NaN or Inf");
      return absl::OkStatus();
    }
    case OptimizerKind::kLion: {
      const LionState* s = std::get_if<LionState>(&state);
      if (s == nullptr) return error("is not a lion state");
      if (!SameShape(s->m, m, n)) return error("has the wrong shape");
      if (!s->m.allFinite()) return error("has NaN or Inf");
      return absl::OkStatus();
    }
    case OptimizerKind::kMuon: {
      const MuonState* s = std::get_if<MuonState>(&state);
      if (s == nullptr) return error("is not a muon state");
      if (!SameShape(s->M, m, n)) return error("has the wrong shape");
      if (!s->M.allFinite()) return error("has NaN or Inf");
      return absl::OkStatus();
    }
  }
  return error("has an unknown kind");
}

int64_t StateStep(const OptimizerState& state) {
  return std::visit([](const auto& s) { return s.step; }, state);
}

}  // namespace

absl::Status ValidateStoreOptions(const StoreOptions& options) {
  if (options.num_shards < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_shards must be >= 1, got ", options.num_shards));
  }
  if (options.shard_index < 0 || options.shard_index >= options.num_shards) {
    return absl::InvalidArgumentError(absl::StrCat("shard_index must be in [0, ",
                                                   options.num_shards, "), got ",
                                                   options.shard_index));
  }
  if (options.max_state_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_state_bytes must be >= 1, got ", options.max_state_bytes));
  }
  if (options.max_workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_workers must be >= 1, got ", options.max_workers));
  }
  return ValidateLrSchedule(options.lr_schedule);
}

int64_t StateBytes(const ParamSpec& spec) {
  const int64_t m = spec.rows(), n = spec.cols();
  int64_t floats = m * n;  // X
  switch (spec.optimizer) {
    case OptimizerKind::kDion: floats += m * n + std::min(m, n) * spec.rank(); break;
    case OptimizerKind::kAdamW: floats += 2 * m * n; break;
    case OptimizerKind::kLion: floats += m * n; break;
    case OptimizerKind::kMuon: floats += m * n; break;
  }
  return floats * static_cast<int64_t>(sizeof(float));
}

uint64_t DionStateSeed(const ParamSpec& spec) {
  return MixSeed(spec.init.seed, NameHash(spec.name), kDionStateStream);
}

absl::StatusOr<std::unique_ptr<ParameterStore>> ParameterStore::Create(
    const StoreOptions& options) {
  if (absl::Status s = ValidateStoreOptions(options); !s.ok()) return s;
  return std::unique_ptr<ParameterStore>(new ParameterStore(options));
}

absl::StatusOr<bool> ParameterStore::RegisterModel(const ModelTable& table) {
  if (absl::Status s = ValidateModelTable(table); !s.ok()) return s;
  return RegisterWithFingerprint(table, Fingerprint(table));
}

absl::StatusOr<bool> ParameterStore::RegisterRestoredModel(
    const ModelTable& table, const std::vector<std::optional<uint64_t>>& initial_value_checksums) {
  if (absl::Status s = ValidateModelTable(table); !s.ok()) return s;
  ModelFingerprint fingerprint = Fingerprint(table);
  if (initial_value_checksums.size() != fingerprint.initial_value_checksums.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "restored model '", table.model_name, "': ", initial_value_checksums.size(),
        " initial-value checksums for ", fingerprint.initial_value_checksums.size(),
        " parameters"));
  }
  for (size_t i = 0; i < initial_value_checksums.size(); ++i) {
    std::optional<uint64_t>& kept = fingerprint.initial_value_checksums[i];
    if (kept.has_value() && kept != initial_value_checksums[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "restored model '", table.model_name, "': parameter '", fingerprint.specs[i].name,
          "' carries an initial value that does not match the recorded checksum"));
    }
    kept = initial_value_checksums[i];
  }
  return RegisterWithFingerprint(table, std::move(fingerprint));
}

absl::StatusOr<bool> ParameterStore::RegisterWithFingerprint(const ModelTable& table,
                                                             ModelFingerprint fingerprint) {
  // One registration builds state at a time, so concurrent calls cannot each allocate a
  // budget's worth; the later ones find the model registered.
  MutexLock registering(&registration_mu_);
  {
    ReaderMutexLock lock(&mu_);
    if (model_ != nullptr) {
      if (absl::Status s = CompareModelTables(model_->fingerprint, fingerprint); !s.ok()) {
        return s;
      }
      return false;
    }
  }
  absl::StatusOr<Layout> layout = Layout::Compute(fingerprint.specs, options_.num_shards);
  if (!layout.ok()) return layout.status();
  if (absl::Status s = CheckStateBudget(table, *layout); !s.ok()) return s;

  // Build the state outside the lock: initial values and Dion's Q can take a while.
  auto model = std::make_unique<Model>();
  for (const ParameterDefinition& definition : table.parameters) {
    const ParamSpec& spec = definition.spec;
    if (!layout->Holds(spec.name, options_.shard_index)) continue;
    auto parameter = std::make_unique<Parameter>();
    parameter->spec = spec;
    const Placement& placement = *layout->Find(spec.name);
    for (size_t i = 0; i < placement.split.size(); ++i) {
      if (placement.split[i].shard != options_.shard_index) continue;
      SplitOwnership split{{}, static_cast<int>(i), placement.split[i].rows};
      for (const RowOwner& owner : placement.split) split.owner_shards.push_back(owner.shard);
      parameter->split = std::move(split);
    }
    InitState(definition, *parameter);
    model->owned.push_back(spec.name);
    model->parameters.emplace(spec.name, std::move(parameter));
  }
  model->fingerprint = std::move(fingerprint);
  model->layout = *std::move(layout);

  MutexLock lock(&mu_);
  model_ = std::move(model);  // registration_mu_: nobody registered since the check above
  return true;
}

absl::Status ParameterStore::CheckStateBudget(const ModelTable& table,
                                              const Layout& layout) const {
  int64_t needed = 0;  // saturates at kNoStateBudget: no sum of specs overflows
  int owned = 0;
  const ParamSpec* largest = nullptr;
  for (const ParameterDefinition& definition : table.parameters) {
    const ParamSpec& spec = definition.spec;
    if (!layout.Holds(spec.name, options_.shard_index)) continue;
    const int64_t bytes = OwnedStateBytes(spec, *layout.Find(spec.name), options_.shard_index);
    needed = std::min(kNoStateBudget, needed + bytes + kParameterOverheadBytes);
    ++owned;
    if (largest == nullptr || bytes > StateBytes(*largest)) largest = &spec;
  }
  if (needed <= options_.max_state_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "model '", table.model_name, "' needs ", needed, " bytes of parameter and optimizer state "
      "on shard ", options_.shard_index, " (", owned, " owned parameters, ",
      kParameterOverheadBytes, " bytes of bookkeeping each included; the largest, '",
      largest->name, "' ", absl::StrJoin(largest->shape, " x "), " ",
      OptimizerKindName(largest->optimizer), ", needs ", StateBytes(*largest),
      " bytes), above this shard's budget of ", options_.max_state_bytes,
      " bytes (--max_state_bytes); nothing was registered"));
}

absl::Status ParameterStore::RegisterWorker(absl::string_view worker_id) {
  if (absl::Status s = ValidateWorkerId(worker_id); !s.ok()) return s;
  MutexLock lock(&mu_);
  if (model_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot register worker '", worker_id, "': no model is registered"));
  }
  if (!workers_.contains(worker_id) &&
      workers_.size() >= static_cast<size_t>(options_.max_workers)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot register worker '", worker_id, "': this shard already tracks ",
        workers_.size(), " workers, the limit (--max_workers)"));
  }
  workers_.insert(std::string(worker_id));
  return absl::OkStatus();
}

bool ParameterStore::model_registered() const {
  ReaderMutexLock lock(&mu_);
  return model_ != nullptr;
}

bool ParameterStore::worker_registered(absl::string_view worker_id) const {
  ReaderMutexLock lock(&mu_);
  return workers_.contains(worker_id);
}

std::vector<std::string> ParameterStore::workers() const {
  ReaderMutexLock lock(&mu_);
  std::vector<std::string> workers(workers_.begin(), workers_.end());
  std::sort(workers.begin(), workers.end());
  return workers;
}

absl::StatusOr<ModelInfo> ParameterStore::model() const {
  ReaderMutexLock lock(&mu_);
  if (model_ == nullptr) return absl::FailedPreconditionError("no model is registered");
  return ModelInfo{model_->fingerprint.model_name, model_->fingerprint.specs, model_->layout,
                   model_->fingerprint.initial_value_checksums};
}

std::vector<std::string> ParameterStore::OwnedParameters() const {
  ReaderMutexLock lock(&mu_);
  if (model_ == nullptr) return {};
  return model_->owned;
}

absl::StatusOr<ParameterStore::Parameter*> ParameterStore::Find(absl::string_view name) const {
  ReaderMutexLock lock(&mu_);
  if (model_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("no model is registered; cannot use parameter '", name, "'"));
  }
  auto it = model_->parameters.find(name);
  if (it != model_->parameters.end()) return it->second.get();
  const Placement* placement = model_->layout.Find(name);
  if (placement == nullptr) {
    return absl::NotFoundError(absl::StrCat("parameter '", name, "' is not in model '",
                                            model_->fingerprint.model_name, "'"));
  }
  const int shard = placement->shard;
  if (placement->is_split()) {
    std::vector<int> owners;
    for (const RowOwner& owner : placement->split) owners.push_back(owner.shard);
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter '", name, "' is split over shards ", absl::StrJoin(owners, ", "),
        " (in row order), this is shard ", options_.shard_index, ", which owns none of its rows"));
  }
  return absl::FailedPreconditionError(absl::StrCat("parameter '", name, "' is owned by shard ",
                                                    shard, ", this is shard ",
                                                    options_.shard_index));
}

absl::StatusOr<ParamSpec> ParameterStore::Spec(absl::string_view parameter) const {
  absl::StatusOr<Parameter*> p = Find(parameter);
  if (!p.ok()) return p.status();
  return (*p)->spec;  // immutable after registration
}

absl::StatusOr<const ParamSpec*> ParameterStore::FindSpec(absl::string_view parameter) const {
  absl::StatusOr<Parameter*> p = Find(parameter);
  if (!p.ok()) return p.status();
  return &(*p)->spec;
}

absl::StatusOr<int64_t> ParameterStore::Version(absl::string_view parameter) const {
  absl::StatusOr<Parameter*> p = Find(parameter);
  if (!p.ok()) return p.status();
  return (*p)->version.load(std::memory_order_acquire);
}

absl::StatusOr<ValidatedContribution> ParameterStore::Validate(Contribution contribution) const {
  absl::StatusOr<Parameter*> found = Find(contribution.parameter);
  if (!found.ok()) return found.status();
  const ContributionContext context = Context(**found, contribution.worker_id);
  return dion::Validate(std::move(contribution), context);
}

ContributionContext ParameterStore::Context(const Parameter& parameter,
                                            absl::string_view worker_id) const {
  const bool follower = parameter.split.has_value() && parameter.split->index > 0;
  return {parameter.spec, parameter.version.load(std::memory_order_acquire),
          worker_registered(worker_id),
          parameter.split.has_value() ? parameter.split->rows : RowBlock{}, follower ? 1 : 0};
}

absl::StatusOr<StepOutcome> ParameterStore::ApplyBatch(const Batch& batch) {
  absl::StatusOr<Parameter*> found = Find(batch.parameter);
  if (!found.ok()) return found.status();
  Parameter& parameter = **found;
  if (parameter.split.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter '", batch.parameter, "' is split: its owners step together (ApplyRowBatch)"));
  }
  absl::StatusOr<StepStats> checked = CheckBatch(batch);
  if (!checked.ok()) return checked.status();
  StepStats stats = *std::move(checked);


  MutexLock lock(&parameter.mu);
  const int64_t version = parameter.version.load(std::memory_order_relaxed);
  if (batch.version != version) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parameter '", batch.parameter, "': the batch applies to version ", batch.version,
        " but the parameter is at version ", version));
  }
  const double lr_scale = LrScale(options_.lr_schedule,
                                  parameter.samples_applied.load(std::memory_order_relaxed));
  std::optional<StepNoise> noise;  // differential privacy, fixed when the batch closed
  if (batch.noise_seed != 0) noise = StepNoise{batch.noise_stddev, batch.noise_seed};
  absl::StatusOr<StepReport> report = ApplyWeightedStep(
      WithLrScaled(parameter.spec, lr_scale), batch.entries, parameter.X, parameter.state,
      options_.measure_ortho_error, noise.has_value() ? &*noise : nullptr);
  if (!report.ok()) return report.status();
  parameter.samples_applied.store(
      parameter.samples_applied.load(std::memory_order_relaxed) + stats.samples,
      std::memory_order_relaxed);

  parameter.checksum = WeightsChecksum(parameter.X);
  parameter.contributions_applied.store(
      parameter.contributions_applied.load(std::memory_order_relaxed) + stats.contributions,
      std::memory_order_relaxed);
  parameter.steps.store(StateStep(parameter.state), std::memory_order_relaxed);
  parameter.version.store(version + 1, std::memory_order_release);

  StepOutcome outcome;
  outcome.update.parameter = batch.parameter;
  outcome.update.version = version + 1;
  outcome.update.checksum = parameter.checksum;
  if (report->low_rank_step.has_value()) {
    outcome.update.content = *std::move(report->low_rank_step);
    report->low_rank_step.reset();
  } else {
    outcome.update.content = parameter.X;
  }
  stats.report = *std::move(report);
  outcome.stats = std::move(stats);
  return outcome;
}

absl::StatusOr<ParameterSnapshot> ParameterStore::Snapshot(absl::string_view name,
                                                           bool include_state) const {
  absl::StatusOr<Parameter*> found = Find(name);
  if (!found.ok()) return found.status();
  const Parameter& parameter = **found;
  ParameterSnapshot snapshot;
  snapshot.spec = parameter.spec;
  MutexLock lock(&parameter.mu);
  snapshot.version = parameter.version.load(std::memory_order_relaxed);
  snapshot.checksum = parameter.checksum;
  snapshot.contributions_applied = parameter.contributions_applied.load(std::memory_order_relaxed);
  snapshot.samples_applied = parameter.samples_applied.load(std::memory_order_relaxed);
  snapshot.X = parameter.X;
  if (include_state) snapshot.state = parameter.state;
  if (parameter.split.has_value()) snapshot.rows = parameter.split->rows;
  return snapshot;
}

absl::Status ParameterStore::Restore(const ParameterSnapshot& snapshot) {
  absl::StatusOr<Parameter*> found = Find(snapshot.spec.name);
  if (!found.ok()) return found.status();
  Parameter& parameter = **found;
  const ParamSpec& spec = parameter.spec;
  const auto error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot restore parameter '", spec.name, "': ", what));
  };
  const auto [rows, cols] = HeldShape(parameter);
  // Rows of another layout fit this store no better than another shard's checkpoint does:
  // FailedPrecondition, as Checkpointer::RestoreInto answers that, naming both ranges.
  const int64_t tall = std::max(spec.rows(), spec.cols());
  const auto held = [tall](RowBlock block) {
    return block.size() == 0
               ? absl::StrCat("all ", tall, " rows of its tall side (the whole parameter)")
               : absl::StrCat("rows [", block.begin, ", ", block.end, ") of its tall side of ",
                              tall, " rows");
  };
  const RowBlock kept = snapshot.rows.size() > 0 ? snapshot.rows : RowBlock{};
  const RowBlock owned = parameter.split.has_value() ? parameter.split->rows : RowBlock{};
  if (!(kept == owned)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot restore parameter '", spec.name, "': the checkpoint holds ", held(kept),
        ", but in the current layout this shard ", parameter.split.has_value() ? "owns " : "holds ",
        held(owned),
        parameter.split.has_value()
            ? absl::StrCat(" (split over ", parameter.split->owner_shards.size(), " shards)")
            : ""));
  }
  if (!SameShape(snapshot.X, rows, cols)) return error("X has the wrong shape");
  if (!snapshot.X.allFinite()) return error("X has NaN or Inf");
  if (snapshot.version < 0) return error("negative version");
  if (snapshot.contributions_applied < 0) return error("negative contributions_applied");
  if (snapshot.samples_applied < 0) return error("negative samples_applied");
  if (!snapshot.state.has_value()) return error("the snapshot carries no optimizer state");
  if (snapshot.spec.optimizer != spec.optimizer || snapshot.spec.shape != spec.shape) {
    return error("the snapshot's spec differs from the registered one");
  }
  if (absl::Status s = CheckStateShape(spec, *snapshot.state, rows, cols); !s.ok()) return s;

  MutexLock lock(&parameter.mu);
  parameter.folded_version = -1;
  parameter.X = snapshot.X;
  parameter.state = *snapshot.state;
  parameter.checksum = WeightsChecksum(parameter.X);
  parameter.contributions_applied.store(snapshot.contributions_applied, std::memory_order_relaxed);
  parameter.samples_applied.store(snapshot.samples_applied, std::memory_order_relaxed);
  parameter.steps.store(StateStep(parameter.state), std::memory_order_relaxed);
  parameter.version.store(snapshot.version, std::memory_order_release);
  return absl::OkStatus();
}

std::vector<ParameterStatus> ParameterStore::Statuses() const {
  std::vector<ParameterStatus> statuses;
  for (const std::string& name : OwnedParameters()) {
    absl::StatusOr<Parameter*> found = Find(name);
    if (!found.ok()) continue;
    const Parameter& parameter = **found;
    // No lock: Status must not wait for a running step of this parameter.
    const int64_t version = parameter.version.load(std::memory_order_acquire);
    const int64_t samples = parameter.samples_applied.load(std::memory_order_relaxed);
    statuses.push_back({name, parameter.spec.optimizer, version,
                        parameter.steps.load(std::memory_order_relaxed),
                        parameter.contributions_applied.load(std::memory_order_relaxed), samples,
                        LrScale(options_.lr_schedule, samples)});
  }
  return statuses;
}

}  // namespace dion
