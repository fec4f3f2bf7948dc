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
#include <variant>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/compressor.h"
#include "common/matrix.h"

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

// The order in which a batch is summed: by worker id, then sequence. Float sums depend on the
// order of their terms; this one makes a step a function of the batch's contents, not of the
// order in which the network delivered its pushes.
inline bool SummationOrderLess(const Contribution& a, const Contribution& b) {
  return std::tie(a.worker_id, a.sequence) < std::tie(b.worker_id, b.sequence);
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
  Contribution contribution;
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
};

}  // namespace dion

#endif  // DION_COMMON_CONTRIBUTION_H_
