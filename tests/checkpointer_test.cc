// Shard checkpoints (server/checkpoint/checkpointer.h): a store with Dion, AdamW, Lion and Muon
// parameters survives Write -> LoadNewest -> RestoreInto bit for bit (weights, optimizer
// state, versions, counters, dedup state) and then keeps training exactly like the original;
// damaged checkpoints are skipped, retention and shard identity are enforced, and numpy reads
// every tensor.
#include "server/checkpoint/checkpointer.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "server/checkpoint/checkpoint_reader.h"
#include "server/batcher.h"
#include "server/clock.h"
#include "server/parameter_store.h"
#include "tests/model_table_test_util.h"
#include "tests/reference.h"

namespace dion {
namespace {

namespace fs = std::filesystem;
using testing::Definition;
using testing::GaussianD;

// Names that need escaping in file names: '/', ' ', '+', '%' and a leading '.'.
constexpr char kBias[] = "enc/ln 1.bias+%";
constexpr char kHidden[] = ".hidden";

// Tall and wide Dion matrices (the wide one runs on X^T), AdamW and Lion on 1-D parameters,
// Muon, and one parameter with an explicit initial value.
ModelTable TestModel() {
  ModelTable table;
  table.model_name = "ckpt-mlp";
  table.parameters = {Definition("tall", {24, 16}, OptimizerKind::kDion, 1),
                      Definition("wide", {12, 20}, OptimizerKind::kDion, 2),
                      Definition(kBias, {16}, OptimizerKind::kAdamW, 3),
                      Definition("scale", {8}, OptimizerKind::kLion, 4),
                      Definition("muon", {8, 12}, OptimizerKind::kMuon, 5),
                      Definition(kHidden, {6, 4}, OptimizerKind::kAdamW, 6)};
  table.parameters.back().initial_value = GaussianD(6, 4, 77).cast<float>();
  return table;
}

// A store and one batcher per owned parameter, driven by hand.
struct Shard {
  std::unique_ptr<ParameterStore> store;
  std::vector<std::unique_ptr<Batcher>> batchers;

