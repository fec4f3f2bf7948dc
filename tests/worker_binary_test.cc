// The dion-worker binary (DION_WORKER_BINARY) as a process: how it answers a stop request
// before it has reached its shards.
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "worker/process.h"

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

// A worker still trying to reach an unreachable shard (give_up_after is 5 minutes) ends within
// seconds of SIGTERM, with exit status 0: nothing had been computed or sent yet.
TEST(WorkerBinaryTest, SigtermWhileWaitingForAnUnreachableShardExitsAtOnce) {
  RefusingPort refusing;
  ASSERT_GT(refusing.port, 0);
  std::string scratch = absl::StrCat(::testing::TempDir(), "/worker_binary_test.XXXXXX");
  ASSERT_NE(mkdtemp(scratch.data()), nullptr);
  ChildSpec spec{"worker",
                 DION_WORKER_BINARY,
                 {absl::StrCat("--shards=127.0.0.1:", refusing.port), "--dataset=synthetic",
                  "--synthetic_train_samples=512", "--synthetic_test_samples=128",
                  "--give_up_after=5m"},
                 scratch + "/worker.log",
                 20};
  absl::StatusOr<std::unique_ptr<ChildProcess>> worker = ChildProcess::Spawn(spec);
  ASSERT_TRUE(worker.ok()) << worker.status();
  std::string output;
  const LineHandler collect = [&](ChildProcess&, const std::string& line) {
    absl::StrAppend(&output, line, "\n");
  };
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

}  // namespace
}  // namespace dion
