// What a worker pushes for one parameter, once decoded from the wire (common/wire.h), and the
// batch of accepted contributions the batcher hands to the store for one step.
//
// Orientation: for an m x n parameter X, a low-rank contribution has P (m x r) and R (n x r)
// and stands for P R^T; a dense gradient is m x n (1-D parameters are 1 x n).
//
// Thread-safety: plain value types.
#ifndef DION_COMMON_CONTRIBUTION_H_
#define DION_COMMON_CONTRIBUTION_H_

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/compressor.h"
#include "common/matrix.h"
#include "common/param_spec.h"
#include "common/row_reduce.h"

namespace dion {

struct Contribution {
  std::string worker_id;
  uint64_t sequence = 0;       // dedup key together with (worker_id, parameter)
  std::string parameter;
  int64_t base_version = 0;    // the version the gradient was computed against
  int64_t sample_count = 0;    // > 0
  double loss = 0.0;           // the worker's training loss (monitoring only)
  // Low-rank factors for Dion parameters, a dense gradient for the others.
  std::variant<LowRankFactors, Matrix> payload;

  bool is_low_rank() const { return std::holds_alternative<LowRankFactors>(payload); }
  const LowRankFactors& factors() const { return std::get<LowRankFactors>(payload); }
  const Matrix& gradient() const { return std::get<Matrix>(payload); }
};

// Entries of a contribution (every entry of P, of R and of a dense gradient), or of P R^T
// (bounded by r max|P| max|R|), above this magnitude are refused: no real gradient is that large, and below it the batch mean, the momentum and
// AdamW's squared gradient stay finite in float32.
inline constexpr double kMaxContributionMagnitude = 1e18;

// Bytes a worker_id may have: ids are kept per worker and reported by Status, so their size is
// bounded like everything else a client can make the shard keep.
inline constexpr size_t kMaxWorkerIdBytes = 256;

// InvalidArgument unless 1 <= worker_id.size() <= kMaxWorkerIdBytes (the message names the
// length and the limit). Every path that takes a worker id (push, registration) checks it.
absl::Status ValidateWorkerId(absl::string_view worker_id);

// What a contribution is validated against: its parameter's spec and current version, and
// whether its worker is registered.
struct ContributionContext {
  ContributionContext(const ParamSpec& spec, int64_t version, bool worker_registered,
                      RowBlock rows = {}, int64_t lead = 0)
      : spec(spec), version(version), worker_registered(worker_registered), rows(rows),
        lead(lead) {}
  const ParamSpec& spec;
  int64_t version = 0;
  bool worker_registered = false;
  // For a shard that owns one row block of a split parameter: the rows of the tall side it
  // owns; empty ({0, 0}) for a whole parameter.
  RowBlock rows;
  // How far a base_version may be above `version`: 1 on a follower of a split parameter, whose
  // leader may have applied (and a worker seen) a step the follower has not applied yet; 0
  // otherwise.
  int64_t lead = 0;
};

// Whether `contribution`'s payload fits `spec`: low-rank factors for Dion (P m x r, R n x r,
// 1 <= r <= min(m, n)), a dense m x n gradient otherwise; every entry finite (else a
// NonFiniteError) and within kMaxContributionMagnitude. With a non-empty `rows` (one owner's
// block of a split parameter) the tall side's factor must have exactly those rows: P is
// rows.size() x r when m >= n, else R is. InvalidArgument naming the parameter and what was
// expected.
absl::Status ValidatePayload(const ParamSpec& spec, const Contribution& contribution,
                             RowBlock rows = {});

// Every check a contribution gets, in this order: worker id valid (ValidateWorkerId) and
// registered (FailedPrecondition), sample_count > 0 (InvalidArgument), 0 <= base_version <=
// context.version (OutOfRange), then ValidatePayload.
absl::Status CheckContribution(const Contribution& contribution,
                               const ContributionContext& context);

// A contribution that passed CheckContribution. Only Validate makes one, so the batcher and
// the step take it without checking again. Thread-safety: a plain value.
class ValidatedContribution {
 public:
  const Contribution& operator*() const { return contribution_; }
  const Contribution* operator->() const { return &contribution_; }

 private:
  friend absl::StatusOr<ValidatedContribution> Validate(Contribution contribution,
                                                        const ContributionContext& context);
  explicit ValidatedContribution(Contribution contribution)
      : contribution_(std::move(contribution)) {}
  Contribution contribution_;
};

// CheckContribution, and the contribution as validated.
absl::StatusOr<ValidatedContribution> Validate(Contribution contribution,
                                               const ContributionContext& context);

// InvalidArgument carrying a payload that IsNonFiniteError recognises, so a shard can count
// pushes refused for NaN or Inf apart from other bad input.
absl::Status NonFiniteError(std::string message);
bool IsNonFiniteError(const absl::Status& status);

// The order in which a batch is summed: by worker id, then sequence. Float sums depend on the
// order of their terms; this one makes a step a function of the batch's contents, not of the
// order in which the network delivered its pushes.
inline bool SummationOrderLess(const Contribution& a, const Contribution& b) {
  return std::tie(a.worker_id, a.sequence) < std::tie(b.worker_id, b.sequence);
}
inline bool SummationOrderLess(const ValidatedContribution& a, const ValidatedContribution& b) {
  return SummationOrderLess(*a, *b);
}

// How a push ended: the batcher's verdict (accepted, duplicate, stale), or rejected with an
// error before or by it. The one outcome the shard counts, the metrics label and the service
// maps to the wire.
enum class PushOutcome {
  kAccepted,   // in a batch; will be applied exactly once
  kDuplicate,  // this (worker, parameter, sequence) was accepted before; ignored
  kStale,      // staleness above max_staleness; refused, nothing kept
  kRejected,   // refused with an error status (bad input, shutdown); nothing kept
};

absl::string_view PushOutcomeName(PushOutcome outcome);

// One accepted contribution with its staleness and its weight in the batch mean.
struct WeightedContribution {
  ValidatedContribution contribution;
  int64_t staleness = 0;  // tau = batch version - base_version
  double weight = 0.0;    // samples * w(tau), normalised so a batch's weights sum to 1
};

// Why a batch closed.
enum class CloseReason {
  kSamples,   // reached the sample target
  kWorkers,   // reached K distinct workers
  kDeadline,  // the deadline after the first contribution passed
  kFull,      // reached the per-batch contribution cap (a memory bound)
  kFlush,     // closed on request (shutdown, checkpoint)
};

absl::string_view CloseReasonName(CloseReason reason);

// The contributions of one step of one parameter.
struct Batch {
  std::string parameter;
  int64_t version = 0;  // the version the step applies to; it produces version + 1
  std::vector<WeightedContribution> entries;  // non-empty, by (worker_id, sequence)
  int64_t samples = 0;  // sum of sample_count
  int workers = 0;      // distinct worker ids
  CloseReason reason = CloseReason::kFlush;
  absl::Time opened;    // arrival of the first contribution
  absl::Time closed;
  // The shard's write-ahead log offset that must be durable before the step is applied (0:
  // no log).
  uint64_t journal_end = 0;
  // Differential privacy (server/dp_noise.h): the seed and standard deviation of the noise
  // added to this batch's aggregate, fixed when the batch closes and logged with it, so a
  // replay applies the same noise whatever the options then; seed 0: no noise.
  uint64_t noise_seed = 0;
  double noise_stddev = 0.0;
};

}  // namespace dion

#endif  // DION_COMMON_CONTRIBUTION_H_
