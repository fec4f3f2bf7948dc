// The dion-worker binary (DION_WORKER_BINARY) as a process: how it answers bad flags and a stop
// request before it has reached its shards, how it waits for --start_file, and how SIGTERM in
// training flushes everything it accumulated.
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/dion_server.h"
#include "tests/server_test_util.h"
#include "worker/local/process.h"

#ifndef DION_WORKER_BINARY
#error "DION_WORKER_BINARY must name the built dion-worker executable"
#endif

namespace dion {
namespace {

// A loopback port that refuses connections for as long as the returned socket stays open
// (bound, never listening), so no other process can take it meanwhile.
struct RefusingPort {
  int fd = -1;
  int port = 0;
  RefusingPort() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address = {};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      return;
    }
    port = ntohs(address.sin_port);
  }
  ~RefusingPort() {
    if (fd >= 0) close(fd);
  }
};

// dion-worker on the synthetic task against the shard at 127.0.0.1:`port` (retrying for 5
// minutes), logging into `scratch`, with `extra` flags.
absl::StatusOr<std::unique_ptr<ChildProcess>> SpawnWorker(int port, const std::string& scratch,
                                                          const std::vector<std::string>& extra) {
  ChildSpec spec{"worker",
                 DION_WORKER_BINARY,
                 {absl::StrCat("--shards=127.0.0.1:", port), "--dataset=synthetic",
                  "--synthetic_test_samples=128", "--give_up_after=5m"},
                 scratch + "/worker.log",
                 20};
  spec.args.insert(spec.args.end(), extra.begin(), extra.end());
  return ChildProcess::Spawn(spec);
}

// Appends every line a child prints to `output`.
LineHandler Collector(std::string* output) {
  return [output](ChildProcess&, const std::string& line) {
    absl::StrAppend(output, line, "\n");
  };
}

// A worker still trying to reach an unreachable shard (give_up_after is 5 minutes) ends within
// seconds of SIGTERM, with exit status 0: nothing had been computed or sent yet.
TEST(WorkerBinaryTest, SigtermWhileWaitingForAnUnreachableShardExitsAtOnce) {
  RefusingPort refusing;
  ASSERT_GT(refusing.port, 0);
  std::string scratch = absl::StrCat(::testing::TempDir(), "/worker_binary_test.XXXXXX");
  ASSERT_NE(mkdtemp(scratch.data()), nullptr);
  absl::StatusOr<std::unique_ptr<ChildProcess>> worker =
      SpawnWorker(refusing.port, scratch, {"--synthetic_train_samples=512"});
  ASSERT_TRUE(worker.ok()) << worker.status();
  std::string output;
  const LineHandler collect = Collector(&output);
  // Long enough to be inside Connect's retries (the synthetic data takes milliseconds).
  const absl::Time waiting = absl::Now() + absl::Seconds(2);
  while (absl::Now() < waiting) PumpOutput({worker->get()}, absl::Milliseconds(100), collect);
  ASSERT_TRUE((*worker)->running()) << output;
  (*worker)->Signal(SIGTERM);
  const absl::Time signalled = absl::Now();
  while ((*worker)->running() && absl::Now() - signalled < absl::Seconds(20)) {
    PumpOutput({worker->get()}, absl::Milliseconds(100), collect);
  }
  const absl::Duration took = absl::Now() - signalled;
  ASSERT_FALSE((*worker)->running()) << "still running 20 s after SIGTERM\n" << output;
  PumpOutput({worker->get()}, absl::Milliseconds(100), collect);
  EXPECT_LT(took, absl::Seconds(5));
  const ExitStatus status = (*worker)->TryWait().value();
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << output;
  EXPECT_TRUE(absl::StrContains(output, "SIGTERM received before the shards were reached"))
      << output;
}

// Each of `bad_flags`, alone, is a bad flag: exit status 2 before the worker loads data or
// reaches a shard (the refusing port would make it retry for 5 minutes), with a message that
// contains `message`.
void ExpectBadFlags(std::initializer_list<const char*> bad_flags, const std::string& message) {
  RefusingPort refusing;
  ASSERT_GT(refusing.port, 0);
  std::string scratch = absl::StrCat(::testing::TempDir(), "/worker_binary_test.XXXXXX");
  ASSERT_NE(mkdtemp(scratch.data()), nullptr);
  for (const char* bad : bad_flags) {
    absl::StatusOr<std::unique_ptr<ChildProcess>> worker =
        SpawnWorker(refusing.port, scratch, {bad});
    ASSERT_TRUE(worker.ok()) << worker.status();
    std::string output;
    const LineHandler collect = Collector(&output);
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while ((*worker)->running() && absl::Now() < deadline) {
      PumpOutput({worker->get()}, absl::Milliseconds(50), collect);
    }
    ASSERT_FALSE((*worker)->running()) << bad << " did not stop the worker\n" << output;
    PumpOutput({worker->get()}, absl::Milliseconds(50), collect);
    const ExitStatus status = (*worker)->TryWait().value();
    EXPECT_TRUE(status.exited && status.code == 2) << bad << ": " << status.ToString();
    EXPECT_TRUE(absl::StrContains(output, message)) << bad << "\n" << output;
  }
}

