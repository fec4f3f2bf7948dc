#include "worker/local/shard_peers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/local/local_run_flags.h"

namespace dion {

absl::StatusOr<std::vector<std::string>> PlanShardAddresses(int shards, int base_port) {
  std::vector<std::string> addresses;
  if (base_port > 0) {
    for (int i = 0; i < shards; ++i) addresses.push_back(absl::StrCat("127.0.0.1:", base_port + i));
    return addresses;
  }
  // All bound at once so the kernel hands out distinct ports; released just before the
  // shards bind them (nothing else on a quiet machine takes them meanwhile).
  std::vector<int> fds;
  absl::Status error;
  for (int i = 0; i < shards && error.ok(); ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      error = absl::UnavailableError(
          absl::StrCat("cannot reserve a loopback port for shard ", i, ": ", std::strerror(errno)));
    } else {
      addresses.push_back(absl::StrCat("127.0.0.1:", ntohs(addr.sin_port)));
    }
    if (fd >= 0) fds.push_back(fd);
  }
  for (int fd : fds) close(fd);
  if (!error.ok()) return error;
  return addresses;
}

std::vector<std::string> PeerFlags(const std::vector<std::string>& addresses,
                                   const LocalSecurity* security) {
  std::vector<std::string> flags = {
      absl::StrCat("--peer_addresses=", absl::StrJoin(addresses, ","))};
  if (security != nullptr) {
    flags.push_back(absl::StrCat("--peer_tls_ca_file=", security->ca_file));
    flags.push_back(absl::StrCat("--peer_token_file=", security->peer_token_file));
  }
  return flags;
}

absl::StatusOr<std::vector<std::vector<std::string>>> ShardCommandLines(
    const LocalRunOptions& options, const std::string& run_dir, const LocalSecurity* security) {
  std::vector<std::string> peers;
  if (options.shards > 1) {
    absl::StatusOr<std::vector<std::string>> planned =
        PlanShardAddresses(options.shards, options.base_port);
    if (!planned.ok()) return planned.status();
    peers = *std::move(planned);
  }
  std::vector<std::vector<std::string>> lines;
  for (int i = 0; i < options.shards; ++i) {
    const std::string checkpoints = absl::StrCat(run_dir, "/shard-", i, "/checkpoints");
    std::error_code error;
    std::filesystem::create_directories(checkpoints, error);
    std::vector<std::string> args = ShardFlags(options, i, checkpoints);
    if (!peers.empty()) {
      for (std::string& arg : args) {
        if (absl::StartsWith(arg, "--listen=")) arg = "--listen=" + peers[i];
      }
      for (std::string& flag : PeerFlags(peers, security)) args.push_back(std::move(flag));
    }
    lines.push_back(std::move(args));
  }
  return lines;
}

}  // namespace dion