  std::vector<const Batcher*> batcher_views() const {
    std::vector<const Batcher*> views;
    for (const auto& b : batchers) views.push_back(b.get());
    return views;
  }
};

BatcherOptions TestBatcherOptions() {
  BatcherOptions options;
  options.target_samples = 16;  // two contributions of 8 samples close a batch
  options.deadline = absl::InfiniteDuration();
  options.staleness.max_staleness = 8;
  return options;
}

void AddBatchers(Shard& shard, const Clock* clock) {
  for (const std::string& name : shard.store->OwnedParameters()) {
    shard.batchers.push_back(std::make_unique<Batcher>(name, TestBatcherOptions(),
                                                       shard.store->Version(name).value(), clock));
  }
}

Shard NewShard(const Clock* clock, StoreOptions options = {}) {
  Shard shard;
  shard.store = ParameterStore::Create(options).value();
  EXPECT_TRUE(shard.store->RegisterModel(TestModel()).ok());
  for (const char* worker : {"w0", "w1 (spare)"}) {
    EXPECT_TRUE(shard.store->RegisterWorker(worker).ok());
  }
  AddBatchers(shard, clock);
  return shard;
}

Contribution MakeContribution(const ParamSpec& spec, const std::string& worker, uint64_t sequence,
                              int64_t base_version) {
  Contribution c;
  c.worker_id = worker;
  c.sequence = sequence;
  c.parameter = spec.name;
  c.base_version = base_version;
  c.sample_count = 8;
  c.loss = 1.0;
  const uint64_t seed = 1000 * sequence + 17 * spec.init.seed + (worker == "w0" ? 0 : 500);
  if (spec.optimizer == OptimizerKind::kDion) {
    const int r = 2;
    c.payload = LowRankFactors{GaussianD(spec.rows(), r, seed).cast<float>(),
                               GaussianD(spec.cols(), r, seed + 1).cast<float>()};
  } else {
    c.payload = Matrix(GaussianD(spec.rows(), spec.cols(), seed).cast<float>());
  }
  return c;
}

// Offers one contribution of `worker` with `sequence` to every parameter (based on the
// parameter's current version) and applies every batch that closes. Returns the results.
std::vector<PushOutcome> PushToAll(Shard& shard, const std::string& worker, uint64_t sequence) {
  std::vector<PushOutcome> results;
  const std::vector<std::string> owned = shard.store->OwnedParameters();
  for (size_t i = 0; i < owned.size(); ++i) {
    const ParamSpec spec = shard.store->Spec(owned[i]).value();
    Contribution c =
        MakeContribution(spec, worker, sequence, shard.store->Version(owned[i]).value());
    absl::StatusOr<ValidatedContribution> valid = shard.store->Validate(std::move(c));
    EXPECT_TRUE(valid.ok()) << valid.status();
    if (!valid.ok()) continue;
    absl::StatusOr<OfferResult> offered = shard.batchers[i]->Offer(*std::move(valid));
    EXPECT_TRUE(offered.ok()) << offered.status();
    if (!offered.ok()) continue;
    results.push_back(offered->result);
    if (offered->closed.has_value()) {
      absl::StatusOr<StepOutcome> outcome = shard.store->ApplyBatch(*offered->closed);
      EXPECT_TRUE(outcome.ok()) << outcome.status();
    }
  }
  return results;
}

// A few steps, with gaps in w1's sequences so its dedup state holds sequences above the floor.
void Train(Shard& shard) {
  PushToAll(shard, "w0", 0);
  PushToAll(shard, "w1 (spare)", 3);
  PushToAll(shard, "w0", 1);
  PushToAll(shard, "w1 (spare)", 7);
  PushToAll(shard, "w0", 2);
  PushToAll(shard, "w1 (spare)", 9);
}

// Every float of X and the optimizer state, bit-compared, plus version, step and counters.
void ExpectSameParameter(const ParameterSnapshot& a, const ParameterSnapshot& b) {
  SCOPED_TRACE(a.spec.name);
  ASSERT_TRUE(a.state.has_value() && b.state.has_value());
  ASSERT_EQ(a.state->index(), b.state->index());
  const auto same = [](const Matrix& x, const Matrix& y) {
    ASSERT_EQ(x.rows(), y.rows());
    ASSERT_EQ(x.cols(), y.cols());
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0);
  };
  same(a.X, b.X);
  EXPECT_EQ(a.version, b.version);
  EXPECT_EQ(a.checksum, b.checksum);
  EXPECT_EQ(a.contributions_applied, b.contributions_applied);
  EXPECT_EQ(a.samples_applied, b.samples_applied);  // the lr schedule's position
  std::visit(
      [&](const auto& sa) {
        using T = std::decay_t<decltype(sa)>;
        const T& sb = std::get<T>(*b.state);
        EXPECT_EQ(sa.step, sb.step);
        if constexpr (std::is_same_v<T, DionState>) {
          same(sa.M, sb.M);
          same(sa.Q, sb.Q);
        } else if constexpr (std::is_same_v<T, AdamWState>) {
          same(sa.m, sb.m);
          same(sa.v, sb.v);
        } else if constexpr (std::is_same_v<T, LionState>) {
          same(sa.m, sb.m);
        } else {
          same(sa.M, sb.M);
        }
      },
      *a.state);
}

void ExpectSameDedup(const std::vector<WorkerDedupState>& a,
                     const std::vector<WorkerDedupState>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].worker_id, b[i].worker_id);
    EXPECT_EQ(a[i].floor, b[i].floor);
    EXPECT_EQ(a[i].seen, b[i].seen);
  }
}

class CheckpointerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "checkpointer_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
  }
  void TearDown() override { fs::remove_all(root_); }

  CheckpointerOptions Options(int keep_last = 3) const { return {root_, keep_last}; }

  std::string root_;
  FakeClock clock_;
};

