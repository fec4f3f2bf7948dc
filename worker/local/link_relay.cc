#include "worker/local/link_relay.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <list>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace dion {
namespace {

int64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t{t.tv_sec} * 1000000000 + t.tv_nsec;
}

absl::StatusOr<sockaddr_in> ParseAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  sockaddr_in out{};
  out.sin_family = AF_INET;
  int port = -1;
  if (colon == std::string::npos ||
      inet_pton(AF_INET, address.substr(0, colon).c_str(), &out.sin_addr) != 1 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("relay address '", address, "': expected IPv4 a.b.c.d:port"));
  }
  out.sin_port = htons(static_cast<uint16_t>(port));
  return out;
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// A chunk read from one side, to be written to the other at `due` (monotonic ns).
struct Chunk {
  int64_t due;
  std::string data;
  size_t written = 0;
};

// One direction of a connection: bytes read from `in`, waiting to be written to `out`.
struct Direction {
  int in;
  int out;
  std::atomic<int64_t>* counter;
  std::deque<Chunk> queue;
  int64_t queued = 0;
  bool in_closed = false;   // read end of file from `in`
  bool out_closed = false;  // `out` shut down for writing
};

struct Connection {
  Direction up;    // accepted side -> target
  Direction down;  // target -> accepted side
  bool failed = false;
  bool done() const { return failed || (up.out_closed && down.out_closed); }
};

// Reads what `d.in` has into the queue, due `delay_ns` from now. False on an error.
bool ReadSide(Direction& d, int64_t delay_ns) {
  char buffer[1 << 16];
  const ssize_t n = read(d.in, buffer, sizeof(buffer));
  if (n == 0) {
    d.in_closed = true;
  } else if (n > 0) {
    d.queue.push_back({NowNs() + delay_ns, std::string(buffer, static_cast<size_t>(n))});
    d.queued += n;
    d.counter->fetch_add(n);
  } else if (errno != EAGAIN && errno != EINTR) {
    return false;
  }
  return true;
}

// Writes the chunks that are due to `d.out`; shuts it down after the last one once `d.in`
// has closed. False on an error.
bool WriteSide(Direction& d, int64_t now) {
  while (!d.queue.empty() && d.queue.front().due <= now) {
    Chunk& c = d.queue.front();
    const ssize_t n =
        send(d.out, c.data.data() + c.written, c.data.size() - c.written, MSG_NOSIGNAL);
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    c.written += static_cast<size_t>(n);
    d.queued -= n;
    if (c.written < c.data.size()) return true;
    d.queue.pop_front();
  }
  if (d.queue.empty() && d.in_closed && !d.out_closed) {
    shutdown(d.out, SHUT_WR);
    d.out_closed = true;
  }
  return true;
}

bool Due(const Direction& d, int64_t now) { return !d.queue.empty() && d.queue.front().due <= now; }

}  // namespace

LinkRelay::LinkRelay(absl::Duration delay, int64_t max_queued, int links)
    : delay_ns_(absl::ToInt64Nanoseconds(delay)),
      max_queued_(max_queued),
      counters_(new std::atomic<int64_t>[2 * links]) {
  for (int i = 0; i < 2 * links; ++i) counters_[i] = 0;
}

absl::StatusOr<std::unique_ptr<LinkRelay>> LinkRelay::Start(const std::vector<Route>& routes,
                                                            int links, absl::Duration delay,
                                                            int64_t max_queued) {
  std::unique_ptr<LinkRelay> relay(new LinkRelay(delay, max_queued, links));
  for (const Route& route : routes) {
    if (route.link < 0 || route.link >= links) {
      return absl::InvalidArgumentError(absl::StrCat("relay route link ", route.link,
                                                     ": expected [0, ", links, ")"));
    }
    absl::StatusOr<sockaddr_in> address = ParseAddress(route.listen);
    if (!address.ok()) return address.status();
    if (absl::StatusOr<sockaddr_in> t = ParseAddress(route.target); !t.ok()) return t.status();
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    socklen_t size = sizeof(*address);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&*address), sizeof(*address)) != 0 ||
        listen(fd, 64) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&*address), &size) != 0) {
      const int error = errno;
      if (fd >= 0) close(fd);
      return absl::UnavailableError(
          absl::StrCat("relay: cannot listen on ", route.listen, ": ", std::strerror(error)));
    }
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &address->sin_addr, ip, sizeof(ip));
    relay->bound_.push_back(absl::StrCat(ip, ":", ntohs(address->sin_port)));
    relay->listeners_.push_back({fd, route.target, route.link});
  }
  if (pipe2(relay->wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    return absl::UnavailableError(absl::StrCat("relay: pipe2: ", std::strerror(errno)));
  }
  relay->thread_ = std::thread([r = relay.get()] { r->Loop(); });
  return relay;
}

