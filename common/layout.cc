#include "common/layout.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace dion {

absl::StatusOr<Layout> Layout::Compute(absl::Span<const ParamSpec> table, int num_shards) {
  if (num_shards < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_shards must be >= 1, got ", num_shards));
  }
  Layout layout;
  layout.num_shards_ = num_shards;
  layout.shard_sizes_.assign(num_shards, 0);
  layout.placements_.reserve(table.size());
  for (const ParamSpec& spec : table) {
    if (spec.name.empty()) return absl::InvalidArgumentError("parameter name must not be empty");
    if (!layout.shard_of_.emplace(spec.name, -1).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter '", spec.name, "' appears twice in the table"));
    }
    layout.placements_.push_back({spec.name, -1, spec.size()});
  }

  std::vector<size_t> order(table.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const Placement& pa = layout.placements_[a];
    const Placement& pb = layout.placements_[b];
    if (pa.size != pb.size) return pa.size > pb.size;
    return pa.parameter < pb.parameter;
  });
  for (size_t index : order) {
    Placement& placement = layout.placements_[index];
    // min_element returns the first minimum: ties go to the lowest shard index.
    const int shard = static_cast<int>(
        std::min_element(layout.shard_sizes_.begin(), layout.shard_sizes_.end()) -
        layout.shard_sizes_.begin());
    placement.shard = shard;
    layout.shard_sizes_[shard] += placement.size;
    layout.shard_of_[placement.parameter] = shard;
  }
  return layout;
}

int Layout::ShardOf(absl::string_view parameter) const {
  auto it = shard_of_.find(parameter);
  return it == shard_of_.end() ? -1 : it->second;
}

}  // namespace dion
