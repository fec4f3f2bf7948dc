// The parameters one shard owns: weights X, optimizer state and version of each, plus the
// registered model table and the workers allowed to push.
//
// Flow: RegisterModel (once; identical tables again are fine) -> RegisterWorker -> for every
// contribution Validate (no state change, precise status) -> the batcher -> ApplyBatch on each
// closed batch, in order -> the VersionUpdate goes to the broadcaster.
//
// Versions: each parameter starts at version 0 and ApplyBatch adds one. A batch names the
// version it applies to; applying it to any other version is refused.
//
// Status codes of Validate (and, where they apply, ApplyBatch / Snapshot):
//   FailedPrecondition  no model registered; worker not registered; parameter owned by another
//                       shard; a batch for another version than the current one
//   NotFound            parameter not in the model
//   InvalidArgument     empty worker id; sample_count <= 0; payload of the wrong kind, shape or
//                       rank; NaN / Inf / magnitude (common/contribution.h)
//   OutOfRange          base_version < 0 or above the current version
//   ResourceExhausted   (RegisterModel, RegisterWorker) the state budget or max_workers
//
// Thread-safety: safe for concurrent use. Each parameter has its own mutex; a step of one
// parameter does not block pushes or steps of another, and validation reads the version
// without waiting for a running step.
#ifndef DION_SERVER_PARAMETER_STORE_H_
#define DION_SERVER_PARAMETER_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/mutex.h"
#include "absl/time/time.h"
#include "common/matrix.h"
#include "common/row_reduce.h"
#include "common/param_spec.h"
#include "common/contribution.h"
#include "common/layout.h"
#include "common/model_table.h"
#include "server/stepper.h"
#include "common/version_update.h"
#include "server/lr_schedule.h"

namespace dion {

// StoreOptions::max_state_bytes without a budget.
inline constexpr int64_t kNoStateBudget = int64_t{1} << 62;
// What the budget counts for each owned parameter besides its matrices: name, spec, locks,
// its batcher, dedup windows and metrics series. Measured ~2.7 KB (RSS growth of a shard
// registering 100,000 one-element parameters, docs/server.md "Memory"), rounded up.
inline constexpr int64_t kParameterOverheadBytes = 4096;

struct StoreOptions {
  int shard_index = 0;               // this shard, in [0, num_shards)
  int num_shards = 1;                // shards the model is spread over
  bool measure_ortho_error = true;   // ||P^T P - I||_max every Dion step (one m r^2 product)
  LrSchedule lr_schedule;            // default: constant lr
  // Distinct workers RegisterWorker accepts (>= 1); a new one beyond is ResourceExhausted.
  int max_workers = 4096;
  // Bytes of X and optimizer state (StateBytes, plus kParameterOverheadBytes each) the owned
  // parameters of a table may take (>= 1); a larger table is ResourceExhausted before
  // anything is allocated. dion-server
  // sets it from --max_state_bytes; the default here is no budget.
  int64_t max_state_bytes = kNoStateBudget;
};

absl::Status ValidateStoreOptions(const StoreOptions& options);

// The bytes RegisterModel allocates for a parameter of `spec` (float32): X plus the optimizer
// state (Dion M and Q, AdamW m and v, Lion m, Muon M). At most ~26 GB (2^31 elements, AdamW).
int64_t StateBytes(const ParamSpec& spec);

// The seed of a Dion parameter's starting Q: the parameter's seed mixed with its name, so two
// parameters of one shape do not start from the same Q.
uint64_t DionStateSeed(const ParamSpec& spec);

// One parameter at one version, for Pull, Status and checkpoints.
struct ParameterSnapshot {
  ParamSpec spec;
  int64_t version = 0;
  uint64_t checksum = 0;             // WeightsChecksum(X)
  int64_t contributions_applied = 0;
  int64_t samples_applied = 0;       // the lr schedule's position
  Matrix X;
  std::optional<OptimizerState> state;  // only when asked for
  // A split parameter's owner holds its rows of the tall side: X and M are that block (X's
  // rows, or X's columns when the parameter is wide), checksum is the block's; Q is whole.
  // Empty ({0, 0}) for a whole parameter.
  RowBlock rows;
};

// What one ApplyBatch did, for metrics.
struct StepStats {
  int contributions = 0;
  int64_t samples = 0;
  int workers = 0;
  double mean_loss = 0.0;     // sample-weighted mean of the workers' reported losses
  StepReport report;          // timings and orthonormalization
};

struct StepOutcome {
  VersionUpdate update;
  StepStats stats;
};

// What one owner of a split parameter holds.
struct SplitOwnership {
  std::vector<int> owner_shards;  // every owner's shard, in row order (owner 0 leads)
  int index = 0;                  // this shard's index among them
  RowBlock rows;                  // its rows of the tall side
};

struct ParameterStatus {
  std::string parameter;
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  int64_t version = 0;
  int64_t steps = 0;
  int64_t contributions_applied = 0;
  int64_t samples_applied = 0;
  double lr_scale = 1;  // the lr schedule's multiplier for the next step
};

// The registered model as a shard sees it.
struct ModelInfo {
  std::string model_name;
  std::vector<ParamSpec> parameters;  // the whole table, in registration order
  Layout layout;
  // Per parameter, as ModelFingerprint: the checksum of an explicit initial value, or nullopt.
  std::vector<std::optional<uint64_t>> initial_value_checksums;
};

class ParameterStore {
 public:
  static absl::StatusOr<std::unique_ptr<ParameterStore>> Create(const StoreOptions& options);

