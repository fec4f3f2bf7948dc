#include "worker/client/uplink_probe.h"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#ifdef __linux__
#include <linux/tcp.h>  // struct tcp_info with the delivery rate (glibc's is older)
#endif

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace dion {
namespace {

// Splits "host:port" (with the prefixes the header names) into host and port.
bool SplitTarget(absl::string_view target, std::string* host, std::string* port) {
  for (absl::string_view prefix : {"dns:///", "ipv4:", "ipv6:"}) {
    if (absl::StartsWith(target, prefix)) target.remove_prefix(prefix.size());
  }
  const size_t colon = target.rfind(':');
  if (colon == absl::string_view::npos || colon + 1 == target.size()) return false;
  absl::string_view h = target.substr(0, colon);
  if (absl::StartsWith(h, "[") && absl::EndsWith(h, "]")) h = h.substr(1, h.size() - 2);
  if (h.empty()) return false;
  *host = std::string(h);
  *port = std::string(target.substr(colon + 1));
  return true;
}

// An IPv4 address as a v4-mapped IPv6 one (::ffff:a.b.c.d): gRPC's client opens dual-stack
// IPv6 sockets wherever IPv6 is up, so the peer of a connection it made to an IPv4 address
// reads back in that form.
sockaddr_storage Unmapped(const sockaddr_storage& address) {
  if (address.ss_family != AF_INET6) return address;
  const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
  if (!IN6_IS_ADDR_V4MAPPED(&v6.sin6_addr)) return address;
  sockaddr_storage out{};
  auto& v4 = reinterpret_cast<sockaddr_in&>(out);
  v4.sin_family = AF_INET;
  v4.sin_port = v6.sin6_port;
  std::memcpy(&v4.sin_addr, &v6.sin6_addr.s6_addr[12], sizeof(v4.sin_addr));
  return out;
}

bool SameEndpoint(const sockaddr_storage& mapped_a, const sockaddr_storage& mapped_b) {
  const sockaddr_storage a = Unmapped(mapped_a), b = Unmapped(mapped_b);
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    const auto& x = reinterpret_cast<const sockaddr_in&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
    return x.sin6_port == y.sin6_port &&
           std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof(x.sin6_addr)) == 0;
  }
  return false;
}

}  // namespace

absl::Status ReadDeliverySample(int fd, DeliverySample* sample) {
#ifdef __linux__
  tcp_info info;
  std::memset(&info, 0, sizeof(info));
  socklen_t length = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) {
    return absl::UnavailableError(
        absl::StrCat("TCP_INFO of fd ", fd, ": ", std::strerror(errno)));
  }
  // tcpi_delivery_rate (Linux 4.9) ends the fields this reads; an older kernel fills less.
  if (length < offsetof(tcp_info, tcpi_delivery_rate) + sizeof(info.tcpi_delivery_rate)) {
    return absl::UnimplementedError("this kernel's TCP_INFO has no tcpi_delivery_rate");
  }
  sample->bytes_per_second = static_cast<double>(info.tcpi_delivery_rate);
  sample->bytes_acked = info.tcpi_bytes_acked;
  return absl::OkStatus();
#else
  (void)fd;
  (void)sample;
  return absl::UnimplementedError("TCP delivery rates are read on Linux only");
#endif
}

UplinkProbe::UplinkProbe(const std::vector<std::string>& peers) {
  for (const std::string& target : peers) {
    std::string host, port;
    if (!SplitTarget(target, &host, &port)) continue;
    addrinfo hints;
    std::memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) continue;
    for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
      if (a->ai_addrlen > sizeof(sockaddr_storage)) continue;
      Peer peer;
      std::memcpy(&peer.address, a->ai_addr, a->ai_addrlen);
      peer.length = a->ai_addrlen;
      peers_.push_back(peer);
    }
    freeaddrinfo(found);
  }
}

absl::Status UplinkProbe::available() const {
  if (peers_.empty()) return absl::NotFoundError("no shard address resolved");
  MutexLock lock(&mu_);
  if (scanned_ && tracked_.empty()) {
    return absl::NotFoundError("no TCP connection to a shard among this process's sockets");
  }
  return absl::OkStatus();
}

bool UplinkProbe::IsPeer(int fd) const {
  sockaddr_storage address;
  socklen_t length = sizeof(address);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return false;
  for (const Peer& peer : peers_) {
    if (SameEndpoint(address, peer.address)) return true;
  }
  return false;
}

void UplinkProbe::Rescan() {
  scanned_ = true;
  std::vector<Tracked> found;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) {
    tracked_.clear();
    return;
  }
  const int own = dirfd(dir);
  while (dirent* entry = readdir(dir)) {
    int fd;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == own) continue;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) || !IsPeer(fd)) continue;
    DeliverySample sample;
    if (!ReadDeliverySample(fd, &sample).ok()) continue;
    uint64_t acked = sample.bytes_acked;
    for (const Tracked& t : tracked_) {  // a socket already followed keeps its count
      if (t.fd == fd) acked = t.bytes_acked;
    }
    found.push_back({fd, acked});
  }
  closedir(dir);
  tracked_ = std::move(found);
}

std::vector<double> UplinkProbe::Sample(absl::Time now) {
  std::vector<double> rates;
  if (peers_.empty()) return rates;
  MutexLock lock(&mu_);
  if (now - last_scan_ >= kRescanInterval) {
    last_scan_ = now;
    Rescan();
  }
  bool replaced = false;
  for (Tracked& t : tracked_) {
    DeliverySample sample;
    // A descriptor closed and reused since the scan is no longer a shard's connection.
    if (!IsPeer(t.fd) || !ReadDeliverySample(t.fd, &sample).ok()) {
      replaced = true;
      continue;
    }
    if (sample.bytes_acked < t.bytes_acked) replaced = true;  // another connection, same fd
    const bool delivered = sample.bytes_acked > t.bytes_acked;
    t.bytes_acked = sample.bytes_acked;
    if (delivered && sample.bytes_per_second > 0) {
      rates.push_back(sample.bytes_per_second);
    }
  }
  if (replaced) last_scan_ = absl::InfinitePast();  // look again at the next Sample
  return rates;
}

}  // namespace dion
