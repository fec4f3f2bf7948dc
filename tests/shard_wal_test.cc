// The shard's write-ahead log (server/shard_log.h) through Shard::Create: a shard process that
// dies without any shutdown (a forked child ending with _exit, as a kill -9 would leave the
// files) comes back with every acknowledged registration, worker and contribution; the batches
// it had applied are replayed bit for bit, the contributions of its open batches are open
// again, and the dedup windows answer DUPLICATE for what was acknowledged. A torn last record
// is cut; a corrupt record in the middle refuses to start (or is dropped with kTruncate).
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <utility>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "common/local_row_reduce.h"
#include "server/metrics.h"
#include "server/shard.h"
#include "server/shard_log.h"
#include "server/wal/log_reader.h"
#include "server/wire.h"
#include "tests/crash_test_util.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

using ::dion::testing::ReadFile;
using ::dion::testing::RunAndDie;
using ::dion::testing::WriteFile;

namespace fs = std::filesystem;

ShardOptions WalOptions(const std::string& root, const DpOptions& dp = {}) {
  ShardOptions options = testing::TestServerOptions().shard;
  options.batcher.dp = dp;
  options.checkpoint_dir = root + "/ckpt";
  options.wal_dir = root + "/wal";
  options.batcher.target_workers = 0;
  options.batcher.target_samples = 3;  // three contributions per batch; the rest stay open
  options.batcher.adaptive = false;
  return options;
}

std::string FreshRoot(const std::string& name) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/shard-wal-", name, "-", getpid());
  fs::remove_all(root);
  fs::create_directories(root);
  return root;
}

Contribution Factors(const std::string& worker, uint64_t sequence, const std::string& parameter,
                     int64_t m, int64_t n, int64_t base) {
  Contribution c;
  c.worker_id = worker;
  c.sequence = sequence;
  c.parameter = parameter;
  c.base_version = base;
  c.sample_count = 1;
  c.payload = testing::RandomFactors(m, n, 2, sequence * 31 + m + worker.size());
  return c;
}

Contribution Dense(uint64_t sequence) {
  Contribution c;
  c.worker_id = "w1";
  c.sequence = sequence;
  c.parameter = "b";
  c.sample_count = 2;
  Matrix G(1, 24);
  for (int64_t j = 0; j < 24; ++j) G(0, j) = 0.01f * static_cast<float>(j - 11);
  c.payload = G;
  return c;
}

const std::vector<std::string> kParameters = {"w", "v", "b"};

// Every parameter's value and optimizer state, serialised (bit-exact).
std::vector<std::string> State(const Shard& shard) {
  std::vector<std::string> state;
  for (const std::string& p : kParameters) {
    v1::ParameterValue proto;
    SnapshotToProto(shard.Snapshot(p, true).value(), &proto);
    state.push_back(proto.SerializeAsString());
  }
  return state;
}

// The pushes of the scenario: 7 into "w" from two workers (2 batches + 1 open contribution),
// 4 into "v" (1 batch + 1 open), 1 dense into "b" (open). Returns false on any surprise.
bool PushScenario(Shard& shard) {
  if (!shard.RegisterModel(ModelTableFromProto(testing::TestModelRequest()).value()).ok() ||
      !shard.RegisterWorker("w0").ok() || !shard.RegisterWorker("w1").ok()) {
    return false;
  }
  for (int k = 0; k < 7; ++k) {  // base 0: the input must not depend on the steps' timing
    absl::StatusOr<PushReply> r = shard.Push(Factors(k % 2 ? "w1" : "w0", k, "w", 32, 24, 0));
    if (!r.ok() || r->result != PushOutcome::kAccepted) return false;
  }
  for (int k = 0; k < 4; ++k) {
    absl::StatusOr<PushReply> r = shard.Push(Factors("w0", k, "v", 12, 20, 0));
    if (!r.ok() || r->result != PushOutcome::kAccepted) return false;
  }
  absl::StatusOr<PushReply> r = shard.Push(Dense(0));
  if (!r.ok() || r->result != PushOutcome::kAccepted) return false;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  return shard.WaitForVersion("w", 2, deadline).ok() && shard.WaitForVersion("v", 1, deadline).ok();
}

// The child: the scenario, its state written to <root>/before.<i>, optionally a checkpoint
// after the first half of "w".
bool ScenarioThenDie(const std::string& root, bool checkpoint_midway,
                     const DpOptions& dp = {}) {
  absl::StatusOr<std::unique_ptr<Shard>> shard = Shard::Create(WalOptions(root, dp));
  if (!shard.ok()) return false;
  if (!PushScenario(**shard)) {
    (void)shard->release();
    return false;
  }
  if (checkpoint_midway) {
    if (!(*shard)->Checkpoint().ok()) return false;
    for (int k = 7; k < 9; ++k) {  // after the checkpoint: one more batch-worth into "w"
      const int64_t base = (*shard)->Version("w").value();
      if (!(*shard)->Push(Factors("w0", k, "w", 32, 24, base)).ok()) return false;
    }
  }
  const std::vector<std::string> state = State(**shard);
  for (size_t i = 0; i < state.size(); ++i) WriteFile(absl::StrCat(root, "/before.", i), state[i]);
  (void)shard->release();  // no destructor, no shutdown, no last checkpoint: the caller _exits
  return true;
}

