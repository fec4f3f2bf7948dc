// Which shard owns each parameter of a model: deterministic and size-balanced, so every shard
// and every client computes the same answer from the same table and shard count, in any order
// the table is listed.
//
// Rule: parameters sorted by size (elements) descending, ties by name ascending; each is placed
// on the shard with the least total size so far, ties to the lowest shard index (greedy
// "largest first", within 4/3 of the optimal maximum load).
//
// Thread-safety: plain value type.
#ifndef DION_COMMON_LAYOUT_H_
#define DION_COMMON_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/param_spec.h"

namespace dion {

struct Placement {
  std::string parameter;
  int shard = 0;
  int64_t size = 0;  // elements
};

class Layout {
 public:
  // Computes the layout of `table` over `num_shards`. InvalidArgument for num_shards < 1 or a
  // repeated or empty name.
  static absl::StatusOr<Layout> Compute(absl::Span<const ParamSpec> table, int num_shards);

  int num_shards() const { return num_shards_; }
  // In the order of the table given to Compute.
  const std::vector<Placement>& placements() const { return placements_; }
  // The owning shard, or -1 for a name not in the table.
  int ShardOf(absl::string_view parameter) const;
  // Total elements per shard.
  const std::vector<int64_t>& shard_sizes() const { return shard_sizes_; }

 private:
  int num_shards_ = 1;
  std::vector<Placement> placements_;
  absl::flat_hash_map<std::string, int> shard_of_;
  std::vector<int64_t> shard_sizes_;
};

}  // namespace dion

#endif  // DION_COMMON_LAYOUT_H_
