// The parameter store's state budget (StoreOptions::max_state_bytes): StateBytes against the
// state registration really allocates, and a table over budget refused before any allocation.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <variant>

#include "absl/strings/str_cat.h"
#include "server/parameter_store.h"
#include "tests/model_table_test_util.h"

namespace dion {
namespace {

using testing::Definition;

ModelTable EveryOptimizer() { return testing::EveryOptimizerTable("budget"); }

// Bytes of every matrix a snapshot with state holds: what the store allocated.
int64_t AllocatedBytes(const ParameterSnapshot& snapshot) {
  int64_t floats = snapshot.X.size();
  std::visit(
      [&](const auto& state) {
        using State = std::decay_t<decltype(state)>;
        if constexpr (std::is_same_v<State, DionState>) floats += state.M.size() + state.Q.size();
        if constexpr (std::is_same_v<State, AdamWState>) floats += state.m.size() + state.v.size();
        if constexpr (std::is_same_v<State, LionState>) floats += state.m.size();
        if constexpr (std::is_same_v<State, MuonState>) floats += state.M.size();
      },
      *snapshot.state);
  return floats * static_cast<int64_t>(sizeof(float));
}

std::unique_ptr<ParameterStore> Store(int64_t max_state_bytes, int shard_index = 0,
                                      int num_shards = 1) {
  StoreOptions options;
  options.max_state_bytes = max_state_bytes;
  options.shard_index = shard_index;
  options.num_shards = num_shards;
  return ParameterStore::Create(options).value();
}

int64_t TotalStateBytes(const ModelTable& table) {
  int64_t total = 0;
  for (const ParameterDefinition& d : table.parameters) {
    total += StateBytes(d.spec) + kParameterOverheadBytes;
  }
  return total;
}

TEST(StateBudget, StateBytesIsWhatRegistrationAllocates) {
  const ModelTable table = EveryOptimizer();
  auto store = Store(kNoStateBudget);
  ASSERT_TRUE(store->RegisterModel(table).ok());
  for (const ParameterDefinition& d : table.parameters) {
    const ParameterSnapshot snapshot = store->Snapshot(d.spec.name, true).value();
    EXPECT_EQ(StateBytes(d.spec), AllocatedBytes(snapshot)) << d.spec.name;
  }
}

TEST(StateBudget, ATableOverBudgetIsRefusedNamingTheSizesAndRegistersNothing) {
  const ModelTable table = EveryOptimizer();
  const int64_t needed = TotalStateBytes(table);
  auto store = Store(needed - 1);
  absl::StatusOr<bool> registered = store->RegisterModel(table);
  ASSERT_EQ(registered.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(registered.status().message());
  EXPECT_NE(message.find(absl::StrCat("needs ", needed, " bytes")), std::string::npos) << message;
  EXPECT_NE(message.find(absl::StrCat("budget of ", needed - 1)), std::string::npos) << message;
  EXPECT_NE(message.find("'tall' 48 x 32 dion"), std::string::npos) << message;  // the largest
  EXPECT_NE(message.find("--max_state_bytes"), std::string::npos) << message;
  EXPECT_FALSE(store->model_registered());
  EXPECT_TRUE(store->OwnedParameters().empty());
  // Nothing was left behind: the same store registers a table that fits.
  ModelTable small;
  small.model_name = "small";
  small.parameters = {Definition("b", {8}, OptimizerKind::kAdamW, 1)};
  EXPECT_TRUE(store->RegisterModel(small).value_or(false));
}

TEST(StateBudget, ATableOfExactlyTheBudgetIsRegistered) {
  const ModelTable table = EveryOptimizer();
  auto store = Store(TotalStateBytes(table));
  EXPECT_TRUE(store->RegisterModel(table).value_or(false));
}

TEST(StateBudget, OnlyTheParametersOfThisShardCount) {
  const ModelTable table = EveryOptimizer();
  for (int shard = 0; shard < 2; ++shard) {
    auto probe = Store(kNoStateBudget, shard, 2);
    ASSERT_TRUE(probe->RegisterModel(table).ok());
    int64_t owned = 0;
    for (const std::string& name : probe->OwnedParameters()) {
      owned += StateBytes(probe->Spec(name).value()) + kParameterOverheadBytes;
    }
    ASSERT_LT(owned, TotalStateBytes(table));
    EXPECT_TRUE(Store(owned, shard, 2)->RegisterModel(table).ok()) << shard;
    EXPECT_EQ(Store(owned - 1, shard, 2)->RegisterModel(table).status().code(),
              absl::StatusCode::kResourceExhausted)
        << shard;
  }
}

// The table of a 19-byte RegisterModel that asked for ~2 GiB: refused without allocating it
// (an allocation of 2 GiB would take far longer than this test's budget of time).
TEST(StateBudget, AHugeDionParameterIsRefusedBeforeAllocation) {
  ModelTable table;
  table.model_name = "m";
  table.parameters = {Definition("w", {16384, 16384}, OptimizerKind::kDion, 1)};
  const int64_t needed = StateBytes(table.parameters[0].spec);
  EXPECT_GT(needed, int64_t{2} << 30);  // X and M: 2 x 16384^2 floats, plus Q
  auto store = Store(int64_t{1} << 30);
  EXPECT_EQ(store->RegisterModel(table).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(store->model_registered());
}

// A table of many tiny parameters costs the shard more than its floats: each is counted with
// its bookkeeping, so a message full of one-element parameters cannot bypass the budget.
TEST(StateBudget, EachParameterCountsItsBookkeeping) {
  ModelTable table;
  table.model_name = "many";
  for (int i = 0; i < 1000; ++i) {
    table.parameters.push_back(Definition(absl::StrCat("p", i), {1}, OptimizerKind::kAdamW, i));
  }
  const int64_t floats_only = 1000 * StateBytes(table.parameters[0].spec);  // 12 KB
  auto store = Store(1000 * kParameterOverheadBytes);
  absl::StatusOr<bool> registered = store->RegisterModel(table);
  EXPECT_EQ(registered.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(registered.status().message().find("bookkeeping"), absl::string_view::npos);
  EXPECT_LT(floats_only, 1000 * kParameterOverheadBytes);
  EXPECT_TRUE(Store(floats_only + 1000 * kParameterOverheadBytes)->RegisterModel(table).ok());
}

TEST(StateBudget, ABudgetBelowOneByteIsRefusedAtCreation) {
  StoreOptions options;
  options.max_state_bytes = 0;
  EXPECT_EQ(ParameterStore::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dion