TEST_F(CheckpointerTest, RoundTripIsBitIdenticalAndKeepsTrainingIdentically) {
  Shard original = NewShard(&clock_);
  Train(original);
  Checkpointer checkpointer(Options());
  absl::StatusOr<std::string> path = checkpointer.Write(*original.store, original.batcher_views());
  ASSERT_TRUE(path.ok()) << path.status();

  absl::StatusOr<ShardCheckpoint> loaded = Checkpointer(Options()).LoadNewest();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->path, *path);
  EXPECT_TRUE(loaded->skipped.empty());
  auto restored_store = ParameterStore::Create(StoreOptions{}).value();
  ASSERT_TRUE(Checkpointer::RestoreInto(*loaded, *restored_store).ok());
  Shard restored;
  restored.store = std::move(restored_store);
  AddBatchers(restored, &clock_);
  ASSERT_EQ(loaded->dedup.size(), restored.batchers.size());
  for (size_t i = 0; i < restored.batchers.size(); ++i) {
    restored.batchers[i]->ImportDedup(loaded->dedup[i]);
  }

  // The workers' original table (with its explicit initial value) is still the registered one.
  absl::StatusOr<bool> again = restored.store->RegisterModel(TestModel());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again);
  EXPECT_EQ(restored.store->workers(), original.store->workers());
  const std::vector<std::string> owned = original.store->OwnedParameters();
  ASSERT_EQ(restored.store->OwnedParameters(), owned);
  for (size_t i = 0; i < owned.size(); ++i) {
    ExpectSameParameter(original.store->Snapshot(owned[i], true).value(),
                        restored.store->Snapshot(owned[i], true).value());
    ExpectSameDedup(original.batchers[i]->ExportDedup(), restored.batchers[i]->ExportDedup());
    EXPECT_EQ(restored.batchers[i]->version(), original.batchers[i]->version());
  }
  // The state must have been non-trivial for this to mean anything.
  EXPECT_EQ(original.store->Version("tall").value(), 3);
  EXPECT_GT(original.store->Snapshot("tall", false)->samples_applied, 0);
  EXPECT_FALSE(original.batchers[0]->ExportDedup().back().seen.empty());

  // Both continue identically: a replayed sequence is a duplicate on both, and the same new
  // contributions give bit-identical weights and state.
  for (Shard* shard : {&original, &restored}) {
    for (PushOutcome r : PushToAll(*shard, "w1 (spare)", 7)) EXPECT_EQ(r, PushOutcome::kDuplicate);
    PushToAll(*shard, "w0", 3);
    PushToAll(*shard, "w1 (spare)", 8);
  }
  for (const std::string& name : owned) {
    EXPECT_EQ(original.store->Version(name).value(), 4);
    ExpectSameParameter(original.store->Snapshot(name, true).value(),
                        restored.store->Snapshot(name, true).value());
  }
}

TEST_F(CheckpointerTest, WriteRefusesUnappliedContributions) {
  Shard shard = NewShard(&clock_);
  PushToAll(shard, "w0", 0);  // one contribution of 8 samples: the batches stay open
  absl::StatusOr<std::string> path =
      Checkpointer(Options()).Write(*shard.store, shard.batcher_views());
  EXPECT_EQ(path.status().code(), absl::StatusCode::kFailedPrecondition) << path.status();
  EXPECT_TRUE(ListCheckpoints(root_).value().empty());
}

TEST_F(CheckpointerTest, NoCheckpointIsNotFound) {
  EXPECT_EQ(Checkpointer(Options()).LoadNewest().status().code(), absl::StatusCode::kNotFound);
  CheckpointerOptions absent = Options();
  absent.root += "/absent";
  EXPECT_EQ(Checkpointer(absent).LoadNewest().status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointerTest, TruncatedTensorFallsBackToThePreviousCheckpoint) {
  Shard shard = NewShard(&clock_);
  Train(shard);
  Checkpointer checkpointer(Options());
  const std::string first = checkpointer.Write(*shard.store, shard.batcher_views()).value();
  const int64_t first_version = shard.store->Version("tall").value();
  PushToAll(shard, "w0", 3);
  PushToAll(shard, "w1 (spare)", 10);
  const std::string second = checkpointer.Write(*shard.store, shard.batcher_views()).value();
  ASSERT_NE(first, second);

  const std::string victim = second + "/tall.M.npy";
  ASSERT_TRUE(fs::exists(victim));
  fs::resize_file(victim, fs::file_size(victim) - 10);

  absl::StatusOr<ShardCheckpoint> loaded = checkpointer.LoadNewest();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->path, first);
  ASSERT_EQ(loaded->skipped.size(), 1u);
  EXPECT_TRUE(absl::StrContains(loaded->skipped[0], "tall.M.npy")) << loaded->skipped[0];
  EXPECT_EQ(loaded->parameters[0].version, first_version);

  // With the older one damaged as well nothing is valid: DataLoss naming both.
  fs::resize_file(first + "/scale.X.npy", 3);
  absl::StatusOr<ShardCheckpoint> none = checkpointer.LoadNewest();
  EXPECT_EQ(none.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(none.status().message(), "scale.X.npy")) << none.status();
  EXPECT_TRUE(absl::StrContains(none.status().message(), "tall.M.npy")) << none.status();
}