TEST(WorkerBinaryTest, LookaheadOutOfRangeIsABadFlag) {
  ExpectBadFlags({"--lookahead=-1", "--lookahead=nan", "--lookahead=1e30"},
                 "expected a number of versions in [0, 100]");
}

TEST(WorkerBinaryTest, TargetAccuracySnapshotIntervalOrStartTimeoutOutOfRangeIsABadFlag) {
  ExpectBadFlags({"--target_accuracy=1.5", "--target_accuracy=-0.1", "--target_accuracy=nan",
                  "--snapshot_interval=-1s", "--start_timeout=0"},
                 "need --target_accuracy in [0, 1]");
}

// Pumps the worker's output into `output` until it exits or `timeout` passes; whether it exited.
bool WaitForExit(ChildProcess& worker, absl::Duration timeout, std::string* output) {
  const LineHandler collect = Collector(output);
  const absl::Time deadline = absl::Now() + timeout;
  while (worker.running() && absl::Now() < deadline) {
    PumpOutput({&worker}, absl::Milliseconds(50), collect);
  }
  PumpOutput({&worker}, absl::Milliseconds(50), collect);
  return !worker.running();
}

// A shard in this process and a scratch directory, for workers that get as far as training.
class WorkerBinaryWithShardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<DionServer>> started =
        DionServer::Start(testing::TestServerOptions());
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
    scratch_ = absl::StrCat(::testing::TempDir(), "/worker_binary_test.XXXXXX");
    ASSERT_NE(mkdtemp(scratch_.data()), nullptr);
  }
  void TearDown() override {
    if (server_ != nullptr) {
      EXPECT_TRUE(server_->Shutdown().ok());
    }
  }
  // Pumps the worker's output into `output` until it has loaded and connected ("training on").
  static bool PumpUntilReady(ChildProcess& worker, std::string* output) {
    const LineHandler collect = Collector(output);
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (!absl::StrContains(*output, " training on ") && worker.running() &&
           absl::Now() < give_up) {
      PumpOutput({&worker}, absl::Milliseconds(50), collect);
    }
    return absl::StrContains(*output, " training on ");
  }

  std::unique_ptr<DionServer> server_;
  std::string scratch_;
};

// With --start_file the worker loads, connects and announces itself, then takes no step until
// the file exists; once it does, it trains to the end.
TEST_F(WorkerBinaryWithShardTest, TrainsOnlyOnceTheStartFileExists) {
  const std::string start_file = scratch_ + "/start";
  absl::StatusOr<std::unique_ptr<ChildProcess>> worker =
      SpawnWorker(server_->port(), scratch_,
                  {"--synthetic_train_samples=512", "--epochs=1", "--batch_size=64",
                   "--progress_interval=1ms", absl::StrCat("--start_file=", start_file)});
  ASSERT_TRUE(worker.ok()) << worker.status();
  std::string output;
  ASSERT_TRUE(PumpUntilReady(**worker, &output)) << output;
  // Long enough for several steps, had it started (the synthetic steps take microseconds).
  const LineHandler collect = Collector(&output);
  const absl::Time waiting = absl::Now() + absl::Milliseconds(700);
  while (absl::Now() < waiting) PumpOutput({worker->get()}, absl::Milliseconds(50), collect);
  EXPECT_TRUE((*worker)->running()) << output;
  EXPECT_FALSE(absl::StrContains(output, "progress worker=")) << output;

  std::ofstream(start_file).close();
  ASSERT_TRUE(WaitForExit(**worker, absl::Seconds(30), &output)) << output;
  const ExitStatus status = (*worker)->TryWait().value();
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << output;
  EXPECT_TRUE(absl::StrContains(output, "final worker=0 epoch=1 steps=8 samples=512")) << output;
}