std::string LogPath(const std::string& root, uint64_t checkpoint) {
  return absl::StrCat(root, "/wal/", LogFileName(checkpoint));
}

TEST(ShardWal, AcknowledgedWorkSurvivesAKillBeforeTheFirstCheckpoint) {
  const std::string root = FreshRoot("first");
  ASSERT_EQ(RunAndDie([&] { return ScenarioThenDie(root, false); }), 0);
  ASSERT_FALSE(fs::exists(root + "/ckpt") && !fs::is_empty(root + "/ckpt"))
      << "the child must not have checkpointed";

  auto shard = Shard::Create(WalOptions(root)).value();
  ASSERT_TRUE(shard->model_registered()) << "the registration was acknowledged";
  const std::vector<std::string> state = State(*shard);
  for (size_t i = 0; i < state.size(); ++i) {
    EXPECT_TRUE(state[i] == ReadFile(absl::StrCat(root, "/before.", i)))
        << kParameters[i] << " differs from the killed shard's";
  }
  const ShardStatus status = shard->Status();
  EXPECT_EQ(status.wal_replayed.contributions, 12);
  EXPECT_EQ(status.wal_replayed.batches, 3);
  EXPECT_EQ(status.workers.size(), 2u);
  // Acknowledged contributions, applied or still open, are known: re-sent, they are DUPLICATE.
  EXPECT_EQ(shard->Push(Factors("w0", 6, "w", 32, 24, 0)).value().result, PushOutcome::kDuplicate);
  EXPECT_EQ(shard->Push(Factors("w1", 1, "w", 32, 24, 0)).value().result, PushOutcome::kDuplicate);
  EXPECT_EQ(shard->Push(Dense(0)).value().result, PushOutcome::kDuplicate);

  // The open contributions were not lost: after a drain the shard equals one never killed.
  shard->Drain();
  const std::vector<std::string> recovered = State(*shard);
  EXPECT_EQ(shard->Snapshot("w", false).value().contributions_applied, 7);
  EXPECT_EQ(shard->Snapshot("b", false).value().version, 1);
  shard.reset();
  const std::string reference_root = FreshRoot("reference");
  auto reference = Shard::Create(WalOptions(reference_root)).value();
  ASSERT_TRUE(PushScenario(*reference));
  reference->Drain();
  const std::vector<std::string> expected = State(*reference);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_TRUE(recovered[i] == expected[i]) << kParameters[i] << " differs from the reference";
  }
  reference.reset();
  fs::remove_all(root);
  fs::remove_all(reference_root);
}

TEST(ShardWal, TheLogAfterACheckpointIsReplayedOnTopOfIt) {
  const std::string root = FreshRoot("checkpointed");
  ASSERT_EQ(RunAndDie([&] { return ScenarioThenDie(root, true); }), 0);
  // The checkpoint started wal-1 and removed wal-0, whose records it holds.
  EXPECT_TRUE(fs::exists(LogPath(root, 1)));
  EXPECT_FALSE(fs::exists(LogPath(root, 0)));

  auto shard = Shard::Create(WalOptions(root)).value();
  const std::vector<std::string> state = State(*shard);
  for (size_t i = 0; i < state.size(); ++i) {
    EXPECT_TRUE(state[i] == ReadFile(absl::StrCat(root, "/before.", i))) << kParameters[i];
  }
  // Only what followed the checkpoint was replayed: two contributions, no batch closed yet...
  EXPECT_EQ(shard->Status().wal_replayed.contributions, 2);
  // ...and both are known.
  EXPECT_EQ(shard->Push(Factors("w0", 8, "w", 32, 24, 0)).value().result, PushOutcome::kDuplicate);
  shard->Drain();
  EXPECT_EQ(shard->Snapshot("w", false).value().contributions_applied, 9);
  // Logs stay for the two newest checkpoints (a fallback to the older one needs both).
  ASSERT_TRUE(shard->Checkpoint().ok());  // 2
  ASSERT_TRUE(shard->Checkpoint().ok());  // 3
  EXPECT_FALSE(fs::exists(LogPath(root, 1)));
  EXPECT_TRUE(fs::exists(LogPath(root, 2)));
  EXPECT_TRUE(fs::exists(LogPath(root, 3)));
  shard.reset();
  fs::remove_all(root);
}

