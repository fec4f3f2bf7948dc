// Deterministic, size-balanced placement of parameters on shards (server/layout.h).
#include "common/layout.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"

namespace dion {
namespace {

ParamSpec Spec(const std::string& name, int64_t rows, int64_t cols) {
  ParamSpec spec;
  spec.name = name;
  spec.shape = rows == 1 ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols};
  return spec;
}

std::vector<ParamSpec> Mlp() {
  return {Spec("fc1.weight", 256, 784), Spec("fc1.bias", 1, 256), Spec("fc2.weight", 256, 256),
          Spec("fc2.bias", 1, 256),     Spec("head.weight", 10, 256), Spec("head.bias", 1, 10),
          Spec("norm.scale", 1, 256),   Spec("emb", 1000, 64)};
}

TEST(Layout, SameTableGivesSameLayoutInAnyOrder) {
  const std::vector<ParamSpec> table = Mlp();
  const Layout reference = *Layout::Compute(table, 3);
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<ParamSpec> shuffled = table;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    const Layout layout = *Layout::Compute(shuffled, 3);
    for (const ParamSpec& spec : table) {
      EXPECT_EQ(layout.ShardOf(spec.name), reference.ShardOf(spec.name)) << spec.name;
    }
    EXPECT_EQ(layout.shard_sizes(), reference.shard_sizes());
  }
}

TEST(Layout, PlacesLargestFirstOnTheLeastLoadedShard) {
  // Greedy by hand: 10 -> s0; 7 -> s1; 5 -> s1 (12); 4 -> s0 (14); 3 -> s1 (15).
  const std::vector<ParamSpec> table = {Spec("c", 1, 5), Spec("a", 1, 10), Spec("e", 1, 3),
                                        Spec("b", 1, 7), Spec("d", 1, 4)};
  const Layout layout = *Layout::Compute(table, 2);
  EXPECT_EQ(layout.ShardOf("a"), 0);
  EXPECT_EQ(layout.ShardOf("b"), 1);
  EXPECT_EQ(layout.ShardOf("c"), 1);
  EXPECT_EQ(layout.ShardOf("d"), 0);
  EXPECT_EQ(layout.ShardOf("e"), 1);
  EXPECT_EQ(layout.shard_sizes(), (std::vector<int64_t>{14, 15}));
  // Placements keep the table order.
  ASSERT_EQ(layout.placements().size(), 5u);
  EXPECT_EQ(layout.placements()[0].parameter, "c");
  EXPECT_EQ(layout.placements()[0].size, 5);
}

TEST(Layout, EqualSizesAreDealtInNameOrder) {
  const std::vector<ParamSpec> table = {Spec("d", 4, 4), Spec("b", 4, 4), Spec("a", 4, 4),
                                        Spec("c", 4, 4)};
  const Layout layout = *Layout::Compute(table, 2);
  EXPECT_EQ(layout.ShardOf("a"), 0);
  EXPECT_EQ(layout.ShardOf("b"), 1);
  EXPECT_EQ(layout.ShardOf("c"), 0);
  EXPECT_EQ(layout.ShardOf("d"), 1);
}

// Greedy largest-first leaves the shards within one (largest) parameter of each other.
TEST(Layout, ShardLoadsDifferByAtMostTheLargestParameter) {
  std::vector<ParamSpec> table;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> dim(1, 300);
  int64_t largest = 0;
  for (int i = 0; i < 60; ++i) {
    table.push_back(Spec(absl::StrCat("p", i), dim(rng), dim(rng)));
    largest = std::max(largest, table.back().size());
  }
  for (int shards : {1, 2, 3, 5, 8}) {
    const Layout layout = *Layout::Compute(table, shards);
    const auto [lo, hi] =
        std::minmax_element(layout.shard_sizes().begin(), layout.shard_sizes().end());
    EXPECT_LE(*hi - *lo, largest) << shards << " shards";
    int64_t total = 0;
    for (int64_t s : layout.shard_sizes()) total += s;
    int64_t expected = 0;
    for (const ParamSpec& spec : table) expected += spec.size();
    EXPECT_EQ(total, expected);
  }
}

TEST(Layout, OneShardOwnsEverything) {
  const Layout layout = *Layout::Compute(Mlp(), 1);
  for (const Placement& p : layout.placements()) EXPECT_EQ(p.shard, 0) << p.parameter;
  EXPECT_EQ(layout.ShardOf("no.such.parameter"), -1);
}

TEST(Layout, RejectsZeroShardsAndRepeatedNames) {
  EXPECT_EQ(Layout::Compute(Mlp(), 0).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<ParamSpec> twice = Mlp();
  twice.push_back(Spec("fc1.bias", 1, 3));
  const auto layout = Layout::Compute(twice, 2);
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(layout.status().message().find("fc1.bias"), absl::string_view::npos);
}

}  // namespace
}  // namespace dion