TEST_F(CheckpointerTest, IntactFilesWithAnUnknownFormatAreSkipped) {
  Shard shard = NewShard(&clock_);
  Checkpointer checkpointer(Options());
  const std::string first = checkpointer.Write(*shard.store, shard.batcher_views()).value();
  const std::string second = checkpointer.Write(*shard.store, shard.batcher_views()).value();
  // The manifest is not in its own checksum list: edit its metadata in place.
  const std::string manifest_path = second + "/manifest.json";
  std::ifstream in(manifest_path);
  std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  const size_t at = json.find("dion-ps.shard-checkpoint.v1");
  ASSERT_NE(at, std::string::npos);
  json.replace(at, 27, "dion-ps.shard-checkpoint.v9");
  std::ofstream(manifest_path, std::ios::trunc) << json;

  absl::StatusOr<ShardCheckpoint> loaded = checkpointer.LoadNewest();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->path, first);
  ASSERT_EQ(loaded->skipped.size(), 1u);
  EXPECT_TRUE(absl::StrContains(loaded->skipped[0], "v9")) << loaded->skipped[0];
}

// `json` (a manifest as SerializeManifest writes it: one metadata key per line) with the
// value of `key` replaced, or with its line removed if `value` is nullopt.
std::string EditMetadata(std::string json, const std::string& key,
                         std::optional<std::string> value) {
  const std::string prefix = absl::StrCat("\"", key, "\": \"");
  const size_t at = json.find(prefix);
  EXPECT_NE(at, std::string::npos) << key;
  if (at == std::string::npos) return json;
  if (!value.has_value()) {
    const size_t line = json.rfind('\n', at) + 1;
    return json.erase(line, json.find('\n', at) + 1 - line);
  }
  const size_t from = at + prefix.size();
  return json.replace(from, json.find('"', from) - from, *value);
}

TEST_F(CheckpointerTest, ReadingNamesTheMetadataThatDisagreesWithTheFiles) {
  Shard shard = NewShard(&clock_);
  Train(shard);
  const std::string dir =
      Checkpointer(Options()).Write(*shard.store, shard.batcher_views()).value();
  const CheckpointInfo info = ListCheckpoints(root_).value().front();
  ASSERT_EQ(info.path, dir);
  const std::string manifest_path = dir + "/manifest.json";
  std::ifstream in(manifest_path);
  const std::string original((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  in.close();
  const auto read_with = [&](const std::string& key, std::optional<std::string> value) {
    std::ofstream(manifest_path, std::ios::trunc) << EditMetadata(original, key, value);
    absl::StatusOr<CheckpointManifest> manifest = ValidateCheckpoint(dir);
    EXPECT_TRUE(manifest.ok()) << manifest.status();
    return manifest.ok() ? ReadShardCheckpoint(info, *manifest)
                         : absl::StatusOr<ShardCheckpoint>(manifest.status());
  };

  const struct {
    const char* key;
    const char* value;
    std::string message;
  } cases[] = {
      {"model_name", "other",
       dir + "/model_table.textproto: model 'ckpt-mlp', the manifest says 'other'"},
      {"initial_value_checksums", "-",
       dir + "/manifest.json: 1 initial_value_checksums for 6 parameters"},
      {"parameters", "5", dir + "/manifest.json: 5 parameters recorded, but shard 0 owns 6"},
      {"parameter.1.name", "tall", dir + "/manifest.json: parameter 1 is 'tall', expected 'wide'"},
      {"parameter.0.version", "-1",
       dir + "/manifest.json: parameter 'tall' has a negative counter"},
      {"parameter.0.step", "x",
       dir + "/manifest.json: metadata 'parameter.0.step' is 'x', expected an integer"},
      {"parameter.0.checksum", "0000000000000000", dir + "/tall.X.npy: weights checksum "},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.key);
    absl::StatusOr<ShardCheckpoint> read = read_with(c.key, std::string(c.value));
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_TRUE(absl::StrContains(read.status().message(), c.message)) << read.status();
  }
  absl::StatusOr<ShardCheckpoint> no_shard = read_with("shard_index", std::nullopt);
  EXPECT_TRUE(absl::StrContains(no_shard.status().message(),
                                dir + "/manifest.json: metadata 'shard_index' is missing"))
      << no_shard.status();

  // A checkpoint from before the lr schedule has no samples_applied: it reads as 0.
  absl::StatusOr<ShardCheckpoint> unedited = read_with("parameter.0.name", "tall");
  ASSERT_TRUE(unedited.ok()) << unedited.status();
  ASSERT_GT(unedited->parameters[0].samples_applied, 0);
  absl::StatusOr<ShardCheckpoint> old = read_with("parameter.0.samples_applied", std::nullopt);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->parameters[0].samples_applied, 0);
  EXPECT_EQ(old->parameters[1].samples_applied, unedited->parameters[1].samples_applied);
}

