// Checkpoints cut while pushes go on (server/shard.h, "Checkpoints"; server/snapshot_slot.h):
// a shard that checkpoints again and again under concurrent pushes and then dies without any
// shutdown (a forked child ending with _exit, as a kill -9 would leave the files), in the
// middle of one more checkpoint, comes back bit for bit as it was, with every acknowledged
// contribution applied once and known to the dedup windows. Shutdown with a log abandons a
// checkpoint it cannot write before its deadline, and the log covers it; without a log the
// last checkpoint is written whatever the deadline.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "server/shard.h"
#include "server/wire.h"
#include "tests/crash_test_util.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

using ::dion::testing::ReadFile;
using ::dion::testing::RunAndDie;
using ::dion::testing::WriteFile;

namespace fs = std::filesystem;

const std::vector<std::string> kParameters = {"w", "v", "b"};
constexpr int kPushers = 3;
constexpr int kPushesEach = 60;

ShardOptions Options(const std::string& root, bool wal = true) {
  ShardOptions options = testing::TestServerOptions().shard;
  options.checkpoint_dir = root + "/ckpt";
  if (wal) options.wal_dir = root + "/wal";
  options.checkpoint_keep_last = 2;
  options.batcher.target_workers = 0;
  options.batcher.target_samples = 3;
  options.batcher.adaptive = false;
  return options;
}

std::string FreshRoot(const std::string& name) {
  const std::string root =
      absl::StrCat(::testing::TempDir(), "/shard-checkpoint-", name, "-", getpid());
  fs::remove_all(root);
  fs::create_directories(root);
  return root;
}

// Contribution k of pusher `worker`: factors into "w" or "v", or a dense gradient of "b".
Contribution Push(int worker, int k, int64_t base) {
  Contribution c;
  c.worker_id = absl::StrCat("w", worker);
  c.sequence = static_cast<uint64_t>(k);
  c.sample_count = 1;
  c.base_version = base;
  const uint64_t seed = static_cast<uint64_t>(worker * 1000 + k);
  switch (k % 3) {
    case 0:
      c.parameter = "w";
      c.payload = testing::RandomFactors(32, 24, 2, seed);
      break;
    case 1:
      c.parameter = "v";
      c.payload = testing::RandomFactors(12, 20, 2, seed);
      break;
    default: {
      c.parameter = "b";
      Matrix G(1, 24);
      for (int64_t j = 0; j < 24; ++j) G(0, j) = 0.001f * static_cast<float>((seed + j) % 17);
      c.payload = G;
    }
  }
  return c;
}

std::vector<std::string> State(const Shard& shard) {
  std::vector<std::string> state;
  for (const std::string& p : kParameters) {
    v1::ParameterValue proto;
    SnapshotToProto(shard.Snapshot(p, true).value(), &proto);
    state.push_back(proto.SerializeAsString());
  }
  return state;
}

bool Register(Shard& shard) {
  if (!shard.RegisterModel(ModelTableFromProto(testing::TestModelRequest()).value()).ok()) {
    return false;
  }
  for (int w = 0; w < kPushers; ++w) {
    if (!shard.RegisterWorker(absl::StrCat("w", w)).ok()) return false;
  }
  return true;
}

// kPushers threads push kPushesEach contributions each (every one must be ACCEPTED) while
// this thread checkpoints without a pause. Returns the checkpoints written, -1 on a surprise.
int PushWhileCheckpointing(Shard& shard) {
  std::atomic<bool> failed{false};
  std::atomic<int> running{kPushers};
  std::vector<std::thread> pushers;
  for (int w = 0; w < kPushers; ++w) {
    pushers.emplace_back([&, w] {
      for (int k = 0; k < kPushesEach; ++k) {
        Contribution c = Push(w, k, 0);
        c.base_version = shard.Version(c.parameter).value();
        absl::StatusOr<PushReply> r = shard.Push(std::move(c));
        if (!r.ok() || r->result != PushOutcome::kAccepted) failed = true;
      }
      --running;
    });
  }
  int written = 0;
  while (running.load() > 0) {
    if (!shard.Checkpoint().ok()) failed = true;
    ++written;
  }
  for (std::thread& t : pushers) t.join();
  return failed ? -1 : written;
}

