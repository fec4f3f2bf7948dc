#include "common/layout.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace dion {
namespace {

// Number of owners of `spec` over `num_shards` shards: 1 when it stays whole.
absl::StatusOr<int> Owners(const ParamSpec& spec, int num_shards) {
  if (spec.split_owners <= 1) return 1;
  if (spec.optimizer != OptimizerKind::kDion || spec.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter '", spec.name, "': split_owners ", spec.split_owners,
                     " is only for 2-D Dion parameters"));
  }
  const int owners = std::min(spec.split_owners, num_shards);
  const int64_t tall = std::max(spec.rows(), spec.cols());
  if (tall < owners) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter '", spec.name, "' (", spec.rows(), " x ", spec.cols(),
        ") cannot be split over ", owners, " shards: its tall side has ", tall,
        " rows, expected at least one per shard"));
  }
  return owners;
}

// The least-loaded shard among those `taken` does not mark, ties to the lowest index.
int LeastLoaded(const std::vector<int64_t>& loads, const std::vector<bool>& taken) {
  int best = -1;
  for (int s = 0; s < static_cast<int>(loads.size()); ++s) {
    if (taken[s]) continue;
    if (best < 0 || loads[s] < loads[best]) best = s;
  }
  return best;
}

}  // namespace

absl::StatusOr<Layout> Layout::Compute(absl::Span<const ParamSpec> table, int num_shards) {
  if (num_shards < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_shards must be >= 1, got ", num_shards));
  }
  Layout layout;
  layout.num_shards_ = num_shards;
  layout.shard_sizes_.assign(num_shards, 0);
  layout.placements_.reserve(table.size());
  std::vector<int> owners(table.size(), 1);
  for (size_t i = 0; i < table.size(); ++i) {
    const ParamSpec& spec = table[i];
    if (spec.name.empty()) return absl::InvalidArgumentError("parameter name must not be empty");
    if (!layout.index_of_.emplace(spec.name, i).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter '", spec.name, "' appears twice in the table"));
    }
    absl::StatusOr<int> k = Owners(spec, num_shards);
    if (!k.ok()) return k.status();
    owners[i] = *k;
    layout.placements_.push_back({spec.name, -1, spec.size(), {}});
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
    const ParamSpec& spec = table[index];
    std::vector<bool> taken(num_shards, false);
    if (owners[index] == 1) {
      placement.shard = LeastLoaded(layout.shard_sizes_, taken);
      layout.shard_sizes_[placement.shard] += placement.size;
      continue;
    }
    const int64_t tall = std::max(spec.rows(), spec.cols());
    const int64_t short_side = std::min(spec.rows(), spec.cols());
    for (int i = 0; i < owners[index]; ++i) {
      const int shard = LeastLoaded(layout.shard_sizes_, taken);
      const RowBlock rows = SplitRowBlock(tall, owners[index], i);
      taken[shard] = true;
      layout.shard_sizes_[shard] += rows.size() * short_side;
      placement.split.push_back({shard, rows});
    }
    placement.shard = placement.split.front().shard;
    layout.has_split_ = true;
  }
  return layout;
}

const Placement* Layout::Find(absl::string_view parameter) const {
  auto it = index_of_.find(parameter);
  return it == index_of_.end() ? nullptr : &placements_[it->second];
}

int Layout::ShardOf(absl::string_view parameter) const {
  const Placement* placement = Find(parameter);
  return placement == nullptr ? -1 : placement->shard;
}

bool Layout::Holds(absl::string_view parameter, int shard) const {
  const Placement* placement = Find(parameter);
  if (placement == nullptr) return false;
  if (!placement->is_split()) return placement->shard == shard;
  return std::any_of(placement->split.begin(), placement->split.end(),
                     [shard](const RowOwner& owner) { return owner.shard == shard; });
}

}  // namespace dion