TEST_F(CheckpointerTest, KeepsTheNewestAndContinuesTheSequence) {
  Shard shard = NewShard(&clock_);
  {
    Checkpointer checkpointer(Options(/*keep_last=*/2));
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(checkpointer.Write(*shard.store, shard.batcher_views()).ok());
    }
  }
  // A crashed writer's leftover is removed by the next write.
  const std::string leftover = root_ + "/" + CheckpointDirName(99) + ".tmp-deadbeef";
  fs::create_directories(leftover);
  // A new Checkpointer (a restarted shard) continues after the newest checkpoint.
  ASSERT_TRUE(Checkpointer(Options(2)).Write(*shard.store, shard.batcher_views()).ok());
  std::vector<CheckpointInfo> kept = ListCheckpoints(root_).value();
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].version, 5u);
  EXPECT_EQ(kept[1].version, 4u);
  EXPECT_FALSE(fs::exists(leftover));
  EXPECT_EQ(Checkpointer(Options()).LoadNewest().value().sequence, 5u);
}

TEST_F(CheckpointerTest, RestoreIntoAnotherShardIsFailedPrecondition) {
  Shard shard = NewShard(&clock_, StoreOptions{.shard_index = 1, .num_shards = 2});
  ASSERT_FALSE(shard.store->OwnedParameters().empty());
  Train(shard);
  Checkpointer checkpointer(Options());
  ASSERT_TRUE(checkpointer.Write(*shard.store, shard.batcher_views()).ok());
  const ShardCheckpoint loaded = checkpointer.LoadNewest().value();
  EXPECT_EQ(loaded.shard_index, 1);
  EXPECT_EQ(loaded.num_shards, 2);

  for (StoreOptions other : {StoreOptions{.shard_index = 0, .num_shards = 2},
                             StoreOptions{.shard_index = 1, .num_shards = 3}}) {
    auto store = ParameterStore::Create(other).value();
    const absl::Status status = Checkpointer::RestoreInto(loaded, *store);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    EXPECT_FALSE(store->model_registered()) << "a refused restore changes nothing";
  }
  auto same = ParameterStore::Create(StoreOptions{.shard_index = 1, .num_shards = 2}).value();
  ASSERT_TRUE(Checkpointer::RestoreInto(loaded, *same).ok());
  EXPECT_EQ(same->OwnedParameters(), shard.store->OwnedParameters());
  // Restoring twice is refused: the store is no longer empty.
  EXPECT_EQ(Checkpointer::RestoreInto(loaded, *same).code(),
            absl::StatusCode::kFailedPrecondition);
}

