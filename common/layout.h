// Which shard owns each parameter of a model: deterministic and size-balanced, so every shard
// and every client computes the same answer from the same table and shard count, in any order
// the table is listed.
//
// Rule: parameters sorted by size (elements) descending, ties by name ascending; each is placed
// on the shard with the least total size so far, ties to the lowest shard index (greedy
// "largest first", within 4/3 of the optimal maximum load).
//
// A Dion parameter whose spec asks for split_owners = k >= 2 is split over
// owners = min(k, num_shards) shards (docs/algorithm.md, "One matrix over many shards"): its
// tall side (rows when rows >= cols, else columns) is cut into owners contiguous blocks
// (SplitRowBlock: the first ones one row larger), and block i, in row order, goes to the
// least-loaded shard not yet holding a block of it (ties to the lowest index). It takes its
// place in the size order as a whole parameter does.
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
#include "common/row_reduce.h"

namespace dion {

// One owner of a split parameter and its rows of the tall side.
struct RowOwner {
  int shard = 0;
  RowBlock rows;
  bool operator==(const RowOwner& other) const {
    return shard == other.shard && rows == other.rows;
  }
};

struct Placement {
  std::string parameter;
  int shard = 0;     // the owner; for a split parameter, the owner of the first rows
  int64_t size = 0;  // elements of the whole parameter
  // Empty for a whole parameter; else every owner in row order (split[0].shard == shard).
  std::vector<RowOwner> split;

  bool is_split() const { return !split.empty(); }
};

class Layout {
 public:
  // Computes the layout of `table` over `num_shards`. InvalidArgument for num_shards < 1, a
  // repeated or empty name, split_owners >= 2 on a parameter that is not a 2-D Dion one, or a
  // split parameter whose tall side has fewer rows than its owners.
  static absl::StatusOr<Layout> Compute(absl::Span<const ParamSpec> table, int num_shards);

  int num_shards() const { return num_shards_; }
  // In the order of the table given to Compute.
  const std::vector<Placement>& placements() const { return placements_; }
  // The owning shard (of a split parameter: the owner of its first rows), or -1 for a name not
  // in the table.
  int ShardOf(absl::string_view parameter) const;
  // The placement of `parameter`, or nullptr for a name not in the table.
  const Placement* Find(absl::string_view parameter) const;
  // Whether `shard` holds the whole parameter or a block of it.
  bool Holds(absl::string_view parameter, int shard) const;
  // Whether any parameter is split.
  bool has_split() const { return has_split_; }
  // Total elements per shard (a split parameter counts its blocks' elements on their owners).
  const std::vector<int64_t>& shard_sizes() const { return shard_sizes_; }

 private:
  int num_shards_ = 1;
  std::vector<Placement> placements_;
  absl::flat_hash_map<std::string, size_t> index_of_;  // into placements_
  std::vector<int64_t> shard_sizes_;
  bool has_split_ = false;
};

}  // namespace dion

#endif  // DION_COMMON_LAYOUT_H_