// Differential privacy (server/dp_noise.h): each batch's noise comes from a seed logged with
// the batch, so the noisy steps replay bit for bit; the noise did change the weights.
TEST(ShardWal, NoisyStepsOfTheDifferentiallyPrivateModeReplayBitForBit) {
  // A clip above every payload of the scenario (the shard refuses any above it).
  const DpOptions dp{.noise_multiplier = 1e-3, .clip = 1e3, .delta = 1e-5, .sampling_rate = 0.5};
  const std::string root = FreshRoot("dp");
  ASSERT_EQ(RunAndDie([&] { return ScenarioThenDie(root, false, dp); }), 0);
  auto shard = Shard::Create(WalOptions(root, dp)).value();
  const std::vector<std::string> state = State(*shard);
  for (size_t i = 0; i < state.size(); ++i) {
    EXPECT_TRUE(state[i] == ReadFile(absl::StrCat(root, "/before.", i)))
        << kParameters[i] << " differs from the killed shard's";
  }
  const ShardStatus status = shard->Status();
  EXPECT_EQ(status.wal_replayed.batches, 3);
  ASSERT_TRUE(status.privacy.has_value());
  EXPECT_EQ(status.privacy->steps, 3);  // "w" at version 2, "v" at 1
  EXPECT_EQ(status.privacy->spent.epsilon, EpsilonAfter(dp.mechanism(), 3).epsilon);
  EXPECT_GT(status.privacy->spent.epsilon, 0.0);
  shard.reset();

  const std::string plain_root = FreshRoot("dp-off");
  auto plain = Shard::Create(WalOptions(plain_root)).value();
  ASSERT_TRUE(PushScenario(*plain));
  EXPECT_FALSE(plain->Status().privacy.has_value());
  const std::vector<std::string> noiseless = State(*plain);
  EXPECT_FALSE(noiseless[0] == state[0]) << "the noise must change the steps of 'w'";
  EXPECT_FALSE(noiseless[1] == state[1]) << "the noise must change the step of 'v'";
  plain.reset();
  fs::remove_all(root);
  fs::remove_all(plain_root);
}

// The accountant's epsilon is exported as the gauge dion_dp_epsilon after each step.
TEST(ShardWal, PrivacySpentIsExportedAsAGauge) {
  const DpOptions dp{.noise_multiplier = 2.0, .clip = 1e3, .delta = 1e-6, .sampling_rate = 0.25};
  const std::string root = FreshRoot("dp-metrics");
  ShardMetrics metrics;
  auto shard = Shard::Create(WalOptions(root, dp), &metrics).value();
  ASSERT_TRUE(PushScenario(*shard));
  shard->Drain();
  const int64_t steps = shard->Status().privacy->steps;
  EXPECT_EQ(steps, 6);  // "w" 2 batches + 1 drained, "v" 1 + 1 drained, "b" 1 drained
  const std::string text = metrics.Serialize();
  const size_t at = text.find("\ndion_dp_epsilon ");
  ASSERT_NE(at, std::string::npos) << text;
  const double exported = std::stod(text.substr(at + 17));
  const double expected = EpsilonAfter(dp.mechanism(), steps).epsilon;
  EXPECT_NEAR(exported, expected, 1e-9 * expected);
  shard.reset();
  fs::remove_all(root);
}

// The mode off, whatever its other settings: the same bits as a shard without the options.
TEST(ShardWal, DifferentialPrivacyOffChangesNoBit) {
  const std::string root = FreshRoot("dp-default"), off_root = FreshRoot("dp-zero");
  auto absent = Shard::Create(WalOptions(root)).value();
  auto off = Shard::Create(WalOptions(off_root, DpOptions{.noise_multiplier = 0.0, .clip = 0.5,
                                                          .delta = 1e-3, .sampling_rate = 0.1}))
                 .value();
  ASSERT_TRUE(PushScenario(*absent));
  ASSERT_TRUE(PushScenario(*off));
  absent->Drain();
  off->Drain();
  const std::vector<std::string> a = State(*absent), b = State(*off);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(a[i] == b[i]) << kParameters[i];
  absent.reset();
  off.reset();
  fs::remove_all(root);
  fs::remove_all(off_root);
}

