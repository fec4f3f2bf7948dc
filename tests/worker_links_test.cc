// The slow links of `dion local --link_rate / --link_delay` (worker/local/worker_links.h,
// worker/local/link_relay.h): the rate parser, the relay's delay on loopback, and, as root, a
// transfer of known size through a shaped link taking the time the rate says (within 15%) in
// both directions, and the delay adding the expected RTT; the uplink probe of the adaptive push
// rank (worker/client/uplink_probe.h) finding a connection on loopback and, as root, reading
// the rate of a shaped link. Without root the shaping tests are reported as skipped (ctest:
// "Skipped"), not passed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/client/push_rank.h"
#include "worker/client/uplink_probe.h"
#include "worker/local/link_relay.h"
#include "worker/local/local_run.h"
#include "worker/local/worker_links.h"

namespace dion {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A TCP listener on 127.0.0.1 with a free port.
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof(a);
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &size) != 0) {
      ADD_FAILURE() << "cannot listen on 127.0.0.1";
    }
    port = ntohs(a.sin_port);
  }
  ~Listener() { close(fd); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }
};

int Connect(const std::string& address) {
  const size_t colon = address.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(colon + 1), &port));
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &a.sin_addr);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ADD_FAILURE() << "cannot connect to " << address;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

void SendAll(int fd, size_t bytes) {
  const std::string chunk(1 << 16, 'x');
  while (bytes > 0) {
    const ssize_t n = send(fd, chunk.data(), std::min(bytes, chunk.size()), MSG_NOSIGNAL);
    ASSERT_GT(n, 0);
    bytes -= static_cast<size_t>(n);
  }
}

void ReceiveAll(int fd, size_t bytes) {
  std::string buffer(1 << 16, '\0');
  while (bytes > 0) {
    const ssize_t n = recv(fd, buffer.data(), std::min(bytes, buffer.size()), 0);
    ASSERT_GT(n, 0) << bytes << " bytes missing";
    bytes -= static_cast<size_t>(n);
  }
}