bool PythonHasNumpy() {
  return access("/usr/bin/python3", X_OK) == 0 &&
         std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

TEST_F(CheckpointerTest, NumpyLoadsEveryTensor) {
  if (!PythonHasNumpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy is not available";
  Shard shard = NewShard(&clock_);
  Train(shard);
  const std::string dir =
      Checkpointer(Options()).Write(*shard.store, shard.batcher_views()).value();
  const Matrix bias = shard.store->Snapshot(kBias, false).value().X;

  // Loads every .npy, checks float32 and the 1-D bias's shape and first value, counts them.
  const std::string script = absl::StrCat(
      "import glob, json, sys, numpy as np\n"
      "d = sys.argv[1]\n"
      "m = json.load(open(d + '/manifest.json'))\n"
      "names = [f['name'] for f in m['files'] if f['name'].endswith('.npy')]\n"
      "for n in names:\n"
      "    a = np.load(d + '/' + n)\n"
      "    assert a.dtype == np.float32, (n, a.dtype)\n"
      "b = np.load(d + '/enc+2Fln+201.bias+2B+25.X.npy')\n"
      "assert b.shape == (16,), b.shape\n"
      "assert b[0] == np.float32(sys.argv[2]), (b[0], sys.argv[2])\n"
      "assert len(names) == len(glob.glob(d + '/*.npy')) == 3 + 3 + 3 + 2 + 2 + 3, len(names)\n");
  const std::string script_path = root_ + "/check.py";
  std::ofstream(script_path) << script;
  char value[64];
  std::snprintf(value, sizeof(value), "%.9g", bias(0, 0));
  const std::string command =
      absl::StrCat("/usr/bin/python3 ", script_path, " '", dir, "' ", value);
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
}

// ---- Coordinated checkpoints (server/checkpoint/checkpoint_cut.h).

std::string ManifestMetadata(const std::string& dir, const std::string& key) {
  const CheckpointManifest manifest = ValidateCheckpoint(dir).value();
  auto it = manifest.metadata.find(key);
  return it == manifest.metadata.end() ? "<absent>" : it->second;
}

TEST_F(CheckpointerTest, CutCheckpointsAreTaggedAndOwnCheckpointsCarryTheLastRunId) {
  Shard shard = NewShard(&clock_);
  Checkpointer checkpointer(Options());
  const std::string plain = checkpointer.Write(*shard.store, shard.batcher_views()).value();
  EXPECT_EQ(ManifestMetadata(plain, "run_id"), "<absent>");
  EXPECT_EQ(ManifestMetadata(plain, "cut"), "<absent>");
  EXPECT_EQ(checkpointer.cuts().newest().cut, 0u);

  Train(shard);
  const std::string cut =
      checkpointer.Write(*shard.store, shard.batcher_views(), CutTag{"run-a.1", 7}).value();
  EXPECT_EQ(ManifestMetadata(cut, "run_id"), "run-a.1");
  EXPECT_EQ(ManifestMetadata(cut, "cut"), "7");
  const std::string own = checkpointer.Write(*shard.store, shard.batcher_views()).value();
  EXPECT_EQ(ManifestMetadata(own, "run_id"), "run-a.1");
  EXPECT_EQ(ManifestMetadata(own, "cut"), "<absent>");

  // What Status reports and a repeated request is answered with, also after a restart.
  const Checkpointer restarted(Options());
  for (const Checkpointer* c : std::vector<const Checkpointer*>{&checkpointer, &restarted}) {
    EXPECT_EQ(c->cuts().newest().run_id, "run-a.1");
    EXPECT_EQ(c->cuts().newest().cut, 7u);
    EXPECT_EQ(c->cuts().last_run_id(), "run-a.1");
    absl::StatusOr<std::optional<CutCheckpoint>> again = c->cuts().Check({"run-a.1", 7});
    ASSERT_TRUE(again.ok()) << again.status();
    ASSERT_TRUE(again->has_value());
    EXPECT_EQ((*again)->path, cut);
    EXPECT_TRUE((*again)->already_written);
    ASSERT_EQ((*again)->versions.size(), shard.store->OwnedParameters().size());
    EXPECT_EQ((*again)->versions[0].first, "tall");
    EXPECT_EQ((*again)->versions[0].second, 3);  // Train made three steps
  }
  EXPECT_EQ(Checkpointer(Options()).LoadNewest().value().tag.run_id, "run-a.1");
}

TEST_F(CheckpointerTest, CutsOnlyGrowPerRunId) {
  Shard shard = NewShard(&clock_);
  Checkpointer checkpointer(Options(5));
  ASSERT_TRUE(checkpointer.Write(*shard.store, shard.batcher_views(), {"r", 4}).ok());
  absl::StatusOr<std::string> lower = checkpointer.Write(*shard.store, shard.batcher_views(),
                                                         {"r", 3});
  EXPECT_EQ(lower.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(lower.status().message(), "cut 3")) << lower.status();
  EXPECT_TRUE(absl::StrContains(lower.status().message(), "cut 4")) << lower.status();
  EXPECT_EQ(checkpointer.cuts().Check({"r", 3}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(checkpointer.Write(*shard.store, shard.batcher_views(), {"r", 4}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ListCheckpoints(root_).value().size(), 1u);  // refusals wrote nothing
  // Another run id has its own sequence; cut 0 and bad run ids are not requests.
  EXPECT_TRUE(checkpointer.Write(*shard.store, shard.batcher_views(), {"other", 1}).ok());
  EXPECT_EQ(checkpointer.cuts().newest().run_id, "other");
  EXPECT_FALSE(checkpointer.cuts().Check({"r", 5}).value().has_value());
  for (const CutTag& bad : {CutTag{"", 2}, CutTag{"a/b", 2}, CutTag{std::string(129, 'x'), 2}}) {
    EXPECT_EQ(ValidateCutRequest(bad).code(), absl::StatusCode::kInvalidArgument) << bad.run_id;
    EXPECT_EQ(checkpointer.Write(*shard.store, shard.batcher_views(), bad).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(ValidateCutRequest({std::string(128, 'x'), 1}).ok());
  EXPECT_EQ(ValidateCutRequest({"r", 0}).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointerTest, LoadCutRestoresThatCutWithNewerOnesPresent) {
  Shard shard = NewShard(&clock_);
  Checkpointer checkpointer(Options(/*keep_last=*/2));
  PushToAll(shard, "w0", 0);
  PushToAll(shard, "w1 (spare)", 0);
  ASSERT_TRUE(checkpointer.Write(*shard.store, shard.batcher_views(), {"r", 1}).ok());
  PushToAll(shard, "w0", 1);
  PushToAll(shard, "w1 (spare)", 1);
  ASSERT_TRUE(checkpointer.Write(*shard.store, shard.batcher_views(), {"r", 2}).ok());
  std::vector<ParameterSnapshot> at_cut_2;
  for (const std::string& name : shard.store->OwnedParameters()) {
    at_cut_2.push_back(shard.store->Snapshot(name, true).value());
  }
  // Training goes on; the shard's own checkpoints and a newer cut follow. With keep_last 2,
  // retention keeps the two newest checkpoints and the two newest cuts (2 and 3).
  for (uint64_t sequence = 2; sequence < 6; ++sequence) {
    PushToAll(shard, "w0", sequence);
    PushToAll(shard, "w1 (spare)", sequence);
    ASSERT_TRUE(checkpointer.Write(*shard.store, shard.batcher_views()).ok());
    if (sequence == 3) {
      ASSERT_TRUE(checkpointer.Write(*shard.store, shard.batcher_views(), {"r", 3}).ok());
    }
  }
  EXPECT_EQ(ListCheckpoints(root_).value().size(), 4u);
  EXPECT_EQ(DescribeCuts(ListCuts(root_).value()), "run r: cuts 2, 3");

  absl::StatusOr<ShardCheckpoint> loaded = Checkpointer(Options()).Load("", 2);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tag.cut, 2u);
  EXPECT_EQ(loaded->tag.run_id, "r");
  auto restored = ParameterStore::Create(StoreOptions{}).value();
  ASSERT_TRUE(Checkpointer::RestoreInto(*loaded, *restored).ok());
  for (const ParameterSnapshot& expected : at_cut_2) {
    EXPECT_EQ(expected.version, 2);
    ExpectSameParameter(expected, restored->Snapshot(expected.spec.name, true).value());
  }
  EXPECT_GT(Checkpointer(Options()).LoadNewest().value().parameters[0].version, 2);

  // A cut that is not there names what is.
  absl::Status missing = Checkpointer(Options()).LoadCut("", 1).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(missing.message(), "run r: cuts 2, 3")) << missing;
  EXPECT_EQ(Checkpointer(Options()).LoadCut("other", 2).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Two runs with the same cut: the run id must be named (keep_last 3 keeps r's cut 2).
  ASSERT_TRUE(Checkpointer(Options(3)).Write(*shard.store, shard.batcher_views(), {"s", 2}).ok());
  absl::Status ambiguous = Checkpointer(Options()).LoadCut("", 2).status();
  EXPECT_EQ(ambiguous.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(ambiguous.message(), "r, s")) << ambiguous;
  EXPECT_EQ(Checkpointer(Options()).LoadCut("r", 2).value().tag.run_id, "r");
}

}  // namespace
}  // namespace dion