// SIGTERM while waiting for the start file ends the worker at once with status 0: no step was
// taken, so there is nothing to flush and no final line.
TEST_F(WorkerBinaryWithShardTest, SigtermWhileWaitingForTheStartFileExitsAtOnce) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> worker = SpawnWorker(
      server_->port(), scratch_,
      {"--synthetic_train_samples=512", absl::StrCat("--start_file=", scratch_, "/never")});
  ASSERT_TRUE(worker.ok()) << worker.status();
  std::string output;
  ASSERT_TRUE(PumpUntilReady(**worker, &output)) << output;
  (*worker)->Signal(SIGTERM);
  const absl::Time signalled = absl::Now();
  ASSERT_TRUE(WaitForExit(**worker, absl::Seconds(20), &output)) << output;
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(5));
  const ExitStatus status = (*worker)->TryWait().value();
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << output;
  EXPECT_FALSE(absl::StrContains(output, "final worker=")) << output;
}

// The number after `key=` on the line of `text` that starts with `line_start`; -1 if absent.
int64_t FieldOf(const std::string& text, const std::string& line_start, const std::string& key) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, line_start)) continue;
    for (absl::string_view field : absl::StrSplit(line, ' ')) {
      int64_t value;
      if (absl::ConsumePrefix(&field, key + "=") && absl::SimpleAtoi(field, &value)) return value;
    }
  }
  return -1;
}

// SIGTERM in the middle of training: the worker ends its step, pushes what it accumulated and
// every Dion matrix's residual whole, waits for the acknowledgements, says so, and exits 0.
// The shard has then applied every sample the worker trained on: each dense parameter exactly
// those, each Dion matrix those plus at most one for a push that carried only its residual.
TEST_F(WorkerBinaryWithShardTest, SigtermFlushesTheResidualsBeforeExiting) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> worker =
      SpawnWorker(server_->port(), scratch_,
                  {"--synthetic_train_samples=65536", "--epochs=100", "--batch_size=32",
                   "--progress_interval=100ms", "--no_evaluate", "--flush_timeout=10s"});
  ASSERT_TRUE(worker.ok()) << worker.status();
  std::string output;
  ASSERT_TRUE(PumpUntilReady(**worker, &output)) << output;
  const LineHandler collect = Collector(&output);
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (!absl::StrContains(output, "progress worker=") && (*worker)->running() &&
         absl::Now() < give_up) {
    PumpOutput({worker->get()}, absl::Milliseconds(50), collect);
  }
  ASSERT_TRUE(absl::StrContains(output, "progress worker=")) << output;
  (*worker)->Signal(SIGTERM);
  ASSERT_TRUE(WaitForExit(**worker, absl::Seconds(30), &output)) << output;
  const ExitStatus status = (*worker)->TryWait().value();
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << output;
  EXPECT_TRUE(absl::StrContains(output, "flushed before exiting")) << output;
  EXPECT_TRUE(absl::StrContains(output, "nothing accumulated is lost")) << output;
  EXPECT_FALSE(absl::StrContains(output, "the residuals of 0 Dion")) << output;
  const int64_t samples = FieldOf(output, "final worker=0", "samples");
  ASSERT_GT(samples, 0) << output;

  // The acknowledged pushes are applied by the shard's compute pool shortly after.
  std::string last;
  bool all = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!all && absl::Now() < deadline) {
    all = true;
    last.clear();
    const ShardStatus shard = server_->shard().Status();
    ASSERT_FALSE(shard.parameters.empty());
    for (const ShardStatus::Parameter& p : shard.parameters) {
      const int64_t applied = p.status.samples_applied;
      const bool dion = p.status.optimizer == OptimizerKind::kDion;
      all = all && (applied == samples || (dion && applied == samples + 1));
      absl::StrAppend(&last, p.status.parameter, (dion ? " (dion)" : ""), ": ", applied, "; ");
    }
    if (!all) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(all) << "the worker trained on " << samples << " samples; the shard applied "
                   << last << "\n" << output;
}

// A start file that never appears ends the worker with an error naming it, after --start_timeout.
TEST_F(WorkerBinaryWithShardTest, GivesUpWhenTheStartFileNeverAppears) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> worker = SpawnWorker(
      server_->port(), scratch_,
      {"--synthetic_train_samples=512", absl::StrCat("--start_file=", scratch_, "/never"),
       "--start_timeout=300ms"});
  ASSERT_TRUE(worker.ok()) << worker.status();
  std::string output;
  ASSERT_TRUE(WaitForExit(**worker, absl::Seconds(30), &output)) << output;
  const ExitStatus status = (*worker)->TryWait().value();
  EXPECT_TRUE(status.exited && status.code == 1) << status.ToString() << "\n" << output;
  EXPECT_TRUE(absl::StrContains(output, scratch_ + "/never did not appear within")) << output;
  EXPECT_FALSE(absl::StrContains(output, "progress worker=")) << output;
}

}  // namespace
}  // namespace dion
