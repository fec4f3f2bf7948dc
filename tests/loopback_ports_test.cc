// ReserveLoopbackPorts (common/loopback_ports.h): distinct ports, released for their users;
// Unavailable naming the port and the system's error when no socket can be had, with nothing
// left open.
#include "common/loopback_ports.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <set>

#include "absl/strings/match.h"

namespace dion {
namespace {

// Whether a fresh socket can bind 127.0.0.1:`port`.
bool CanBind(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool bound = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  if (fd >= 0) close(fd);
  return bound;
}

// The lowest file descriptor number not in use.
int LowestFreeFd() {
  const int fd = open("/dev/null", O_RDONLY);
  close(fd);
  return fd;
}

TEST(ReserveLoopbackPorts, GivesDistinctPortsThatAreFreeAgain) {
  absl::StatusOr<std::vector<int>> ports = ReserveLoopbackPorts(4);
  ASSERT_TRUE(ports.ok()) << ports.status();
  ASSERT_EQ(ports->size(), 4u);
  EXPECT_EQ(std::set<int>(ports->begin(), ports->end()).size(), 4u);
  for (int port : *ports) {
    EXPECT_GT(port, 0);
    EXPECT_LE(port, 65535);
    EXPECT_TRUE(CanBind(port)) << port;
  }
  EXPECT_TRUE(ReserveLoopbackPorts(0).value().empty());
}

// With the descriptor limit at the lowest free number (no socket at all) and one above it
// (the first socket, not the second): Unavailable naming the port and the system's error,
// and the sockets already made are closed.
TEST(ReserveLoopbackPorts, FailsWithUnavailableAndLeavesNothingOpen) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  const int free_fd = LowestFreeFd();
  for (int allowed : {0, 1}) {
    rlimit low = saved;
    low.rlim_cur = static_cast<rlim_t>(free_fd + allowed);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
    const absl::StatusOr<std::vector<int>> ports = ReserveLoopbackPorts(3);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
    ASSERT_FALSE(ports.ok());
    EXPECT_EQ(ports.status().code(), absl::StatusCode::kUnavailable);
    const std::string expected = allowed == 0 ? "cannot reserve loopback port 1 of 3: "
                                              : "cannot reserve loopback port 2 of 3: ";
    EXPECT_TRUE(absl::StartsWith(ports.status().message(), expected)) << ports.status();
    EXPECT_TRUE(absl::StrContains(ports.status().message(), "Too many open files"))
        << ports.status();
    EXPECT_EQ(LowestFreeFd(), free_fd) << "a reserved socket was left open";
  }
}

}  // namespace
}  // namespace dion