TEST(ShardWal, TornLastRecordIsCutAndACorruptMiddleRecordRefusesToStart) {
  const std::string root = FreshRoot("damaged");
  ASSERT_EQ(RunAndDie([&] { return ScenarioThenDie(root, false); }), 0);
  const std::string log = LogPath(root, 0);
  const absl::StatusOr<LogContents> contents = ReadLog(log, RecoverMode::kStrict);
  ASSERT_TRUE(contents.ok()) << contents.status();
  ASSERT_GE(contents->offsets.size(), 10u);
  const std::string original = ReadFile(log);

  // A bit flipped inside the fifth record: refused, naming the file and the offset.
  std::string flipped = original;
  const uint64_t victim = contents->offsets[4];
  flipped[victim + 12] ^= 0x10;
  WriteFile(log, flipped);
  absl::StatusOr<std::unique_ptr<Shard>> refused = Shard::Create(WalOptions(root));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), log)) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), absl::StrCat(victim)))
      << refused.status();
  // Nothing was changed by the refusal: the file is as it was.
  EXPECT_EQ(ReadFile(log), flipped);

  // kTruncate drops the corrupt record and everything after it, and starts.
  ShardOptions truncate = WalOptions(root);
  truncate.wal_recover = RecoverMode::kTruncate;
  {
    auto shard = Shard::Create(truncate).value();
    EXPECT_EQ(shard->Status().wal_replayed.records, 4);
    EXPECT_EQ(fs::file_size(log), victim);
  }

  // A torn last record (a kill in the middle of an append) is cut without a word.
  fs::remove_all(root + "/ckpt");  // the shutdown above checkpointed; start from the log again
  fs::remove_all(root + "/wal");
  fs::create_directories(root + "/wal");
  WriteFile(log, original.substr(0, original.size() - 5));
  {
    auto shard = Shard::Create(WalOptions(root)).value();
    const LogReplayStats replayed = shard->Status().wal_replayed;
    EXPECT_EQ(replayed.records, static_cast<int64_t>(contents->offsets.size()) - 1);
    EXPECT_EQ(replayed.bytes_cut, original.size() - 5 - contents->offsets.back());
    // The last record was the dense contribution to "b": never acknowledged, so not there.
    EXPECT_EQ(shard->Push(Dense(0)).value().result, PushOutcome::kAccepted);
  }
  fs::remove_all(root);
}

// Restoring an older coordinated cut abandons the log written after it: the restored state is
// the cut's, not the cut's plus a replay of what followed, and a later plain restart keeps it.
TEST(ShardWal, RestoringACutDoesNotReplayTheLogThatFollowedIt) {
  const std::string root = FreshRoot("cut");
  ASSERT_EQ(RunAndDie([&] {
              absl::StatusOr<std::unique_ptr<Shard>> shard = Shard::Create(WalOptions(root));
              if (!shard.ok()) return false;
              bool ok = PushScenario(**shard) && (*shard)->CheckpointCut({"run", 1}).ok();
              const std::vector<std::string> state = State(**shard);
              for (size_t i = 0; i < state.size(); ++i) {
                WriteFile(absl::StrCat(root, "/cut1.", i), state[i]);
              }
              for (int k = 7; ok && k < 13; ++k) {  // two more batches of "w", logged only
                ok = (*shard)->Push(Factors("w0", k, "w", 32, 24, 0)).ok();
              }
              ok = ok && (*shard)->WaitForVersion("w", 5, absl::Now() + absl::Seconds(30)).ok();
              (void)shard->release();
              return ok;
            }),
            0);
  ShardOptions options = WalOptions(root);
  options.restore_cut = 1;
  {
    auto shard = Shard::Create(options).value();
    const std::vector<std::string> state = State(*shard);
    for (size_t i = 0; i < state.size(); ++i) {
      EXPECT_TRUE(state[i] == ReadFile(absl::StrCat(root, "/cut1.", i))) << kParameters[i];
    }
    EXPECT_EQ(shard->Status().wal_replayed.records, 0);
    // Sequence 7 was only in the abandoned log: it is new again.
    EXPECT_EQ(shard->Push(Factors("w0", 7, "w", 32, 24, 0)).value().result,
              PushOutcome::kAccepted);
  }
  // A plain restart now starts from the checkpoint the restore and the shutdown wrote.
  auto again = Shard::Create(WalOptions(root)).value();
  EXPECT_EQ(again->Snapshot("w", false).value().contributions_applied, 8);  // 7 at the cut + 7
  again.reset();
  fs::remove_all(root);
}

