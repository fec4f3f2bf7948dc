// The shard's parameter store (server/parameter_store.h): registration, validation of every
// kind of bad contribution (precise code, state bit-identical afterwards), and batches applied
// exactly as common/'s optimizers would apply the dense weighted-mean gradient.
#include "server/parameter_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dion.h"
#include "common/layout.h"
#include "server/batcher.h"
#include "common/checksum.h"
#include "server/clock.h"
#include "tests/model_table_test_util.h"
#include "tests/reference.h"

namespace dion {
namespace {

using testing::Definition;
using testing::GaussianD;
using testing::MaxRelativeError;

ModelTable TestModel() { return testing::EveryOptimizerTable("test-mlp"); }

std::unique_ptr<ParameterStore> RegisteredStore(const ModelTable& table = TestModel()) {
  auto store = ParameterStore::Create(StoreOptions{});
  EXPECT_TRUE(store.ok());
  EXPECT_TRUE((*store)->RegisterModel(table).value_or(false));
  EXPECT_TRUE((*store)->RegisterWorker("w0").ok());
  EXPECT_TRUE((*store)->RegisterWorker("w1").ok());
  EXPECT_TRUE((*store)->RegisterWorker("w2").ok());
  return *std::move(store);
}

LowRankFactors Factors(int64_t m, int64_t n, int r, uint64_t seed) {
  return {GaussianD(m, r, seed).cast<float>(), GaussianD(n, r, seed + 1).cast<float>()};
}

Contribution LowRank(const std::string& parameter, int64_t m, int64_t n, int r,
                     const std::string& worker = "w0", uint64_t sequence = 0,
                     int64_t base_version = 0, int64_t samples = 8) {
  Contribution c;
  c.worker_id = worker;
  c.sequence = sequence;
  c.parameter = parameter;
  c.base_version = base_version;
  c.sample_count = samples;
  c.loss = 1.5;
  c.payload = Factors(m, n, r, 100 * sequence + 7 * r + m);
  return c;
}

Contribution Dense(const std::string& parameter, int64_t rows, int64_t cols,
                   const std::string& worker = "w0", uint64_t sequence = 0,
                   int64_t base_version = 0, int64_t samples = 8) {
  Contribution c;
  c.worker_id = worker;
  c.sequence = sequence;
  c.parameter = parameter;
  c.base_version = base_version;
  c.sample_count = samples;
  c.payload = Matrix(GaussianD(rows, cols, 1000 + sequence).cast<float>());
  return c;
}

// `c` checked as the store checks a push (against its parameter's spec in TestModel, worker
// registered, any base version): the only way to make a batch entry.
absl::StatusOr<ValidatedContribution> ValidFor(Contribution c) {
  for (const ParameterDefinition& p : TestModel().parameters) {
    if (p.spec.name == c.parameter) {
      return Validate(std::move(c), {p.spec, std::numeric_limits<int64_t>::max(), true});
    }
  }
  return absl::NotFoundError(absl::StrCat("no parameter '", c.parameter, "' in TestModel"));
}

// REQUIRES: `c` passes ValidFor (the test aborts otherwise).
ValidatedContribution Valid(Contribution c) { return ValidFor(std::move(c)).value(); }

Batch SingleBatch(Contribution c, int64_t version) {
  Batch batch;
  batch.parameter = c.parameter;
  batch.version = version;
  batch.samples = c.sample_count;
  batch.workers = 1;
  batch.entries.push_back({Valid(std::move(c)), 0, 1.0});
  return batch;
}

// Every float of X and of the optimizer state, plus version and step, for bit comparisons.
std::vector<float> StateBits(const ParameterSnapshot& s) {
  std::vector<float> bits(s.X.data(), s.X.data() + s.X.size());
  const auto append = [&](const Matrix& M) { bits.insert(bits.end(), M.data(), M.data() + M.size()); };
  std::visit(
      [&](const auto& state) {
        using T = std::decay_t<decltype(state)>;
        if constexpr (std::is_same_v<T, DionState>) {
          append(state.M);
          append(state.Q);
        } else if constexpr (std::is_same_v<T, AdamWState>) {
          append(state.m);
          append(state.v);
        } else if constexpr (std::is_same_v<T, LionState>) {
          append(state.m);
        } else {
          append(state.M);
        }
        bits.push_back(static_cast<float>(state.step));
      },
      *s.state);
  bits.push_back(static_cast<float>(s.version));
  return bits;
}

void ExpectBitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

// ------------------------------------------------------------------------------------------
// Registration

TEST(ParameterStore, RegisteringTheIdenticalTableAgainSucceeds) {
  auto store = RegisteredStore();
  const absl::StatusOr<bool> again = store->RegisterModel(TestModel());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again) << "not newly registered";
  // Listing order does not matter.
  ModelTable reordered = TestModel();
  std::swap(reordered.parameters[0], reordered.parameters[3]);
  EXPECT_TRUE(store->RegisterModel(reordered).ok());
}

TEST(ParameterStore, ConflictingTableIsRefusedNamingTheFirstMismatch) {
  auto store = RegisteredStore();
  const auto before = StateBits(*store->Snapshot("tall", true));
  ModelTable changed = TestModel();
  changed.parameters[1].spec.dion.lr = 0.02;
  const absl::StatusOr<bool> result = store->RegisterModel(changed);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(result.status().message().find("'wide'"), absl::string_view::npos)
      << result.status();
  EXPECT_NE(result.status().message().find("dion.lr"), absl::string_view::npos);

  ModelTable reshaped = TestModel();
  reshaped.parameters[2].spec.shape = {33};
  EXPECT_NE(store->RegisterModel(reshaped).status().message().find("shape"),
            absl::string_view::npos);
  ModelTable missing = TestModel();
  missing.parameters.pop_back();
  const auto missing_result = store->RegisterModel(missing);
  EXPECT_EQ(missing_result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(missing_result.status().message().find("'muon'"), absl::string_view::npos);
  ModelTable with_value = TestModel();
  with_value.parameters[2].initial_value = Matrix::Ones(1, 32);
  EXPECT_NE(store->RegisterModel(with_value).status().message().find("initial_value"),
            absl::string_view::npos);
  ExpectBitIdentical(StateBits(*store->Snapshot("tall", true)), before);
}

TEST(ParameterStore, InvalidTableIsRefusedWithInvalidArgument) {
  auto store = *ParameterStore::Create(StoreOptions{});
  ModelTable bad = TestModel();
  bad.parameters[2].spec.shape = {0};
  EXPECT_EQ(store->RegisterModel(bad).status().code(), absl::StatusCode::kInvalidArgument);
  ModelTable twice = TestModel();
  twice.parameters.push_back(twice.parameters[0]);
  EXPECT_EQ(store->RegisterModel(twice).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(store->model_registered());
}

// Each owner of a split parameter (split_owners >= 2) holds its rows of the whole initial
// value and of M, and the whole Q, exactly as the unsplit store has them; a snapshot says which
// rows; another owner's block is refused on restore, naming both ranges.
TEST(ParameterStore, OwnersOfASplitParameterHoldTheirRowsOfTheWhole) {
  ModelTable table = TestModel();
  ASSERT_EQ(table.parameters[0].spec.optimizer, OptimizerKind::kDion);
  const ParamSpec& spec = table.parameters[0].spec;
  table.parameters[0].spec.split_owners = 2;
  ModelTable whole_table = TestModel();
  auto whole = *ParameterStore::Create(StoreOptions{0, 1});
  ASSERT_TRUE(whole->RegisterModel(whole_table).ok());
  const ParameterSnapshot reference = *whole->Snapshot(spec.name, true);
  const int64_t tall = std::max(spec.rows(), spec.cols());
  std::vector<ParameterSnapshot> blocks;
  for (int shard = 0; shard < 2; ++shard) {
    auto store = *ParameterStore::Create(StoreOptions{shard, 2});
    ASSERT_TRUE(store->RegisterModel(table).ok());
    const ParameterSnapshot s = *store->Snapshot(spec.name, true);
    const std::optional<SplitOwnership> split = *store->Split(spec.name);
    ASSERT_TRUE(split.has_value());
    EXPECT_EQ(s.rows, split->rows);
    EXPECT_EQ(s.rows, SplitRowBlock(tall, 2, split->index));
    const Matrix expected = spec.rows() >= spec.cols()
                                ? Matrix(reference.X.middleRows(s.rows.begin, s.rows.size()))
                                : Matrix(reference.X.middleCols(s.rows.begin, s.rows.size()));
    EXPECT_EQ(s.X, expected) << "shard " << shard;
    EXPECT_EQ(s.checksum, WeightsChecksum(expected));
    const DionState& state = std::get<DionState>(*s.state);
    EXPECT_EQ(state.Q, std::get<DionState>(*reference.state).Q);
    EXPECT_EQ(state.M.rows(), expected.rows());
    EXPECT_EQ(state.M.cols(), expected.cols());
    blocks.push_back(s);
  }
  auto owner0 = *ParameterStore::Create(StoreOptions{0, 2});
  ASSERT_TRUE(owner0->RegisterModel(table).ok());
  const int other = blocks[0].rows == (*owner0->Split(spec.name))->rows ? 1 : 0;
  const absl::Status refused = owner0->Restore(blocks[other]);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find(absl::StrCat("holds rows [", blocks[other].rows.begin)),
            std::string::npos)
      << refused;
  EXPECT_NE(refused.message().find("this shard owns rows"), std::string::npos) << refused;
  EXPECT_TRUE(owner0->Restore(blocks[1 - other]).ok());
}

// A checkpoint split otherwise than the current layout is refused FAILED_PRECONDITION (the
// snapshot is well formed, the store's layout is what it does not fit), naming both: the
// whole parameter into an owner of its rows, and an owner's rows into a store that holds the
// parameter whole. The store keeps every bit it had; the snapshot of its own layout restores.
TEST(ParameterStore, RestoreRefusesACheckpointSplitOtherwiseThanTheLayout) {
  ModelTable split_table = TestModel();
  split_table.parameters[0].spec.split_owners = 2;
  const ParamSpec& spec = split_table.parameters[0].spec;  // "tall", 48 x 32
  ASSERT_EQ(spec.rows(), 48);
  auto split = *ParameterStore::Create(StoreOptions{0, 2});
  ASSERT_TRUE(split->RegisterModel(split_table).ok());
  ASSERT_EQ((*split->Split(spec.name))->rows, (RowBlock{0, 24}));
  // The same table whole, over the same two shards, on the shard that then holds "tall".
  const ModelTable whole_table = TestModel();
  const int holder = Layout::Compute(whole_table.specs(), 2)->ShardOf(spec.name);
  auto whole = *ParameterStore::Create(StoreOptions{holder, 2});
  ASSERT_TRUE(whole->RegisterModel(whole_table).ok());
  ASSERT_FALSE((*whole->Split(spec.name)).has_value());

  // Each snapshot as its checkpoint would hold it, one version further, so that a restore
  // that went through would show.
  ParameterSnapshot block = *split->Snapshot(spec.name, true);
  ParameterSnapshot entire = *whole->Snapshot(spec.name, true);
  block.version = entire.version = 5;
  const std::vector<float> split_before = StateBits(*split->Snapshot(spec.name, true));
  const std::vector<float> whole_before = StateBits(*whole->Snapshot(spec.name, true));

  const absl::Status into_split = split->Restore(entire);
  EXPECT_EQ(into_split.code(), absl::StatusCode::kFailedPrecondition) << into_split;
  for (const char* part :
       {"cannot restore parameter 'tall'",
        "the checkpoint holds all 48 rows of its tall side (the whole parameter)",
        "this shard owns rows [0, 24) of its tall side of 48 rows (split over 2 shards)"}) {
    EXPECT_NE(into_split.message().find(part), absl::string_view::npos) << into_split;
  }
  const absl::Status into_whole = whole->Restore(block);
  EXPECT_EQ(into_whole.code(), absl::StatusCode::kFailedPrecondition) << into_whole;
  for (const char* part :
       {"cannot restore parameter 'tall'",
        "the checkpoint holds rows [0, 24) of its tall side of 48 rows",
        "this shard holds all 48 rows of its tall side (the whole parameter)"}) {
    EXPECT_NE(into_whole.message().find(part), absl::string_view::npos) << into_whole;
  }
  ExpectBitIdentical(StateBits(*split->Snapshot(spec.name, true)), split_before);
  ExpectBitIdentical(StateBits(*whole->Snapshot(spec.name, true)), whole_before);
  EXPECT_EQ(*split->Version(spec.name), 0);
  EXPECT_EQ(*whole->Version(spec.name), 0);
  EXPECT_EQ((*split->Split(spec.name))->rows, (RowBlock{0, 24}));

  // What was refused is the layout, not the snapshots: each restores into its own.
  EXPECT_TRUE(split->Restore(block).ok());
  EXPECT_TRUE(whole->Restore(entire).ok());
  EXPECT_EQ(*split->Version(spec.name), 5);
  EXPECT_EQ(*whole->Version(spec.name), 5);
}

// A reducer whose every sum fails, as when another owner is unreachable.
class UnreachableOwners : public RowReducer {
 public:
  explicit UnreachableOwners(int index) : index_(index) {}
  int owners() const override { return 2; }
  int index() const override { return index_; }
  absl::Status AllReduce(absl::string_view, MatrixRef) override {
    return absl::UnavailableError("the other owner is unreachable");
  }

 private:
  int index_;
};

// A failed step leaves its batch folded into the owner's rows of M: the same batch may be
// retried (nothing folded twice), another batch of that version is refused, nothing changes.
TEST(ParameterStore, AnOwnerRefusesAnotherBatchOverAFailedStepsFold) {
  ModelTable table = TestModel();
  table.parameters[0].spec.split_owners = 2;
  const ParamSpec spec = table.parameters[0].spec;
  auto store = *ParameterStore::Create(StoreOptions{0, 2});
  ASSERT_TRUE(store->RegisterModel(table).ok());
  ASSERT_TRUE(store->RegisterWorker("w0").ok());
  const SplitOwnership split = *(*store->Split(spec.name));
  const bool tall_rows = spec.rows() >= spec.cols();
  const auto batch_of = [&](const std::string& worker) {
    Contribution c;
    c.worker_id = worker;
    c.parameter = spec.name;
    c.sample_count = 8;
    c.payload = LowRankFactors{
        Matrix(GaussianD(tall_rows ? split.rows.size() : spec.rows(), 1, 1).cast<float>()),
        Matrix(GaussianD(tall_rows ? spec.cols() : split.rows.size(), 1, 2).cast<float>())};
    Batch batch;
    batch.parameter = spec.name;
    batch.samples = 8;
    batch.workers = 1;
    batch.entries.push_back(
        {Validate(std::move(c), {spec, 0, true, split.rows}).value(), 0, 1.0});
    return batch;
  };
  UnreachableOwners reducer(split.index);
  const ParameterSnapshot before = *store->Snapshot(spec.name, false);
  EXPECT_EQ(store->ApplyRowBatch(batch_of("w0"), 1.0, reducer).status().code(),
            absl::StatusCode::kUnavailable);
  const absl::Status other = store->ApplyRowBatch(batch_of("w1"), 1.0, reducer).status();
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition) << other;
  EXPECT_NE(other.message().find("already holds another batch for version 0"), std::string::npos)
      << other;
  EXPECT_EQ(store->ApplyRowBatch(batch_of("w0"), 1.0, reducer).status().code(),
            absl::StatusCode::kUnavailable);  // the same batch: retried
  const ParameterSnapshot after = *store->Snapshot(spec.name, false);
  EXPECT_EQ(after.version, 0);
  EXPECT_EQ(after.X, before.X);
}

TEST(ParameterStore, UsesExplicitInitialValues) {
  ModelTable table = TestModel();
  const Matrix value = Matrix::Constant(1, 32, 0.25f);
  table.parameters[2].initial_value = value;
  auto store = RegisteredStore(table);
  const ParameterSnapshot snapshot = *store->Snapshot("bias", false);
  EXPECT_EQ(snapshot.X, value);
  EXPECT_EQ(snapshot.checksum, WeightsChecksum(value));
  EXPECT_EQ(snapshot.version, 0);
}

TEST(ParameterStore, OwnsOnlyTheParametersOfItsShard) {
  const ModelTable table = TestModel();
  const Layout layout = *Layout::Compute(table.specs(), 2);
  for (int shard = 0; shard < 2; ++shard) {
    auto store = *ParameterStore::Create(StoreOptions{shard, 2});
    ASSERT_TRUE(store->RegisterModel(table).ok());
    ASSERT_TRUE(store->RegisterWorker("w0").ok());
    for (const ParameterDefinition& p : table.parameters) {
      const bool mine = layout.ShardOf(p.spec.name) == shard;
      const absl::StatusOr<int64_t> version = store->Version(p.spec.name);
      EXPECT_EQ(version.ok(), mine) << p.spec.name;
      if (!mine) {
        EXPECT_EQ(version.status().code(), absl::StatusCode::kFailedPrecondition);
        EXPECT_NE(version.status().message().find("owned by shard"), absl::string_view::npos);
      }
    }
  }
  EXPECT_EQ(ParameterStore::Create(StoreOptions{2, 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ------------------------------------------------------------------------------------------
// Bad contributions: precise code, nothing changes.

// A follower of a split parameter may be one step behind its leader (the leader applied a
// step whose last answer the follower has not yet acted on, or lost in a crash), and a worker
// may already compute against the leader's version: a follower takes a base_version up to its
// own version + 1 and no further; the leader and a whole parameter's owner only up to theirs.
TEST(ParameterStore, AFollowerTakesABaseVersionOneAheadOfItsOwn) {
  ModelTable table = TestModel();
  table.parameters[0].spec.split_owners = 2;
  const ParamSpec spec = table.parameters[0].spec;
  for (int shard = 0; shard < 2; ++shard) {
    auto store = *ParameterStore::Create(StoreOptions{shard, 2});
    ASSERT_TRUE(store->RegisterModel(table).ok());
    ASSERT_TRUE(store->RegisterWorker("w0").ok());
    const SplitOwnership split = *(*store->Split(spec.name));
    const bool tall_rows = spec.rows() >= spec.cols();
    const auto block = [&](int64_t base_version) {
      Contribution c = LowRank(spec.name, tall_rows ? split.rows.size() : spec.rows(),
                               tall_rows ? spec.cols() : split.rows.size(), 2, "w0", 1,
                               base_version);
      return store->Validate(std::move(c)).status();
    };
    EXPECT_TRUE(block(0).ok()) << "shard " << shard;
    const absl::Status one_ahead = block(1);
    const absl::Status two_ahead = block(2);
    EXPECT_EQ(two_ahead.code(), absl::StatusCode::kOutOfRange) << two_ahead;
    if (split.index == 0) {
      EXPECT_EQ(one_ahead.code(), absl::StatusCode::kOutOfRange) << one_ahead;
      EXPECT_NE(one_ahead.message().find("base_version 1 is outside [0, 0], the current version"),
                std::string::npos)
          << one_ahead;
    } else {
      EXPECT_TRUE(one_ahead.ok()) << one_ahead;
      EXPECT_NE(two_ahead.message().find("base_version 2 is outside [0, 1]: this follower is at "
                                         "version 0 and its leader at most 1 ahead"),
                std::string::npos)
          << two_ahead;
    }
  }
  auto whole = RegisteredStore();
  EXPECT_EQ(whole->Validate(LowRank("tall", 48, 32, 2, "w0", 1, 1)).status().code(),
            absl::StatusCode::kOutOfRange);
}

TEST(ParameterStore, PushBeforeRegistrationIsFailedPrecondition) {
  auto store = *ParameterStore::Create(StoreOptions{});
  const absl::Status status = store->Validate(LowRank("tall", 48, 32, 2)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("no model is registered"), absl::string_view::npos);
  EXPECT_EQ(store->RegisterWorker("w0").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->ApplyBatch(SingleBatch(LowRank("tall", 48, 32, 2), 0)).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

struct BadCase {
  std::string name;
  Contribution contribution;
  absl::StatusCode code;
  std::string message_part;
};

std::vector<BadCase> BadCases() {
  std::vector<BadCase> cases;
  cases.push_back({"UnknownParameter", LowRank("nope", 48, 32, 2),
                   absl::StatusCode::kNotFound, "not in model"});
  cases.push_back({"UnregisteredWorker", LowRank("tall", 48, 32, 2, "stranger"),
                   absl::StatusCode::kFailedPrecondition, "not registered"});
  cases.push_back({"EmptyWorkerId", LowRank("tall", 48, 32, 2, ""),
                   absl::StatusCode::kInvalidArgument, "worker_id"});
  cases.push_back({"PWithWrongRows", LowRank("tall", 47, 32, 2),
                   absl::StatusCode::kInvalidArgument, "P has 47 rows"});
  cases.push_back({"RWithWrongRows", LowRank("tall", 48, 31, 2),
                   absl::StatusCode::kInvalidArgument, "R has 31 rows"});
  Contribution mismatched = LowRank("tall", 48, 32, 3);
  std::get<LowRankFactors>(mismatched.payload).R = Matrix::Ones(32, 2);
  cases.push_back({"FactorRanksDiffer", mismatched, absl::StatusCode::kInvalidArgument,
                   "columns"});
  Contribution rank0 = LowRank("tall", 48, 32, 1);
  std::get<LowRankFactors>(rank0.payload) = {Matrix(48, 0), Matrix(32, 0)};
  cases.push_back({"RankZero", rank0, absl::StatusCode::kInvalidArgument, "rank 0"});
  cases.push_back({"RankAboveMinMN", LowRank("tall", 48, 32, 33),
                   absl::StatusCode::kInvalidArgument, "rank 33"});
  Contribution nan_p = LowRank("tall", 48, 32, 2);
  std::get<LowRankFactors>(nan_p.payload).P(5, 1) = std::numeric_limits<float>::quiet_NaN();
  cases.push_back({"NaNInP", nan_p, absl::StatusCode::kInvalidArgument, "(5, 1)"});
  Contribution inf_r = LowRank("tall", 48, 32, 2);
  std::get<LowRankFactors>(inf_r.payload).R(3, 0) = std::numeric_limits<float>::infinity();
  cases.push_back({"InfInR", inf_r, absl::StatusCode::kInvalidArgument, "non-finite"});
  Contribution huge = LowRank("tall", 48, 32, 2);
  std::get<LowRankFactors>(huge.payload).P(0, 0) = 1e30f;
  cases.push_back({"HugeFactors", huge, absl::StatusCode::kInvalidArgument, "magnitude"});
  Contribution nan_g = Dense("bias", 1, 32);
  std::get<Matrix>(nan_g.payload)(0, 4) = std::numeric_limits<float>::quiet_NaN();
  cases.push_back({"NaNInGradient", nan_g, absl::StatusCode::kInvalidArgument, "non-finite"});
  cases.push_back({"GradientOfWrongShape", Dense("bias", 1, 31),
                   absl::StatusCode::kInvalidArgument, "expected 1 x 32"});
  cases.push_back({"ZeroSampleCount", LowRank("tall", 48, 32, 2, "w0", 0, 0, 0),
                   absl::StatusCode::kInvalidArgument, "sample_count"});
  cases.push_back({"NegativeSampleCount", Dense("bias", 1, 32, "w0", 0, 0, -3),
                   absl::StatusCode::kInvalidArgument, "sample_count"});
  cases.push_back({"BaseVersionFromTheFuture", LowRank("tall", 48, 32, 2, "w0", 0, 1),
                   absl::StatusCode::kOutOfRange, "base_version 1"});
  cases.push_back({"NegativeBaseVersion", Dense("bias", 1, 32, "w0", 0, -1),
                   absl::StatusCode::kOutOfRange, "base_version -1"});
  cases.push_back({"DenseGradientForDion", Dense("tall", 48, 32),
                   absl::StatusCode::kInvalidArgument, "low-rank factors"});
  cases.push_back({"FactorsForAdamW", LowRank("bias", 1, 32, 1),
                   absl::StatusCode::kInvalidArgument, "dense gradient"});
  return cases;
}

class BadContribution : public ::testing::TestWithParam<BadCase> {};

// Validation answers the precise code and leaves every parameter's X, state and version
// bit-identical; the contribution cannot become a batch entry either (entries are
// ValidatedContributions, which only validation makes).
TEST_P(BadContribution, IsRefusedWithPreciseStatusAndChangesNothing) {
  const BadCase& c = GetParam();
  auto store = RegisteredStore();
  std::vector<std::vector<float>> before;
  for (const std::string& name : store->OwnedParameters()) {
    before.push_back(StateBits(*store->Snapshot(name, true)));
  }
  const absl::Status status = store->Validate(c.contribution).status();
  EXPECT_EQ(status.code(), c.code) << status;
  EXPECT_NE(status.message().find(c.message_part), absl::string_view::npos) << status;

  const absl::StatusOr<ValidatedContribution> entry = store->Validate(c.contribution);
  EXPECT_EQ(entry.status().code(), c.code) << entry.status();
  int i = 0;
  for (const std::string& name : store->OwnedParameters()) {
    ExpectBitIdentical(StateBits(*store->Snapshot(name, true)), before[i++]);
  }
}

INSTANTIATE_TEST_SUITE_P(AllCases, BadContribution, ::testing::ValuesIn(BadCases()),
                         [](const auto& info) { return info.param.name; });

TEST(ParameterStore, BatchForAnotherVersionIsRefusedAndChangesNothing) {
  auto store = RegisteredStore();
  const auto before = StateBits(*store->Snapshot("tall", true));
  const auto result = store->ApplyBatch(SingleBatch(LowRank("tall", 48, 32, 2), 1));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(result.status().message().find("version 1"), absl::string_view::npos);
  ExpectBitIdentical(StateBits(*store->Snapshot("tall", true)), before);
}

// A batch's invariants are ApplyBatch's to check (its entries are validated by type): one
// entry of another parameter, or a weight that is not positive, and nothing is applied.
TEST(ParameterStore, BatchWithOneBadEntryAppliesNone) {
  auto store = RegisteredStore();
  const auto before = StateBits(*store->Snapshot("tall", true));
  Batch batch = SingleBatch(LowRank("tall", 48, 32, 2), 0);
  batch.entries[0].weight = 0.5;
  batch.entries.push_back({Valid(Dense("bias", 1, 32, "w1")), 0, 0.5});
  const absl::Status foreign = store->ApplyBatch(batch).status();
  EXPECT_EQ(foreign.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(foreign.message().find("holds a contribution for 'bias'"), absl::string_view::npos);
  batch.entries[1] = {Valid(LowRank("tall", 48, 32, 2, "w1")), 0, 0.0};
  EXPECT_EQ(store->ApplyBatch(batch).status().code(), absl::StatusCode::kInvalidArgument);
  ExpectBitIdentical(StateBits(*store->Snapshot("tall", true)), before);
}

// ------------------------------------------------------------------------------------------
// Applying batches

// Three batches of low-rank contributions (ranks 2, 3, 5; different sample counts and
// staleness, so unequal weights) through the batcher into the store, against common/'s
// DionStep on the dense weighted-mean gradient formed explicitly in double. Tolerance 1e-6
// relative (max norm) on X and M: the two paths differ only in float32 rounding of the
// gradient (one GEMM over stacked factors vs a dense sum), a few ulps (~1e-7) that the
// well-conditioned power iteration does not amplify by more than a few times.
TEST(ParameterStore, LowRankBatchEqualsDionStepOnTheDenseWeightedMean) {
  for (const std::string name : {"tall", "wide"}) {
    SCOPED_TRACE(name);
    auto store = RegisteredStore();
    const ParamSpec spec = *store->Spec(name);
    const int64_t m = spec.rows(), n = spec.cols();
    Matrix X_ref = InitialValue(spec);
    DionState state_ref = InitDionState(m, n, spec.rank(), DionStateSeed(spec));

    FakeClock clock;
    BatcherOptions options;
    options.target_workers = 3;
    options.adaptive = false;  // exactly K = 3 per batch (adaptive K would start at 1)
    options.staleness.kind = StalenessKind::kInverse;
    Batcher batcher(name, options, 0, &clock);
    const int ranks[3] = {2, 3, 5};
    const int64_t samples[3] = {10, 20, 30};
    for (int step = 0; step < 3; ++step) {
      std::optional<Batch> batch;
      for (int w = 0; w < 3; ++w) {
        // Worker 2 computed against the previous version from the second step on.
        const int64_t base = (w == 2 && step > 0) ? step - 1 : step;
        Contribution c = LowRank(name, m, n, ranks[w], absl::StrCat("w", w), step, base,
                                 samples[w]);
        absl::StatusOr<ValidatedContribution> valid = store->Validate(std::move(c));
        ASSERT_TRUE(valid.ok()) << valid.status();
        absl::StatusOr<OfferResult> offered = batcher.Offer(*std::move(valid));
        ASSERT_TRUE(offered.ok());
        if (offered->closed) batch = std::move(offered->closed);
      }
      ASSERT_TRUE(batch.has_value());

      MatrixD G = MatrixD::Zero(m, n);
      for (const WeightedContribution& e : batch->entries) {
        const LowRankFactors& f = e.contribution->factors();
        G += e.weight * f.P.cast<double>() * f.R.cast<double>().transpose();
      }
      if (step > 0) {
        EXPECT_LT(batch->entries[2].weight, batch->entries[1].weight) << "stale, lower weight";
      }
      ASSERT_TRUE(DionStep(X_ref, G.cast<float>(), state_ref, spec.dion).ok());

      const absl::StatusOr<StepOutcome> outcome = store->ApplyBatch(*batch);
      ASSERT_TRUE(outcome.ok()) << outcome.status();
      EXPECT_EQ(outcome->update.version, step + 1);
      EXPECT_EQ(outcome->stats.contributions, 3);
      EXPECT_EQ(outcome->stats.samples, 60);
      EXPECT_EQ(outcome->stats.workers, 3);

      const ParameterSnapshot s = *store->Snapshot(name, true);
      const DionState& state = std::get<DionState>(*s.state);
      EXPECT_LE(MaxRelativeError(s.X.cast<double>(), X_ref.cast<double>()), 1e-6);
      EXPECT_LE(MaxRelativeError(state.M.cast<double>(), state_ref.M.cast<double>()), 1e-6);
      EXPECT_EQ(state.step, step + 1);
      EXPECT_EQ(s.version, step + 1);
    }
  }
}

// The shard sums a batch in (worker, sequence) order, so the order in which its pushes arrived
// does not change a single bit of the step: two stores, the same batches, entries reversed.
TEST(ParameterStore, ABatchGivesTheSameBitsWhateverTheOrderItsPushesArrivedIn) {
  for (const std::string name : {"tall", "wide", "bias", "muon"}) {
    SCOPED_TRACE(name);
    auto in_order = RegisteredStore();
    auto reversed = RegisteredStore();
    const ParamSpec spec = *in_order->Spec(name);
    const bool dion = spec.optimizer == OptimizerKind::kDion;
    for (int step = 0; step < 3; ++step) {
      Batch batch;
      batch.parameter = name;
      batch.version = step;
      const double weights[3] = {0.25, 0.35, 0.4};
      for (int w = 0; w < 3; ++w) {
        const std::string worker = absl::StrCat("w", w);
        const uint64_t sequence = 10 * step + w;
        Contribution c =
            dion ? LowRank(name, spec.rows(), spec.cols(), 2 + w, worker, sequence, step)
                 : Dense(name, spec.rows(), spec.cols(), worker, sequence, step);
        batch.entries.push_back({Valid(std::move(c)), 0, weights[w]});
      }
      Batch backwards = batch;
      std::reverse(backwards.entries.begin(), backwards.entries.end());
      ASSERT_TRUE(in_order->ApplyBatch(batch).ok());
      ASSERT_TRUE(reversed->ApplyBatch(backwards).ok());
      ExpectBitIdentical(StateBits(*in_order->Snapshot(name, true)),
                         StateBits(*reversed->Snapshot(name, true)));
    }
  }
}

// A replica at the previous version that applies the broadcast low-rank step reproduces the
// server's weights bit for bit, and so its checksum.
TEST(ParameterStore, ReplicaApplyingTheLowRankStepMatchesTheChecksum) {
  for (const std::string name : {"tall", "wide"}) {
    SCOPED_TRACE(name);
    auto store = RegisteredStore();
    const ParamSpec spec = *store->Spec(name);
    Matrix replica = store->Snapshot(name, false)->X;
    for (int step = 0; step < 5; ++step) {
      const auto outcome =
          store->ApplyBatch(SingleBatch(LowRank(name, spec.rows(), spec.cols(), 3, "w0", step,
                                                step), step));
      ASSERT_TRUE(outcome.ok()) << outcome.status();
      const VersionUpdate& update = outcome->update;
      ASSERT_TRUE(update.is_low_rank());
      const LowRankStep& s = std::get<LowRankStep>(update.content);
      EXPECT_EQ(s.transposed, name == "wide");
      ApplyLowRankUpdate(replica, s.decay, s.scale, s.P, s.Q, s.transposed);
      EXPECT_EQ(WeightsChecksum(replica), update.checksum) << "step " << step;
      EXPECT_EQ(update.checksum, store->Snapshot(name, false)->checksum);
    }
  }
}

// common/'s step of a dense-gradient optimizer (AdamW, Lion or Muon, as spec says), the
// reference the store's steps are compared against.
absl::Status DenseReferenceStep(const ParamSpec& spec, const Matrix& G, Matrix& X,
                                OptimizerState& state) {
  switch (spec.optimizer) {
    case OptimizerKind::kAdamW: return AdamWStep(X, G, std::get<AdamWState>(state), spec.adamw);
    case OptimizerKind::kLion: return LionStep(X, G, std::get<LionState>(state), spec.lion);
    case OptimizerKind::kMuon: return MuonStep(X, G, std::get<MuonState>(state), spec.muon);
    case OptimizerKind::kDion: break;
  }
  return absl::InvalidArgumentError("Dion has no dense reference step here");
}

// Element-wise optimizers and Muon: the weighted mean of dense gradients (formed in double
// here), then the common step; the same float32 inputs give the same result up to the
// rounding of the mean (1e-6 relative).
TEST(ParameterStore, DenseBatchEqualsTheCommonStepOnTheWeightedMean) {
  auto store = RegisteredStore();
  for (const std::string name : {"bias", "scale", "muon"}) {
    SCOPED_TRACE(name);
    const ParamSpec spec = *store->Spec(name);
    Matrix X_ref = InitialValue(spec);
    OptimizerState state_ref = InitOptimizerState(spec, DionStateSeed(spec));
    for (int step = 0; step < 3; ++step) {
      Batch batch;
      batch.parameter = name;
      batch.version = step;
      const double weights[3] = {0.2, 0.3, 0.5};
      MatrixD G = MatrixD::Zero(spec.rows(), spec.cols());
      for (int w = 0; w < 3; ++w) {
        Contribution c = Dense(name, spec.rows(), spec.cols(), absl::StrCat("w", w),
                               10 * step + w, step);
        G += weights[w] * c.gradient().cast<double>();
        batch.entries.push_back({Valid(std::move(c)), 0, weights[w]});
      }
      const Matrix Gf = G.cast<float>();
      const absl::Status ref_status = DenseReferenceStep(spec, Gf, X_ref, state_ref);
      ASSERT_TRUE(ref_status.ok()) << ref_status;
      const auto outcome = store->ApplyBatch(batch);
      ASSERT_TRUE(outcome.ok()) << outcome.status();
      ASSERT_FALSE(outcome->update.is_low_rank());
      const Matrix& value = std::get<Matrix>(outcome->update.content);
      EXPECT_LE(MaxRelativeError(value.cast<double>(), X_ref.cast<double>()), 1e-6);
      EXPECT_EQ(outcome->update.checksum, WeightsChecksum(value));
    }
  }
}

// A cooldown over the whole run (16 samples, to 0): batches of 8 samples step at lr x 1,
// x 0.5 and x 0 (the position is the samples applied before the step).
std::unique_ptr<ParameterStore> ScheduledStore() {
  StoreOptions options;
  options.lr_schedule = {16, 1.0, 0.0};
  auto store = ParameterStore::Create(options);
  EXPECT_TRUE(store.ok());
  EXPECT_TRUE((*store)->RegisterModel(TestModel()).value_or(false));
  EXPECT_TRUE((*store)->RegisterWorker("w0").ok());
  return *std::move(store);
}

TEST(ParameterStore, ScheduledStepsUseTheScaledLearningRateOfEachOptimizer) {
  auto store = ScheduledStore();
  const double scales[3] = {1.0, 0.5, 0.0};
  for (const std::string name : {"bias", "scale", "muon"}) {
    SCOPED_TRACE(name);
    const ParamSpec spec = *store->Spec(name);
    Matrix X_ref = InitialValue(spec);
    OptimizerState state_ref = InitOptimizerState(spec, DionStateSeed(spec));
    for (int step = 0; step < 3; ++step) {
      Contribution c = Dense(name, spec.rows(), spec.cols(), "w0", step, step, /*samples=*/8);
      const Matrix G = c.gradient();
      ParamSpec scaled = spec;  // the reference: the optimizer with its lr multiplied by hand
      scaled.adamw.lr = spec.adamw.lr * scales[step];
      scaled.lion.lr = spec.lion.lr * scales[step];
      scaled.muon.lr = spec.muon.lr * scales[step];
      const absl::Status ref_status = DenseReferenceStep(scaled, G, X_ref, state_ref);
      ASSERT_TRUE(ref_status.ok()) << ref_status;
      const auto outcome = store->ApplyBatch(SingleBatch(std::move(c), step));
      ASSERT_TRUE(outcome.ok()) << outcome.status();
      const Matrix& value = std::get<Matrix>(outcome->update.content);
      EXPECT_LE(MaxRelativeError(value.cast<double>(), X_ref.cast<double>()), 1e-6)
          << "step " << step;
    }
  }
}

TEST(ParameterStore, ScheduledDionStepsBroadcastTheScaledStep) {
  // Dion's M and Q do not depend on lr, so with the same pushes both stores find the same
  // factors and only the step's scale (lr sqrt(m/n)) and decay (1 - lr wd) differ.
  auto scheduled = ScheduledStore();
  auto constant = RegisteredStore();
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE(step);
    const auto a = scheduled->ApplyBatch(
        SingleBatch(LowRank("tall", 48, 32, 4, "w0", step, step, /*samples=*/8), step));
    const auto b = constant->ApplyBatch(
        SingleBatch(LowRank("tall", 48, 32, 4, "w0", step, step, /*samples=*/8), step));
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_TRUE(a->update.is_low_rank() && b->update.is_low_rank());
    const LowRankStep& sa = std::get<LowRankStep>(a->update.content);
    const LowRankStep& sb = std::get<LowRankStep>(b->update.content);
    const double scale = step == 0 ? 1.0 : step == 1 ? 0.5 : 0.0;
    EXPECT_NEAR(sa.scale, scale * sb.scale, 1e-6 * sb.scale);
    EXPECT_NEAR(1.0 - sa.decay, scale * (1.0 - sb.decay), 1e-6);
    EXPECT_LE(MaxRelativeError(sa.P.cast<double>(), sb.P.cast<double>()), 1e-5);
  }
  for (const ParameterStatus& status : scheduled->Statuses()) {
    if (status.parameter != "tall") continue;
    EXPECT_EQ(status.samples_applied, 24);
    EXPECT_EQ(status.lr_scale, 0.0);  // past the horizon
  }
  for (const ParameterStatus& status : constant->Statuses()) {
    if (status.parameter == "tall") EXPECT_EQ(status.lr_scale, 1.0);
  }
}

TEST(ParameterStore, TheSchedulesPositionIsSnapshottedAndRestored) {
  auto store = ScheduledStore();
  ASSERT_TRUE(store->ApplyBatch(SingleBatch(Dense("bias", 1, 32, "w0", 0, 0, 8), 0)).ok());
  const ParameterSnapshot saved = *store->Snapshot("bias", true);
  EXPECT_EQ(saved.samples_applied, 8);
  ASSERT_TRUE(store->ApplyBatch(SingleBatch(Dense("bias", 1, 32, "w0", 1, 1, 8), 1)).ok());
  EXPECT_EQ(store->Snapshot("bias", true)->samples_applied, 16);
  ASSERT_TRUE(store->Restore(saved).ok());
  EXPECT_EQ(store->Snapshot("bias", true)->samples_applied, 8);
  ParameterSnapshot negative = saved;
  negative.samples_applied = -1;
  EXPECT_EQ(store->Restore(negative).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Snapshot("bias", true)->samples_applied, 8);
}

TEST(ParameterStore, InvalidScheduleIsRefusedAtCreation) {
  StoreOptions options;
  options.lr_schedule.final_scale = 2;
  EXPECT_EQ(ParameterStore::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParameterStore, CountsVersionsStepsAndAppliedContributions) {
  auto store = RegisteredStore();
  Batch batch = SingleBatch(Dense("bias", 1, 32, "w0", 0), 0);
  batch.entries[0].weight = 0.5;
  batch.entries.push_back({Valid(Dense("bias", 1, 32, "w1", 0)), 0, 0.5});
  ASSERT_TRUE(store->ApplyBatch(batch).ok());
  ASSERT_TRUE(store->ApplyBatch(SingleBatch(Dense("bias", 1, 32, "w0", 1, 1), 1)).ok());
  for (const ParameterStatus& status : store->Statuses()) {
    if (status.parameter != "bias") {
      EXPECT_EQ(status.version, 0) << status.parameter;
      continue;
    }
    EXPECT_EQ(status.optimizer, OptimizerKind::kAdamW);
    EXPECT_EQ(status.version, 2);
    EXPECT_EQ(status.steps, 2);
    EXPECT_EQ(status.contributions_applied, 3);
  }
  EXPECT_EQ(store->Statuses().size(), 5u);
}

TEST(ParameterStore, RestoreBringsBackWeightsStateAndVersionBitForBit) {
  auto store = RegisteredStore();
  ASSERT_TRUE(store->ApplyBatch(SingleBatch(LowRank("tall", 48, 32, 4), 0)).ok());
  const ParameterSnapshot saved = *store->Snapshot("tall", true);
  ASSERT_TRUE(store->ApplyBatch(SingleBatch(LowRank("tall", 48, 32, 4, "w0", 1, 1), 1)).ok());
  ASSERT_TRUE(store->Restore(saved).ok());
  const ParameterSnapshot restored = *store->Snapshot("tall", true);
  ExpectBitIdentical(StateBits(restored), StateBits(saved));
  EXPECT_EQ(restored.checksum, saved.checksum);
  EXPECT_EQ(restored.contributions_applied, saved.contributions_applied);

  ParameterSnapshot wrong = saved;
  wrong.X = Matrix::Zero(47, 32);
  EXPECT_EQ(store->Restore(wrong).code(), absl::StatusCode::kInvalidArgument);
  ParameterSnapshot stateless = saved;
  stateless.state.reset();
  EXPECT_EQ(store->Restore(stateless).code(), absl::StatusCode::kInvalidArgument);
  ExpectBitIdentical(StateBits(*store->Snapshot("tall", true)), StateBits(saved));
}

// Steps on distinct parameters run concurrently with validation and snapshots (a TSan target).
TEST(ParameterStore, ConcurrentStepsOnDistinctParameters) {
  auto store = RegisteredStore();
  std::vector<std::thread> threads;
  for (const std::string name : {"tall", "wide", "bias"}) {
    threads.emplace_back([&store, name] {
      const ParamSpec spec = *store->Spec(name);
      for (int step = 0; step < 10; ++step) {
        Contribution c = spec.optimizer == OptimizerKind::kDion
                             ? LowRank(name, spec.rows(), spec.cols(), 2, "w0", step, step)
                             : Dense(name, spec.rows(), spec.cols(), "w0", step, step);
        ASSERT_TRUE(store->Validate(c).ok());
        ASSERT_TRUE(store->ApplyBatch(SingleBatch(std::move(c), step)).ok());
      }
    });
  }
  threads.emplace_back([&store] {
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(store->Snapshot("tall", true).ok());
      store->Statuses();
    }
  });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(*store->Version("tall"), 10);
  EXPECT_EQ(*store->Version("wide"), 10);
  EXPECT_EQ(*store->Version("bias"), 10);
}

}  // namespace
}  // namespace dion
