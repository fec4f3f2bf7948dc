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

ParamSpec DionSpec(const std::string& name, int64_t rows, int64_t cols, int split_owners) {
  ParamSpec spec = Spec(name, rows, cols);
  spec.optimizer = OptimizerKind::kDion;
  spec.split_owners = split_owners;
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

// The split rule worked by hand: "w" (10 x 4, 40 elements) over 3 shards has blocks of 4, 3
// and 3 rows (16, 12, 12 elements), placed first (largest), on the empty shards 0, 1, 2 in row
// order; then "a" (20) goes to shard 1 (12, lowest of the two least loaded), "b" (8) to 2.
TEST(Layout, SplitsATallParameterIntoRowBlocksInRowOrder) {
  const std::vector<ParamSpec> table = {Spec("b", 2, 4), DionSpec("w", 10, 4, 3),
                                        Spec("a", 4, 5)};
  const Layout layout = *Layout::Compute(table, 3);
  ASSERT_TRUE(layout.has_split());
  const Placement& w = *layout.Find("w");
  ASSERT_TRUE(w.is_split());
  EXPECT_EQ(w.shard, 0);
  EXPECT_EQ(w.size, 40);
  const std::vector<RowOwner> expected = {{0, {0, 4}}, {1, {4, 7}}, {2, {7, 10}}};
  EXPECT_EQ(w.split, expected);
  EXPECT_EQ(layout.ShardOf("a"), 1);
  EXPECT_EQ(layout.ShardOf("b"), 2);
  EXPECT_EQ(layout.shard_sizes(), (std::vector<int64_t>{16, 32, 20}));
  for (int s = 0; s < 3; ++s) EXPECT_TRUE(layout.Holds("w", s)) << s;
  EXPECT_FALSE(layout.Holds("a", 0));
  EXPECT_TRUE(layout.Holds("a", 1));
  EXPECT_FALSE(layout.Holds("nothing", 0));
}

// The tall side of a wide matrix is its columns: 4 x 10 over 2 shards is 5 + 5 columns, and
// each block goes to the least-loaded shard not yet holding one (here after "big" on shard 0).
TEST(Layout, SplitsAWideParameterByColumnsAroundTheLoad) {
  const std::vector<ParamSpec> table = {Spec("big", 10, 10), DionSpec("w", 4, 10, 2)};
  const Layout layout = *Layout::Compute(table, 3);
  const Placement& w = *layout.Find("w");
  const std::vector<RowOwner> expected = {{1, {0, 5}}, {2, {5, 10}}};
  EXPECT_EQ(w.split, expected);
  EXPECT_EQ(w.shard, 1);
  EXPECT_EQ(layout.shard_sizes(), (std::vector<int64_t>{100, 20, 20}));
}

// split_owners above the shard count uses every shard; 0 and 1 keep the parameter whole.
TEST(Layout, SplitOwnersAreCappedByTheShardCountAndOneMeansWhole) {
  const Layout capped = *Layout::Compute({DionSpec("w", 9, 3, 8)}, 2);
  const std::vector<RowOwner> expected = {{0, {0, 5}}, {1, {5, 9}}};
  EXPECT_EQ(capped.Find("w")->split, expected);
  for (int owners : {0, 1}) {
    const Layout whole = *Layout::Compute({DionSpec("w", 9, 3, owners)}, 2);
    EXPECT_FALSE(whole.has_split());
    EXPECT_FALSE(whole.Find("w")->is_split());
    EXPECT_EQ(whole.ShardOf("w"), 0);
  }
  const Layout one_shard = *Layout::Compute({DionSpec("w", 9, 3, 4)}, 1);
  EXPECT_FALSE(one_shard.has_split());
}

TEST(Layout, SplitLayoutIsTheSameInAnyTableOrder) {
  std::vector<ParamSpec> table = Mlp();
  table.push_back(DionSpec("big.weight", 300, 1000, 3));
  table.push_back(DionSpec("mid.weight", 500, 200, 2));
  const Layout reference = *Layout::Compute(table, 4);
  std::mt19937 rng(11);
  for (int trial = 0; trial < 5; ++trial) {
    std::shuffle(table.begin(), table.end(), rng);
    const Layout layout = *Layout::Compute(table, 4);
    for (const ParamSpec& spec : table) {
      EXPECT_EQ(layout.Find(spec.name)->split, reference.Find(spec.name)->split) << spec.name;
      EXPECT_EQ(layout.ShardOf(spec.name), reference.ShardOf(spec.name)) << spec.name;
    }
    EXPECT_EQ(layout.shard_sizes(), reference.shard_sizes());
  }
}

TEST(Layout, RefusesSplitsThatCannotBeServed) {
  // Tall side 3 < 4 owners.
  auto narrow = Layout::Compute({DionSpec("w", 2, 3, 4)}, 4);
  EXPECT_EQ(narrow.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(narrow.status().message().find("'w' (2 x 3) cannot be split over 4 shards"),
            absl::string_view::npos)
      << narrow.status();
  // Not a Dion parameter.
  ParamSpec adamw = Spec("v", 8, 8);
  adamw.split_owners = 2;
  auto not_dion = Layout::Compute({adamw}, 2);
  EXPECT_EQ(not_dion.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(not_dion.status().message().find("only for 2-D Dion"), absl::string_view::npos);
  EXPECT_EQ(ValidateParamSpec(adamw).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dion