// Median round trip of `rounds` one-byte ping-pongs over `fd` (the peer echoes).
double MedianRoundTrip(int fd, int rounds) {
  std::vector<double> times;
  for (int i = 0; i < rounds; ++i) {
    const Clock::time_point start = Clock::now();
    char byte = 'p';
    EXPECT_EQ(send(fd, &byte, 1, MSG_NOSIGNAL), 1);
    EXPECT_EQ(recv(fd, &byte, 1, 0), 1);
    times.push_back(Seconds(Clock::now() - start));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void Echo(int listen_fd, int rounds) {
  const int fd = accept(listen_fd, nullptr, nullptr);
  const int one = 1;  // without it Nagle holds an echo behind the peer's delayed ACK (40 ms)
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  char byte;
  for (int i = 0; i < rounds && recv(fd, &byte, 1, 0) == 1; ++i) send(fd, &byte, 1, MSG_NOSIGNAL);
  close(fd);
}

TEST(ParseLinkRateTest, ReadsDecimalUnitsAsTcDoes) {
  EXPECT_EQ(*ParseLinkRate("20mbit"), 20000000);
  EXPECT_EQ(*ParseLinkRate("100Mbit"), 100000000);
  EXPECT_EQ(*ParseLinkRate("1gbit"), 1000000000);
  EXPECT_EQ(*ParseLinkRate("1.5gbit"), 1500000000);
  EXPECT_EQ(*ParseLinkRate("500kbit"), 500000);
  EXPECT_EQ(*ParseLinkRate("64000bit"), 64000);
  EXPECT_EQ(*ParseLinkRate(""), 0);
  EXPECT_EQ(*ParseLinkRate("0"), 0);
  EXPECT_EQ(FormatLinkRate(20000000), "20mbit");
  EXPECT_EQ(FormatLinkRate(1000000000), "1gbit");
}

TEST(ParseLinkRateTest, RefusesBytesUnitsAndRatesOutOfRange) {
  for (const char* bad : {"20mbps", "fast", "-5mbit", "1kbit", "100gbit", "mbit"}) {
    EXPECT_FALSE(ParseLinkRate(bad).ok()) << bad;
  }
  EXPECT_NE(ParseLinkRate("20mbps").status().message().find("20mbit"), std::string::npos);
}

TEST(LinkOptionsTest, DelayAndWorkerCountAreValidated) {
  LocalRunOptions o;
  o.server_binary = "/bin/true";
  o.worker_binary = "/bin/true";
  o.links = {20000000, absl::Milliseconds(10)};
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  o.links.delay = absl::Milliseconds(-1);
  EXPECT_NE(ValidateLocalRunOptions(o).message().find("link_delay"), std::string::npos);
  o.links.delay = absl::Seconds(11);
  EXPECT_NE(ValidateLocalRunOptions(o).message().find("link_delay"), std::string::npos);
  o.links.delay = absl::ZeroDuration();
  o.workers = WorkerLinks::kMaxWorkers + 1;
  EXPECT_NE(ValidateLocalRunOptions(o).message().find("workers"), std::string::npos);
  o.links = {};  // no links: no limit of theirs
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
}

TEST(LinkAddressTest, GivesEachWorkerASlash30In198_18Slash15) {
  EXPECT_EQ(LinkAddress(0, 0, true), "198.18.0.1");
  EXPECT_EQ(LinkAddress(0, 0, false), "198.18.0.2");
  EXPECT_EQ(LinkAddress(3, 2, true), "198.18.3.9");
  EXPECT_EQ(LinkAddress(511, 63, false), "198.19.255.254");
}

TEST(LinkRelayTest, AddsTheDelayInEachDirectionAndCountsBytes) {
  constexpr int kRounds = 9;
  Listener target;
  std::thread echo(Echo, target.fd, kRounds + 1);
  absl::StatusOr<std::unique_ptr<LinkRelay>> relay = LinkRelay::Start(
      {{"127.0.0.1:0", target.address(), 0}}, 1, absl::Milliseconds(15), 1 << 20);
  ASSERT_TRUE(relay.ok()) << relay.status();
  const int fd = Connect((*relay)->listen_address(0));
  MedianRoundTrip(fd, 1);  // the connection to the target is made on the first bytes' way
  const double rtt = MedianRoundTrip(fd, kRounds);
  close(fd);
  echo.join();
  // 2 x 15 ms; loopback and the scheduler add a few ms, up to ~10 ms at load 15 on 2 cores.
  EXPECT_GE(rtt, 0.030);
  EXPECT_LT(rtt, 0.050);
  EXPECT_EQ((*relay)->bytes_to_target(0), kRounds + 1);
  EXPECT_EQ((*relay)->bytes_from_target(0), kRounds + 1);
}

// The probe follows exactly the connections to its peers: bytes sent to the peer give a
// delivery rate, bytes to another listener none; a closed connection is dropped and its
// replacement found.
TEST(UplinkProbeTest, ReadsTheDeliveryRateOfTheConnectionsToItsPeersOnly) {
  Listener shard, other;
  UplinkProbe probe({shard.address(), "ipv4:" + shard.address()});
  absl::Time now = absl::Now();
  EXPECT_TRUE(probe.Sample(now).empty());
  EXPECT_EQ(probe.available().code(), absl::StatusCode::kNotFound);  // no connection yet
  constexpr size_t kSent = 4 << 20;
  // Connects, lets the probe find the connection (a scan counts what was delivered before as
  // old), then sends.
  const auto send_to = [&](const Listener& to, int* client) {
    std::thread receiver([&to] {
      const int fd = accept(to.fd, nullptr, nullptr);
      ReceiveAll(fd, kSent);
      close(fd);
    });
    *client = Connect(to.address());
    now += kRescanInterval;
    EXPECT_TRUE(probe.Sample(now).empty());
    SendAll(*client, kSent);
    receiver.join();
  };
  int to_other = -1;
  send_to(other, &to_other);
  EXPECT_TRUE(probe.Sample(now).empty()) << "a connection to another peer was read";
  int to_shard = -1;
  send_to(shard, &to_shard);
  // The last ACK may still be on its way: the sample appears once the peer acknowledged.
  std::vector<double> rates;
  for (int i = 0; i < 100 && rates.empty(); ++i) {
    rates = probe.Sample(now);
    if (rates.empty()) absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(rates.size(), 1u);
  EXPECT_GT(rates[0], 1e6) << "loopback delivers far more than 1 MB/s";
  EXPECT_TRUE(probe.available().ok()) << probe.available();
  EXPECT_TRUE(probe.Sample(now).empty()) << "nothing new was delivered";
  // Closed and connected again (a reconnect): the new connection is read.
  close(to_shard);
  close(to_other);
  EXPECT_TRUE(probe.Sample(now).empty());
  send_to(shard, &to_shard);
  rates.clear();
  for (int i = 0; i < 100 && rates.empty(); ++i) {
    rates = probe.Sample(now);
    if (rates.empty()) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(rates.size(), 1u);
  close(to_shard);
  // A peer that does not resolve is left out.
  EXPECT_EQ(UplinkProbe({"no-such-host.invalid:1", "no port"}).available().code(),
            absl::StatusCode::kNotFound);
}

// Runs `body` on a thread that entered network namespace `name` (its sockets live there).
void InNamespace(const std::string& name, const std::function<void()>& body) {
  std::thread thread([&] {
    const int ns = open(absl::StrCat("/run/netns/", name).c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(ns, 0) << "no namespace " << name;
    ASSERT_EQ(setns(ns, CLONE_NEWNET), 0);
    close(ns);
    body();
  });
  thread.join();
}

// One link of `spec` to a listener on loopback; skips the test when not root.
std::unique_ptr<WorkerLinks> CreateOrSkip(const LinkSpec& spec, const Listener& target) {
  absl::StatusOr<std::unique_ptr<WorkerLinks>> links =
      WorkerLinks::Create(1, spec, {target.address()});
  if (absl::IsFailedPrecondition(links.status())) return nullptr;
  EXPECT_TRUE(links.ok()) << links.status();
  return links.ok() ? *std::move(links) : nullptr;
}

constexpr int64_t kRate = 20000000;     // 20 Mbit/s
constexpr size_t kBytes = 2500000;      // 1.0 s at kRate
constexpr double kExpected = kBytes * 8.0 / kRate;

TEST(WorkerLinksTest, UploadTakesTheTimeTheRateSays) {
  Listener sink;
  std::unique_ptr<WorkerLinks> links = CreateOrSkip({kRate, absl::ZeroDuration()}, sink);
  if (links == nullptr) GTEST_SKIP() << "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for links";
  double seconds = 0;
  std::thread receiver([&] {
    const int fd = accept(sink.fd, nullptr, nullptr);
    ReceiveAll(fd, kBytes);
    close(fd);
  });
  InNamespace(links->Namespace(0), [&] {
    const int fd = Connect(links->ShardAddresses(0)[0]);
    const Clock::time_point start = Clock::now();
    SendAll(fd, kBytes);
    receiver.join();
    seconds = Seconds(Clock::now() - start);
    close(fd);
  });
  // The wire carries ~4.5% of TCP/IP/Ethernet headers on top of the payload; the bucket's
  // 32 KiB burst passes at once. Both well inside the 15%.
  std::printf("upload: %zu bytes in %.3f s = %.1f Mbit/s of payload, %.3f x the expected time\n",
              kBytes, seconds, kBytes * 8e-6 / seconds, seconds / kExpected);
  EXPECT_NEAR(seconds / kExpected, 1.0, 0.15) << seconds << " s for " << kBytes << " bytes";
  EXPECT_EQ(links->bytes_sent(0), static_cast<int64_t>(kBytes));
}

TEST(WorkerLinksTest, DownloadTakesTheTimeTheRateSays) {
  Listener source;
  std::unique_ptr<WorkerLinks> links = CreateOrSkip({kRate, absl::ZeroDuration()}, source);
  if (links == nullptr) GTEST_SKIP() << "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for links";
  std::thread sender([&] {
    const int fd = accept(source.fd, nullptr, nullptr);
    SendAll(fd, kBytes);
    close(fd);
  });
  double seconds = 0;
  InNamespace(links->Namespace(0), [&] {
    const int fd = Connect(links->ShardAddresses(0)[0]);
    const Clock::time_point start = Clock::now();
    ReceiveAll(fd, kBytes);
    seconds = Seconds(Clock::now() - start);
    close(fd);
  });
  sender.join();
  std::printf("download: %zu bytes in %.3f s = %.1f Mbit/s of payload, %.3f x the expected time\n",
              kBytes, seconds, kBytes * 8e-6 / seconds, seconds / kExpected);
  EXPECT_NEAR(seconds / kExpected, 1.0, 0.15) << seconds << " s for " << kBytes << " bytes";
  EXPECT_EQ(links->bytes_received(0), static_cast<int64_t>(kBytes));
}

// The adaptive push rank's view of a shaped uplink: bursts of push size (100 kB every 60 ms,
// about 2/3 of the link's 20 Mbit/s: the sender is idle between them, as a worker between
// pushes) and a sustained transfer, the probe read every 10 ms and its samples fed to a
// PushRankController, whose rate is the one it would choose from.
TEST(WorkerLinksTest, UplinkProbeReadsTheShapedRate) {
  Listener sink;
  std::unique_ptr<WorkerLinks> links = CreateOrSkip({kRate, absl::ZeroDuration()}, sink);
  if (links == nullptr) GTEST_SKIP() << "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for links";
  constexpr size_t kBurst = 100000;
  constexpr int kBursts = 40;
  const double link_bytes_per_s = kRate / 8.0;
  std::thread receiver([&] {
    const int fd = accept(sink.fd, nullptr, nullptr);
    ReceiveAll(fd, kBurst * kBursts + kBytes);
    close(fd);
  });
  const std::string relay = links->ShardAddresses(0)[0];
  UplinkProbe probe({relay});
  double bursts_rate = 0, sustained_rate = 0;
  InNamespace(links->Namespace(0), [&] {
    const int fd = Connect(relay);
    const auto measure = [&](const std::function<void()>& send) {
      PushRankController controller({}, 1.0);
      std::atomic<bool> done{false};
      std::thread sender([&] {
        send();
        absl::SleepFor(absl::Milliseconds(100));  // the last ACKs
        done = true;
      });
      while (!done) {
        controller.OnDelivery(probe.Sample(absl::Now()), absl::Now());
        absl::SleepFor(absl::Milliseconds(10));
      }
      sender.join();
      return controller.state().rate_bytes_per_s;
    };
    bursts_rate = measure([&] {
      for (int i = 0; i < kBursts; ++i) {
        SendAll(fd, kBurst);
        absl::SleepFor(absl::Milliseconds(60));
      }
    });
    sustained_rate = measure([&] { SendAll(fd, kBytes); });
    receiver.join();
    close(fd);
  });
  std::printf("uplink probe on a %.1f MB/s link: bursts %.2f MB/s (%.3f x), sustained %.2f MB/s "
              "(%.3f x)\n",
              link_bytes_per_s * 1e-6, bursts_rate * 1e-6, bursts_rate / link_bytes_per_s,
              sustained_rate * 1e-6, sustained_rate / link_bytes_per_s);
  // TCP's delivery rate counts payload: 1448 of every 1514 bytes on the wire. Measured: bursts
  // 0.98-0.99 x the link, sustained 0.87-0.96 x (8 runs); the bucket's bursts alone would read
  // 60-120 x, and a rate from acknowledgements anything the far end makes it.
  const double payload_bytes_per_s = link_bytes_per_s * 1448 / 1514;
  EXPECT_NEAR(sustained_rate / payload_bytes_per_s, 1.0, 0.2);
  EXPECT_NEAR(bursts_rate / payload_bytes_per_s, 1.0, 0.2);
}

TEST(WorkerLinksTest, DelayAddsTwiceItToTheRoundTrip) {
  constexpr int kRounds = 9;
  Listener target;
  std::unique_ptr<WorkerLinks> links = CreateOrSkip({kRate, absl::Milliseconds(10)}, target);
  if (links == nullptr) GTEST_SKIP() << "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for links";
  std::thread echo(Echo, target.fd, kRounds + 1);
  double rtt = 0;
  InNamespace(links->Namespace(0), [&] {
    const int fd = Connect(links->ShardAddresses(0)[0]);
    MedianRoundTrip(fd, 1);
    rtt = MedianRoundTrip(fd, kRounds);
    close(fd);
  });
  echo.join();
  std::printf("round trip through a 10 ms link: %.2f ms (median of %d)\n", rtt * 1e3, kRounds);
  EXPECT_GE(rtt, 0.020);
  EXPECT_LT(rtt, 0.040);
}

TEST(WorkerLinksTest, RemovesItsNamespacesWhenDestroyed) {
  Listener target;
  std::unique_ptr<WorkerLinks> links = CreateOrSkip({kRate, absl::ZeroDuration()}, target);
  if (links == nullptr) GTEST_SKIP() << "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for links";
  const std::string path = absl::StrCat("/run/netns/", links->Namespace(0));
  EXPECT_EQ(access(path.c_str(), F_OK), 0);
  links.reset();
  EXPECT_NE(access(path.c_str(), F_OK), 0) << path << " is left";
}

TEST(WorkerLinksTest, RemovesLeftoversOfARunThatDied) {
  if (!CheckLinkPrerequisites().ok()) GTEST_SKIP() << "needs root for links";
  // What a run killed with SIGKILL leaves: a namespace of a slot whose lock nobody holds.
  const std::string leftover = "/run/netns/dion-link-511-w0";
  ASSERT_EQ(std::system("ip netns add dion-link-511-w0"), 0);
  ASSERT_EQ(access(leftover.c_str(), F_OK), 0);
  Listener target;
  std::unique_ptr<WorkerLinks> links = CreateOrSkip({kRate, absl::ZeroDuration()}, target);
  ASSERT_NE(links, nullptr);
  EXPECT_NE(access(leftover.c_str(), F_OK), 0) << leftover << " is left";
}

}  // namespace
}  // namespace dion
