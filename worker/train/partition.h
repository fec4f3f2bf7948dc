// Deterministic partition of a data set's samples across W workers.
//
// Every worker computes the whole partition from (labels, W, options) and keeps its own
// part, so no coordination is needed; the same inputs give the same partition on every
// machine (the random streams come from common/rng.h, not from the standard library's
// implementation-defined distributions). Every sample lands in exactly one worker.
//
//  - kIid: shuffle all N indices, then split them into W contiguous parts whose sizes
//    differ by at most one.
//  - kDirichlet: for each class c, draw proportions p_c ~ Dirichlet(alpha, ..., alpha) over
//    the W workers and split class c's shuffled indices into W runs of sizes ~ p_c * N_c
//    (Hsu et al. 2019, the usual non-IID federated benchmark). Small alpha gives each worker
//    few classes; large alpha approaches the IID label mix. With small alpha a worker may get
//    few or no samples: min_samples_per_worker redraws until each has at least that many.
//
// Each part is returned in ascending index order; the training loop shuffles per epoch.
//
// Thread-safety: stateless functions, safe for concurrent use.
#ifndef DION_WORKER_PARTITION_H_
#define DION_WORKER_PARTITION_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace dion {

enum class PartitionKind { kIid, kDirichlet };

// "iid" or "dirichlet".
absl::string_view PartitionKindName(PartitionKind kind);
absl::StatusOr<PartitionKind> ParsePartitionKind(absl::string_view name);

struct PartitionOptions {
  PartitionKind kind = PartitionKind::kIid;
  double alpha = 1.0;     // Dirichlet concentration (> 0); ignored for kIid
  uint64_t seed = 0;      // the same seed on every worker gives the same partition
  // kDirichlet only: redraw the proportions (up to 1000 times, deterministically) until
  // every worker holds at least this many samples; FailedPrecondition if that never happens.
  int64_t min_samples_per_worker = 0;
};

// All W parts: result[w] holds worker w's sample indices, ascending. Validates: W >= 1,
// alpha > 0 and finite (for kDirichlet), num_classes >= 1, every label in [0, num_classes),
// min_samples_per_worker * W <= N. InvalidArgument names the offending argument.
absl::StatusOr<std::vector<std::vector<int64_t>>> PartitionAll(absl::Span<const int> labels,
                                                               int num_classes, int num_workers,
                                                               const PartitionOptions& options);

// Worker `worker_index`'s part (0 <= worker_index < num_workers), the same as
// PartitionAll(...)[worker_index].
absl::StatusOr<std::vector<int64_t>> PartitionIndices(absl::Span<const int> labels,
                                                      int num_classes, int num_workers,
                                                      int worker_index,
                                                      const PartitionOptions& options);

}  // namespace dion

#endif  // DION_WORKER_PARTITION_H_