void LinkRelay::Note(const std::string& what) {
  absl::MutexLock lock(&mutex_);
  ++resets_;
  last_reset_ = what;
}

std::string LinkRelay::Resets() const {
  absl::MutexLock lock(&mutex_);
  return resets_ == 0 ? "" : absl::StrCat(resets_, " (last: ", last_reset_, ")");
}

LinkRelay::~LinkRelay() {
  if (thread_.joinable()) {
    const char stop = 1;
    (void)!write(wake_[1], &stop, 1);
    thread_.join();
  }
  for (const Listener& l : listeners_) close(l.fd);
  for (int fd : wake_) {
    if (fd >= 0) close(fd);
  }
}

// Accepts a connection on `l` and connects it to the listener's target; nullopt when either
// fails (the accepted side is then closed: its peer sees the connection end).
std::optional<std::pair<int, int>> LinkRelay::Accept(const Listener& l) {
  const int a = accept4(l.fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (a < 0) return std::nullopt;
  const sockaddr_in target = *ParseAddress(l.target);
  // Non-blocking: the thread never waits on one connection. Until the connect completes,
  // writes to b wait (EAGAIN) and are retried; a failed connect shows up as an error there.
  const int b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (b < 0 || (connect(b, reinterpret_cast<const sockaddr*>(&target), sizeof(target)) != 0 &&
                errno != EINPROGRESS)) {
    Note(absl::StrCat("cannot connect to ", l.target, ": ", std::strerror(errno)));
    close(a);
    if (b >= 0) close(b);
    return std::nullopt;
  }
  const int one = 1;
  for (int fd : {a, b}) {
    SetNonBlocking(fd);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  return std::pair{a, b};
}

void LinkRelay::Loop() {
  std::list<Connection> connections;
  for (;;) {
    const int64_t now = NowNs();
    std::vector<pollfd> fds = {{wake_[0], POLLIN, 0}};
    for (const Listener& l : listeners_) fds.push_back({l.fd, POLLIN, 0});
    int64_t next_due = now + 100000000;  // at least every 100 ms
    for (Connection& c : connections) {
      for (Direction* d : {&c.up, &c.down}) {
        const bool can_read = d->queued < max_queued_;
        fds.push_back({d->in_closed ? -1 : d->in, static_cast<short>(can_read ? POLLIN : 0), 0});
        fds.push_back({d->out_closed ? -1 : d->out, static_cast<short>(Due(*d, now) ? POLLOUT : 0), 0});
        // A chunk already due waits for POLLOUT, not for a timeout (no spinning on a full
        // socket buffer behind a slow link).
        if (!d->queue.empty() && d->queue.front().due > now) {
          next_due = std::min(next_due, d->queue.front().due);
        }
      }
    }
    const int64_t wait = std::max<int64_t>(0, next_due - now);
    const timespec timeout = {static_cast<time_t>(wait / 1000000000),
                              static_cast<long>(wait % 1000000000)};
    if (ppoll(fds.data(), fds.size(), &timeout, nullptr) < 0 && errno != EINTR) break;
    if (fds[0].revents != 0) break;
    size_t at = 1;
    std::vector<Connection> accepted;
    for (const Listener& l : listeners_) {
      if (!(fds[at++].revents & POLLIN)) continue;
      if (std::optional<std::pair<int, int>> ab = Accept(l)) {
        Connection c;
        c.up = {ab->first, ab->second, &counters_[2 * l.link], {}};
        c.down = {ab->second, ab->first, &counters_[2 * l.link + 1], {}};
        accepted.push_back(std::move(c));
      }
    }
    const int64_t after = NowNs();
    for (auto c = connections.begin(); c != connections.end(); ++c) {
      for (Direction* d : {&c->up, &c->down}) {
        const short in = fds[at++].revents;
        const short out = fds[at++].revents;
        if (in != 0 && !d->in_closed && !ReadSide(*d, delay_ns_)) {
          Note(absl::StrCat("read: ", std::strerror(errno)));
          c->failed = true;
        }
        if (out & (POLLERR | POLLHUP)) {
          Note(absl::StrCat(d == &c->up ? "target" : "link side", " gone with ", d->queued,
                            " bytes queued (poll ", out, "; up ", c->up.in_closed ? "closed" : "open",
                            ", down ", c->down.in_closed ? "closed" : "open", ")"));
          c->failed = true;
        }
        if (!c->failed && !WriteSide(*d, after)) {
          Note(absl::StrCat("write: ", std::strerror(errno)));
          c->failed = true;
        }
      }
    }
    connections.insert(connections.end(), accepted.begin(), accepted.end());
    for (auto c = connections.begin(); c != connections.end();) {
      if (!c->done()) {
        ++c;
        continue;
      }
      close(c->up.in);
      close(c->up.out);
      c = connections.erase(c);
    }
  }
  for (Connection& c : connections) {
    close(c.up.in);
    close(c.up.out);
  }
}

}  // namespace dion