  ParameterStore(const ParameterStore&) = delete;
  ParameterStore& operator=(const ParameterStore&) = delete;

  // Registers the model and creates the state of the parameters this shard owns. Returns true
  // when newly registered, false when the identical table was registered before.
  // InvalidArgument for an invalid table, FailedPrecondition (first mismatch) for a different one,
  // ResourceExhausted (naming the bytes needed, the budget and the largest parameter) when the
  // owned parameters' StateBytes (plus kParameterOverheadBytes each) exceed max_state_bytes:
  // nothing is allocated or registered then.
  absl::StatusOr<bool> RegisterModel(const ModelTable& table) ABSL_LOCKS_EXCLUDED(mu_);
  // Checkpoint restore (server/checkpoint/checkpointer.h): registers `table`, which carries no initial
  // values, under the identity of the original table, whose explicit initial values are known
  // by their checksums only (one entry per parameter, as ModelInfo::initial_value_checksums),
  // so that the workers' original table still compares equal. The owned parameters' values
  // then come from Restore. Codes as RegisterModel; InvalidArgument if the checksums do not
  // fit the table.
  absl::StatusOr<bool> RegisterRestoredModel(
      const ModelTable& table, const std::vector<std::optional<uint64_t>>& initial_value_checksums)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Allows `worker_id` to push. InvalidArgument for an id ValidateWorkerId refuses,
  // FailedPrecondition before a model is registered, ResourceExhausted for a new id when
  // max_workers are registered (nothing recorded then). Registering again is fine.
  absl::Status RegisterWorker(absl::string_view worker_id) ABSL_LOCKS_EXCLUDED(mu_);

  bool model_registered() const ABSL_LOCKS_EXCLUDED(mu_);
  bool worker_registered(absl::string_view worker_id) const ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<std::string> workers() const ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<ModelInfo> model() const ABSL_LOCKS_EXCLUDED(mu_);
  // Names of the parameters this shard owns, in table order (empty before registration).
  std::vector<std::string> OwnedParameters() const ABSL_LOCKS_EXCLUDED(mu_);
  // The spec of an owned parameter (codes as Validate).
  absl::StatusOr<ParamSpec> Spec(absl::string_view parameter) const ABSL_LOCKS_EXCLUDED(mu_);
  // The same without a copy (the push path): the spec lives as long as the store, since a
  // registered model never changes.
  absl::StatusOr<const ParamSpec*> FindSpec(absl::string_view parameter) const
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<int64_t> Version(absl::string_view parameter) const ABSL_LOCKS_EXCLUDED(mu_);
  // Of an owned parameter split by rows (docs/algorithm.md, "One matrix over many shards"):
  // every owner's shard in row order, this shard's index among them and its rows. nullopt for
  // a whole parameter; the store's codes for one it does not own.
  absl::StatusOr<std::optional<SplitOwnership>> Split(absl::string_view parameter) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // The one validation of a contribution: against the model, the worker registry, the
  // parameter's spec and current version (CheckContribution; codes in the file comment).
  // Changes nothing.
  absl::StatusOr<ValidatedContribution> Validate(Contribution contribution) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // Applies a closed batch: the weighted mean of its contributions with the parameter's
  // optimizer, version + 1, new checksum. Checks the batch's own invariants only (its entries
  // are validated by type): non-empty, every entry of this parameter, weights positive and
  // summing to 1, the batch version equal to the current version. On error nothing changes.
  absl::StatusOr<StepOutcome> ApplyBatch(const Batch& batch) ABSL_LOCKS_EXCLUDED(mu_);
  // The same for one owner's rows of a split parameter (server/parameter_store_split.cc): folds
  // the batch into its rows of M, unless M already holds it from a failed attempt of the same
  // version, then takes its part of the step with the other owners through `reducer`
  // (DionRowStepFromMomentum) at `lr_scale` (the leader's schedule factor). The update holds
  // this owner's rows. FailedPrecondition for a whole parameter; a reducer's error leaves X, Q
  // and the version as they were, M holding the batch, so the same batch may be retried.
  absl::StatusOr<StepOutcome> ApplyRowBatch(const Batch& batch, double lr_scale,
                                            RowReducer& reducer) ABSL_LOCKS_EXCLUDED(mu_);
  // The learning-rate schedule's factor for the next step of an owned parameter.
  absl::StatusOr<double> NextLrScale(absl::string_view parameter) const ABSL_LOCKS_EXCLUDED(mu_);