TEST(ShardWal, OptionsAndSyncModesAreChecked) {
  const std::string root = FreshRoot("options");
  ShardOptions options = WalOptions(root);
  options.checkpoint_dir.clear();
  EXPECT_EQ(Shard::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  fs::remove_all(root);
  EXPECT_EQ(ParseLogSync("always").value().mode, LogSync::Mode::kAlways);
  EXPECT_EQ(ParseLogSync("none").value().mode, LogSync::Mode::kNone);
  absl::StatusOr<LogSync> interval = ParseLogSync("interval:100ms");
  ASSERT_TRUE(interval.ok());
  EXPECT_EQ(interval->mode, LogSync::Mode::kInterval);
  EXPECT_EQ(interval->interval, absl::Milliseconds(100));
  for (const char* bad : {"", "sometimes", "interval:", "interval:0s", "interval:-1s"}) {
    absl::StatusOr<LogSync> parsed = ParseLogSync(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(parsed.status().message(), "interval:100ms")) << bad;
  }
}

// ---- A follower of a split parameter (docs/server.md, "Split parameters").

// Shards of one process as the owners of split parameters: the reductions of each step
// attempt meet in a LocalReduceGroup of their own, and the leader's StepRows is a call of each
// follower's Shard. A follower whose StepRows fails leaves its step: the group is aborted, so
// the other owners stop waiting for its parts (as a reduction deadline does over gRPC).
class InProcessPeers : public SplitPeers {
 public:
  explicit InProcessPeers(int owners = 2) : owners_(owners) {}
  void set_followers(std::vector<Shard*> followers) { followers_ = std::move(followers); }
  std::unique_ptr<RowReducer> Reducer(const std::string&, int64_t step, int32_t attempt,
                                      const SplitOwnership& split) override {
    return std::make_unique<Forward>(Group(step, attempt), split.index);
  }
  std::unique_ptr<FollowerSteps> StartFollowers(const StepRowsCommand& command,
                                                const SplitOwnership&) override {
    std::shared_ptr<LocalReduceGroup> group;
    if (!command.query && command.sums.empty()) {
      group = Group(command.batch.version + 1, command.attempt);
    }
    return std::make_unique<Steps>(followers_, command, std::move(group));
  }

 private:
  std::shared_ptr<LocalReduceGroup> Group(int64_t step, int32_t attempt) {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<LocalReduceGroup>& group = groups_[{step, attempt}];
    if (group == nullptr) group = std::make_shared<LocalReduceGroup>(owners_);
    return group;
  }
  struct Forward final : RowReducer {
    Forward(std::shared_ptr<LocalReduceGroup> group, int index)
        : group(std::move(group)), inner(this->group->owner(index)) {}
    int owners() const override { return inner.owners(); }
    int index() const override { return inner.index(); }
    absl::Status AllReduce(absl::string_view tag, MatrixRef part) override {
      return inner.AllReduce(tag, part);
    }
    std::shared_ptr<LocalReduceGroup> group;
    RowReducer& inner;
  };
  struct Steps final : FollowerSteps {
    Steps(const std::vector<Shard*>& followers, const StepRowsCommand& command,
          std::shared_ptr<LocalReduceGroup> group)
        : replies(followers.size(), absl::UnknownError("no answer")) {
      for (size_t i = 0; i < followers.size(); ++i) {
        threads.emplace_back([this, i, f = followers[i], command, group] {
          replies[i] = f->StepRows(command);
          if (!replies[i].ok() && group != nullptr) group->Abort(replies[i].status());
        });
      }
    }
    ~Steps() override { Join(); }
    void Join() {
      for (std::thread& t : threads) {
        if (t.joinable()) t.join();
      }
    }
    absl::Status Wait() override {
      Join();
      for (const auto& reply : replies) {
        if (!reply.ok()) return reply.status();
      }
      return absl::OkStatus();
    }
    std::vector<absl::StatusOr<StepRowsReply>> Replies() override {
      Join();
      return replies;
    }
    std::vector<absl::StatusOr<StepRowsReply>> replies;
    std::vector<std::thread> threads;
  };
  const int owners_;
  std::vector<Shard*> followers_;
  absl::Mutex mu_;
  std::map<std::pair<int64_t, int32_t>, std::shared_ptr<LocalReduceGroup>> groups_
      ABSL_GUARDED_BY(mu_);
};

ShardOptions SplitOwnerOptions(const std::string& root, int shard, SplitPeers* peers,
                               int owners = 2) {
  ShardOptions options = WalOptions(root);
  options.store.shard_index = shard;
  options.store.num_shards = owners;
  options.batcher.target_samples = 0;
  options.batcher.target_workers = 1;  // a batch per leader push
  options.split_peers = peers;
  return options;
}

ModelTable SplitTable(int owners = 2) {
  v1::RegisterModelRequest request;
  v1::ParameterSpec* w = request.add_parameters();
  w->set_name("w");
  w->add_shape(64);
  w->add_shape(48);
  w->set_optimizer(v1::OPTIMIZER_KIND_DION);
  w->mutable_dion()->set_lr(0.05);
  w->mutable_dion()->set_rank_fraction(0.25);
  w->set_split_owners(owners);
  return ModelTableFromProto(request).value();
}

// Round k's contribution of worker w0, with P cut to the rows of `shard`'s block.
Contribution SplitBlock(const Shard& shard, uint64_t k, int64_t base) {
  Contribution c = Factors("w0", k, "w", 64, 48, base);
  const RowBlock rows = shard.store().Split("w").value()->rows;
  LowRankFactors& f = std::get<LowRankFactors>(c.payload);
  f.P = Matrix(f.P.middleRows(rows.begin, rows.size()));
  return c;
}

std::string FollowerState(const Shard& owner) {
  v1::ParameterValue proto;
  SnapshotToProto(owner.Snapshot("w", true).value(), &proto);
  return proto.SerializeAsString();
}

// The child: both owners train 3 steps; a block staged before a checkpoint of the follower is
// stepped after it; one more block is staged (acknowledged) and never stepped. Then it dies.
bool SplitScenarioThenDie(const std::string& root) {
  // Never destroyed, like the shards below: their threads may still use it when the child ends.
  InProcessPeers& peers = *new InProcessPeers;
  auto leader = Shard::Create(SplitOwnerOptions(root + "/0", 0, &peers));
  auto follower = Shard::Create(SplitOwnerOptions(root + "/1", 1, &peers));
  if (!leader.ok() || !follower.ok()) return false;
  peers.set_followers({follower->get()});
  Shard& l = **leader;
  Shard& f = **follower;
  for (Shard* s : {&l, &f}) {
    if (!s->RegisterModel(SplitTable()).ok() || !s->RegisterWorker("w0").ok()) return false;
  }
  if (l.store().Split("w").value()->index != 0) return false;  // shard 0 leads
  const auto stage = [&](uint64_t k) {
    absl::StatusOr<PushReply> r = f.Push(SplitBlock(f, k, k - 1));
    return r.ok() && r->result == PushOutcome::kAccepted;
  };
  const auto step = [&](uint64_t k) {
    absl::StatusOr<PushReply> r = l.Push(SplitBlock(l, k, k - 1));
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    return r.ok() && r->result == PushOutcome::kAccepted &&
           f.WaitForVersion("w", k, deadline).ok() && l.WaitForVersion("w", k, deadline).ok();
  };
  for (uint64_t k = 1; k <= 2; ++k) {
    if (!stage(k) || !step(k)) return false;
  }
  if (!stage(3) || !f.Checkpoint().ok() || !step(3) || !stage(4)) return false;
  WriteFile(root + "/follower.before", FollowerState(f));
  (void)leader->release();
  (void)follower->release();  // no destructor, no shutdown, no last checkpoint
  return true;
}

TEST(ShardWal, AFollowerOfASplitParameterComesBackWithItsStepsAndStagedBlocks) {
  const std::string root = FreshRoot("split-follower");
  ASSERT_EQ(RunAndDie([&] { return SplitScenarioThenDie(root); }), 0);

  InProcessPeers peers;
  auto follower = Shard::Create(SplitOwnerOptions(root + "/1", 1, &peers)).value();
  // The checkpoint holds version 2; the log after it the block staged before the cut (logged
  // again there), step 3 with its sums, and the block of round 4.
  EXPECT_EQ(follower->Version("w").value(), 3);
  EXPECT_TRUE(FollowerState(*follower) == ReadFile(root + "/follower.before"))
      << "the follower's rows and state differ from the killed one's";
  // Steps: 2, the checkpoint's latest, logged again at its cut with its sums, and 3.
  EXPECT_EQ(follower->Status().wal_replayed.split_steps, 2);
  EXPECT_EQ(follower->StagedContributions("w"), 1);
  // The staged block of round 4 is known: sent again, it is DUPLICATE.
  EXPECT_EQ(follower->Push(SplitBlock(*follower, 4, 3)).value().result, PushOutcome::kDuplicate);
  follower.reset();
  fs::remove_all(root);
}

// ---- The leader of a split parameter over 3 owners, killed in its step 3.

enum class LeaderCrash { kNone, kLogged, kAnswered };

// The child: the 3 owners train steps 1 and 2 (each a block staged on both followers, then the
// leader's push closing a batch), then step 3 until `crash` (kNone: to the end, then every
// owner's state into <root>/ref.<shard>). At step 3's kLogged point follower 2's directory is
// copied to <root>/2-before (at version 2, round 3's block staged).
bool LeaderScenario(const std::string& root, LeaderCrash crash) {
  InProcessPeers& peers = *new InProcessPeers(3);  // outlives the threads, as the shards
  std::vector<Shard*> shards;
  for (int i = 0; i < 3; ++i) {
    ShardOptions options = SplitOwnerOptions(absl::StrCat(root, "/", i), i, &peers, 3);
    if (i == 0) {
      options.leader_step_hook = [root, crash](int64_t step, bool answered) {
        if (step != 3) return;
        if (!answered) {
          fs::copy(root + "/2", root + "/2-before", fs::copy_options::recursive);
        }
        if ((crash == LeaderCrash::kLogged && !answered) ||
            (crash == LeaderCrash::kAnswered && answered)) {
          _exit(7);  // kill -9 as far as the disk can tell: nothing after this is written
        }
      };
    }
    auto shard = Shard::Create(options);
    if (!shard.ok()) return false;
    shards.push_back(shard->release());  // never destroyed: no shutdown, no last checkpoint
  }
  peers.set_followers({shards[1], shards[2]});
  for (Shard* s : shards) {
    if (!s->RegisterModel(SplitTable(3)).ok() || !s->RegisterWorker("w0").ok()) return false;
  }
  for (uint64_t k = 1; k <= 3; ++k) {
    for (int i : {1, 2}) {
      absl::StatusOr<PushReply> r = shards[i]->Push(SplitBlock(*shards[i], k, k - 1));
      if (!r.ok() || r->result != PushOutcome::kAccepted) return false;
    }
    absl::StatusOr<PushReply> r = shards[0]->Push(SplitBlock(*shards[0], k, k - 1));
    if (!r.ok() || r->result != PushOutcome::kAccepted) return false;
    for (Shard* s : shards) {
      if (!s->WaitForVersion("w", k, absl::Now() + absl::Seconds(30)).ok()) return false;
    }
  }
  for (int i = 0; i < 3; ++i) WriteFile(absl::StrCat(root, "/ref.", i), FollowerState(*shards[i]));
  return true;
}

// The owners restarted from their directories (follower 2 from `follower2`), followers first;
// every owner must reach version 3 with exactly the state of the run that was not killed.
void ExpectLeaderFinishesStep3(const std::string& root, const std::string& follower2) {
  InProcessPeers peers(3);
  auto f1 = Shard::Create(SplitOwnerOptions(root + "/1", 1, &peers, 3)).value();
  auto f2 = Shard::Create(SplitOwnerOptions(follower2, 2, &peers, 3)).value();
  peers.set_followers({f1.get(), f2.get()});
  auto leader = Shard::Create(SplitOwnerOptions(root + "/0", 0, &peers, 3)).value();
  // Rounds 1-3 of the leader's worker were acknowledged, so the log has them: round 3 again
  // is DUPLICATE, and batches 1 and 2 were replayed with their commits.
  EXPECT_EQ(leader->Push(SplitBlock(*leader, 3, 2)).value().result, PushOutcome::kDuplicate);
  EXPECT_EQ(leader->Status().wal_replayed.batches, 3);
  EXPECT_EQ(leader->Status().wal_replayed.split_steps, 2);
  const Shard* owners[] = {leader.get(), f1.get(), f2.get()};
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(owners[i]->WaitForVersion("w", 3, absl::Now() + absl::Seconds(30)).value_or(-1), 3)
        << "owner " << i;
    EXPECT_TRUE(FollowerState(*owners[i]) == ReadFile(absl::StrCat(root, "/ref.", i)))
        << "owner " << i << "'s rows and state differ from the run that was not killed";
  }
  // Training goes on: step 4 with all three.
  for (Shard* f : {f1.get(), f2.get()}) {
    EXPECT_EQ(f->Push(SplitBlock(*f, 4, 3)).value().result, PushOutcome::kAccepted);
  }
  EXPECT_EQ(leader->Push(SplitBlock(*leader, 4, 3)).value().result, PushOutcome::kAccepted);
  for (const Shard* s : owners) {
    EXPECT_EQ(s->WaitForVersion("w", 4, absl::Now() + absl::Seconds(30)).value_or(-1), 4);
  }
  leader.reset();
  f1.reset();
  f2.reset();
}

