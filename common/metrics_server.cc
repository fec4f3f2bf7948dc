#include "common/metrics_server.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace dion {
namespace {

// Where to connect to reach a server listening on `listen` ("host:port", "[v6]:port"): the
// wildcard addresses are reached through loopback.
std::string ConnectHost(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty() || host == "0.0.0.0") return "127.0.0.1";
  if (host == "::") return "::1";
  return host;
}

// Opens and closes connections to host:port every few milliseconds until `done`.
void PokeUntilDone(const std::string& host, int port, const std::atomic<bool>* done) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &addresses) != 0) return;
  while (!done->load()) {
    for (const addrinfo* a = addresses; a != nullptr; a = a->ai_next) {
      const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      (void)connect(fd, a->ai_addr, a->ai_addrlen);  // refused once the listener is closed
      close(fd);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  freeaddrinfo(addresses);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("MetricsServer::Start: registry is null");
  }
  if (listen.empty() || listen.find(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listen address '", listen, "' is not host:port"));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  // civetweb throws CivetException (a std::runtime_error) when it cannot bind; turn it into a
  // Status here, at the library boundary.
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/2);
  } catch (const std::runtime_error& e) {
    // Debian's civetweb 1.15 is built without IPv6 (mg_check_feature(8) == 0).
    const bool ipv6 = listen.front() == '[';
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on '", listen, "': ", e.what(),
        ipv6 ? " (an IPv6 address: the civetweb library may lack IPv6 support; use an IPv4 "
               "address)"
             : " (is the port already in use?)"));
  }
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty() || ports.front() <= 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics server on '", listen, "' reports no listening port"));
  }
  server->port_ = ports.front();
  server->connect_host_ = ConnectHost(listen);
  server->exposer_->RegisterCollectable(registry);
  return server;
}

// civetweb 1.15's accept loop polls its listening socket with a fixed 2 s timeout and only
// looks at the stop flag between polls, so a bare ~Exposer blocks ~2 s (measured: each
// MetricsServer test took 2.0 s longer than its body). A connection wakes the poll, so we keep
// connecting while the exposer stops.
MetricsServer::~MetricsServer() {
  if (exposer_ == nullptr) return;
  std::atomic<bool> done{false};
  std::thread poker(PokeUntilDone, connect_host_, port_, &done);
  exposer_.reset();
  done.store(true);
  poker.join();
}

}  // namespace dion