  // X (and with include_state the optimizer state) of an owned parameter, consistent with
  // one version.
  absl::StatusOr<ParameterSnapshot> Snapshot(absl::string_view parameter,
                                             bool include_state) const ABSL_LOCKS_EXCLUDED(mu_);
  // Replaces an owned parameter's X, state, version and counters by a snapshot taken with
  // include_state (checkpoint restore). InvalidArgument if shapes, optimizer or spec differ;
  // FailedPrecondition, naming both ranges, if the snapshot holds other rows of a split
  // parameter than the layout gives this shard (the whole parameter included). Nothing changes
  // on error.
  absl::Status Restore(const ParameterSnapshot& snapshot) ABSL_LOCKS_EXCLUDED(mu_);

  std::vector<ParameterStatus> Statuses() const ABSL_LOCKS_EXCLUDED(mu_);
  const StoreOptions& options() const { return options_; }

 private:
  struct Parameter {
    ParamSpec spec;
    std::optional<SplitOwnership> split;  // immutable; set for one owner's rows of a split
    mutable Mutex mu;
    Matrix X ABSL_GUARDED_BY(mu);
    OptimizerState state ABSL_GUARDED_BY(mu);
    uint64_t checksum ABSL_GUARDED_BY(mu) = 0;
    // A split parameter's M holds the batch of this version from an attempt whose reductions
    // failed (-1: none), so a retry does not fold it again.
    int64_t folded_version ABSL_GUARDED_BY(mu) = -1;
    uint64_t folded_members ABSL_GUARDED_BY(mu) = 0;  // BatchMembersDigest of that batch
    // Written only with mu held; read without it so that validation and Statuses() never wait
    // for a running step (mu is held across its matrix products). version is stored last
    // (release), so a reader that loads it first sees counters at least as new.
    std::atomic<int64_t> contributions_applied{0};
    std::atomic<int64_t> samples_applied{0};  // the samples of every batch applied
    std::atomic<int64_t> steps{0};  // the optimizer state's step
    std::atomic<int64_t> version{0};
  };

  // Set once by RegisterModel and immutable afterwards.
  struct Model {
    ModelFingerprint fingerprint;
    Layout layout;
    std::vector<std::string> owned;  // table order
    absl::flat_hash_map<std::string, std::unique_ptr<Parameter>> parameters;  // owned only
  };

  explicit ParameterStore(const StoreOptions& options) : options_(options) {}

  // RegisterModel with the identity `fingerprint` (Fingerprint(table) unless restoring).
  absl::StatusOr<bool> RegisterWithFingerprint(const ModelTable& table,
                                               ModelFingerprint fingerprint)
      ABSL_LOCKS_EXCLUDED(registration_mu_, mu_);

  // ResourceExhausted when the parameters of `table` that `layout` gives this shard need more
  // than max_state_bytes (StateBytes + kParameterOverheadBytes each). Allocates nothing.
  absl::Status CheckStateBudget(const ModelTable& table, const Layout& layout) const;

  // The owned parameter called `name`: FailedPrecondition without a model or for a parameter
  // of another shard, NotFound for an unknown name. The pointer lives as long as the store.
  absl::StatusOr<Parameter*> Find(absl::string_view name) const ABSL_LOCKS_EXCLUDED(mu_);
  // A digest of a batch's (worker_id, sequence) list, in order: what a fold is known by.
  static uint64_t BatchMembersDigest(const Batch& batch);
  // The batch's invariants (ApplyBatch) and its statistics, or InvalidArgument.
  static absl::StatusOr<StepStats> CheckBatch(const Batch& batch);
  // The X and state of the parameter `spec`, or of its rows when split; StateBytes likewise.
  static void InitState(const ParameterDefinition& definition, Parameter& parameter);
  static int64_t OwnedStateBytes(const ParamSpec& spec, const Placement& placement, int shard);
  // X's shape as held (the block's for a split parameter).
  static std::pair<int64_t, int64_t> HeldShape(const Parameter& parameter);
  // What a contribution to `parameter` from `worker_id` is validated against.
  ContributionContext Context(const Parameter& parameter, absl::string_view worker_id) const
      ABSL_LOCKS_EXCLUDED(mu_);

  const StoreOptions options_;
  // Held across a whole registration (state is built outside mu_); acquired before mu_.
  Mutex registration_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable Mutex mu_;
  std::unique_ptr<const Model> model_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> workers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dion

#endif  // DION_SERVER_PARAMETER_STORE_H_