class ShardWalLeader : public ::testing::Test {
 protected:
  // The run that is not killed, in `root`/ref, its states copied next to the crashed run's.
  void Reference(const std::string& root) {
    const std::string ref = root + "/ref";
    fs::create_directories(ref);
    ASSERT_EQ(RunAndDie([&] { return LeaderScenario(ref, LeaderCrash::kNone); }), 0);
    for (int i = 0; i < 3; ++i) {
      fs::copy_file(absl::StrCat(ref, "/ref.", i), absl::StrCat(root, "/ref.", i));
    }
  }
  // The reference run, then the run killed at `crash`, restarted with follower 2 from
  // <root>/`follower2` (ExpectLeaderFinishesStep3).
  void KillAndRestart(const std::string& name, LeaderCrash crash, const std::string& follower2) {
    const std::string root = FreshRoot(name);
    Reference(root);
    ASSERT_EQ(RunAndDie([&] { return LeaderScenario(root, crash); }), 7);
    ExpectLeaderFinishesStep3(root, root + follower2);
    fs::remove_all(root);
  }
};

TEST_F(ShardWalLeader, KilledAfterEveryFollowerTookTheStepTakesItWithTheirSums) {
  KillAndRestart("split-leader-answered", LeaderCrash::kAnswered, "/2");
}