// The child: pushes under checkpoints, applies everything, records its state, starts one more
// checkpoint and dies `die_after` into it.
bool PushCheckpointAndDie(const std::string& root, absl::Duration die_after) {
  absl::StatusOr<std::unique_ptr<Shard>> shard = Shard::Create(Options(root));
  if (!shard.ok() || !Register(**shard)) return false;
  const int written = PushWhileCheckpointing(**shard);
  if (written < 2) return false;  // the checkpoints must have overlapped the pushes
  (*shard)->Drain();
  const std::vector<std::string> state = State(**shard);
  for (size_t i = 0; i < state.size(); ++i) WriteFile(absl::StrCat(root, "/before.", i), state[i]);
  std::thread([&] { (void)(*shard)->Checkpoint(); }).detach();
  absl::SleepFor(die_after);
  _exit(0);  // no destructor, no shutdown
}

TEST(ShardCheckpoint, CheckpointsUnderPushesThenAKillRestoreBitIdenticalState) {
  // Die at once (the last checkpoint just cut), or a little later (while or after it writes).
  for (absl::Duration die_after : {absl::ZeroDuration(), absl::Milliseconds(3)}) {
    const std::string root = FreshRoot("kill");
    ASSERT_EQ(RunAndDie([&] { return PushCheckpointAndDie(root, die_after); }), 0);

    auto shard = Shard::Create(Options(root)).value();
    const std::vector<std::string> state = State(*shard);
    for (size_t i = 0; i < state.size(); ++i) {
      EXPECT_TRUE(state[i] == ReadFile(absl::StrCat(root, "/before.", i)))
          << kParameters[i] << " differs from the killed shard's (die after "
          << absl::FormatDuration(die_after) << ")";
    }
    int64_t applied = 0;
    for (const std::string& p : kParameters) {
      applied += shard->Snapshot(p, false).value().contributions_applied;
    }
    EXPECT_EQ(applied, kPushers * kPushesEach) << "every acknowledged contribution, once";
    for (int w = 0; w < kPushers; ++w) {
      for (int k : {0, kPushesEach / 2, kPushesEach - 1}) {
        EXPECT_EQ(shard->Push(Push(w, k, 0)).value().result, PushOutcome::kDuplicate)
            << "worker " << w << " sequence " << k;
      }
    }
    shard.reset();
    fs::remove_all(root);
  }
}

// A shard with some work applied and its newest checkpoint's number.
std::unique_ptr<Shard> ShardWithWork(const std::string& root, bool wal) {
  auto shard = Shard::Create(Options(root, wal)).value();
  EXPECT_TRUE(Register(*shard));
  for (int k = 0; k < 12; ++k) {
    EXPECT_TRUE(shard->Push(Push(0, k, 0)).ok());
  }
  EXPECT_TRUE(shard->Checkpoint().ok());
  for (int k = 12; k < 20; ++k) {
    EXPECT_TRUE(shard->Push(Push(0, k, 0)).ok());
  }
  return shard;
}

TEST(ShardCheckpoint, ShutdownPastItsDeadlineLeavesTheRestToTheLog) {
  const std::string root = FreshRoot("deadline");
  std::unique_ptr<Shard> shard = ShardWithWork(root, /*wal=*/true);
  const size_t checkpoints = ListCheckpoints(root + "/ckpt").value().size();
  shard->Drain();
  const std::vector<std::string> before = State(*shard);
  EXPECT_TRUE(shard->Shutdown(absl::Now() - absl::Seconds(1)).ok());
  EXPECT_EQ(ListCheckpoints(root + "/ckpt").value().size(), checkpoints)
      << "no checkpoint is written past the deadline";
  shard.reset();

  auto restarted = Shard::Create(Options(root)).value();
  EXPECT_GT(restarted->Status().wal_replayed.contributions, 0);
  const std::vector<std::string> after = State(*restarted);
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(after[i] == before[i]) << kParameters[i] << " differs after the restart";
  }
  restarted.reset();
  fs::remove_all(root);
}

TEST(ShardCheckpoint, WithoutALogShutdownWritesTheLastCheckpointWhateverTheDeadline) {
  const std::string root = FreshRoot("nolog");
  std::unique_ptr<Shard> shard = ShardWithWork(root, /*wal=*/false);
  const uint64_t newest = ListCheckpoints(root + "/ckpt").value().front().version;
  shard->Drain();
  const std::vector<std::string> before = State(*shard);
  EXPECT_TRUE(shard->Shutdown(absl::Now() - absl::Seconds(1)).ok());
  EXPECT_GT(ListCheckpoints(root + "/ckpt").value().front().version, newest);
  shard.reset();

  auto restarted = Shard::Create(Options(root, /*wal=*/false)).value();
  const std::vector<std::string> after = State(*restarted);
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(after[i] == before[i]) << kParameters[i] << " differs after the restart";
  }
  restarted.reset();
  fs::remove_all(root);
}

}  // namespace
}  // namespace dion
