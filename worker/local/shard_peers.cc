#include "worker/local/shard_peers.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/loopback_ports.h"
#include "worker/local/local_run_flags.h"

namespace dion {

absl::StatusOr<std::vector<std::string>> PlanShardAddresses(int shards, int base_port) {
  std::vector<std::string> addresses;
  if (base_port > 0) {
    for (int i = 0; i < shards; ++i) addresses.push_back(absl::StrCat("127.0.0.1:", base_port + i));
    return addresses;
  }
  absl::StatusOr<std::vector<int>> ports = ReserveLoopbackPorts(shards);
  if (!ports.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot plan the shards' addresses: ", ports.status().message()));
  }
  for (int port : *ports) addresses.push_back(absl::StrCat("127.0.0.1:", port));
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