TEST_F(ShardWalLeader, KilledBeforeAskingAnyFollowerTakesTheStepWithThem) {
  KillAndRestart("split-leader-logged", LeaderCrash::kLogged, "/2");
}

// Follower 2 comes back as it was before step 3 (its disk lost the step), follower 1 has it:
// the leader takes the step with follower 1's sums and hands them to follower 2.
TEST_F(ShardWalLeader, AFollowerThatLostTheStepTakesItFromTheSumsOfAnother) {
  KillAndRestart("split-leader-mixed", LeaderCrash::kAnswered, "/2-before");
}

// The leader committed step 3 (the run was not killed), but follower 2 comes back as it was
// before step 3: the leader's next step fails on it, then the leader finds it a version behind
// and hands it step 3's sums from its log's commit record; step 4 then goes through.
class ShardWalLeaderBehind : public ShardWalLeader,
                             public ::testing::WithParamInterface<bool> {};

// With the parameter true the leader is first restarted once, writing a checkpoint (its last
// one) after step 3's commit: the commit's file is then behind the checkpoint, and the cut
// must have logged the step's sums again.
TEST_P(ShardWalLeaderBehind, AFollowerBehindTheLastCommittedStepTakesItFromTheLeadersLog) {
  const std::string root = FreshRoot("split-leader-behind");
  Reference(root);
  const std::string ref = root + "/ref";
  InProcessPeers peers(3);
  auto f1 = Shard::Create(SplitOwnerOptions(ref + "/1", 1, &peers, 3)).value();
  auto f2 = Shard::Create(SplitOwnerOptions(ref + "/2-before", 2, &peers, 3)).value();
  peers.set_followers({f1.get(), f2.get()});
  if (GetParam()) {
    auto once = Shard::Create(SplitOwnerOptions(ref + "/0", 0, &peers, 3)).value();
    ASSERT_TRUE(once->Checkpoint().ok());
  }  // destroyed: a last checkpoint too
  auto leader = Shard::Create(SplitOwnerOptions(ref + "/0", 0, &peers, 3)).value();
  if (GetParam()) EXPECT_EQ(leader->Status().wal_replayed.batches, 0);
  ASSERT_EQ(leader->Version("w").value(), 3);
  ASSERT_EQ(f2->Version("w").value(), 2);
  // Round 4 without follower 2's block: step 4 cannot pass it, so it stays at version 3.
  for (Shard* s : {f1.get(), leader.get()}) {
    EXPECT_EQ(s->Push(SplitBlock(*s, 4, 2)).value().result, PushOutcome::kAccepted);
  }
  EXPECT_EQ(f2->WaitForVersion("w", 3, absl::Now() + absl::Seconds(30)).value_or(-1), 3);
  EXPECT_TRUE(FollowerState(*f2) == ReadFile(root + "/ref.2"))
      << "follower 2 did not take step 3 as in the run where it had it";
  EXPECT_EQ(f2->Push(SplitBlock(*f2, 4, 2)).value().result, PushOutcome::kAccepted);
  for (const Shard* s : {leader.get(), f1.get(), f2.get()}) {
    EXPECT_EQ(s->WaitForVersion("w", 4, absl::Now() + absl::Seconds(30)).value_or(-1), 4);
  }
  leader.reset();
  f1.reset();
  f2.reset();
  fs::remove_all(root);
}

INSTANTIATE_TEST_SUITE_P(CheckpointAfterTheCommit, ShardWalLeaderBehind, ::testing::Bool());

// A follower holding version 3 answers a command for step 3 as taken only for the batch it
// took (and a query with that step's sums); another batch for that version is refused.
TEST_F(ShardWalLeader, AFollowerRefusesAnotherBatchForAVersionItHolds) {
  const std::string root = FreshRoot("split-other-batch");
  Reference(root);
  InProcessPeers peers(3);
  auto f1 = Shard::Create(SplitOwnerOptions(root + "/ref/1", 1, &peers, 3)).value();
  ASSERT_EQ(f1->Version("w").value(), 3);
  StepRowsCommand command;
  command.batch.parameter = "w";
  command.batch.version = 2;
  command.batch.members.push_back({"w0", 3, 0, 1.0});  // the batch of step 3
  EXPECT_EQ(f1->StepRows(command).value().version, 3);
  command.query = true;
  absl::StatusOr<StepRowsReply> answer = f1->StepRows(command);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->version, 3);
  EXPECT_FALSE(answer->sums.empty());  // replayed from its log
  command.batch.members[0].sequence = 4;  // another batch of version 2
  for (bool query : {false, true}) {
    command.query = query;
    absl::StatusOr<StepRowsReply> refused = f1->StepRows(command);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << query;
    EXPECT_TRUE(absl::StrContains(refused.status().message(), "another batch"))
        << refused.status();
  }
  EXPECT_EQ(f1->Version("w").value(), 3);
  f1.reset();
  fs::remove_all(root);
}

// An owner of a split parameter restarted without peers cannot take its steps: the start is
// refused, naming the flag, instead of failing on the first step.
TEST_F(ShardWalLeader, AnOwnerRestartedWithoutPeersIsRefused) {
  const std::string root = FreshRoot("split-no-peers");
  Reference(root);
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<std::unique_ptr<Shard>> shard =
        Shard::Create(SplitOwnerOptions(absl::StrCat(root, "/ref/", i), i, nullptr, 3));
    EXPECT_EQ(shard.status().code(), absl::StatusCode::kFailedPrecondition) << i;
    EXPECT_TRUE(absl::StrContains(shard.status().message(), "--peer_addresses"))
        << shard.status();
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace dion
