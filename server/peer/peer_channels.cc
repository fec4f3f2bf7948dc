#include "server/peer/peer_channels.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/tls.h"

namespace dion {

absl::StatusOr<std::vector<std::string>> ParsePeerAddresses(absl::string_view flag,
                                                            int num_shards) {
  std::vector<std::string> addresses;
  if (flag.empty()) return addresses;
  for (absl::string_view address : absl::StrSplit(flag, ',')) {
    const size_t colon = address.rfind(':');
    int port = 0;
    if (colon == absl::string_view::npos || colon == 0 ||
        !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 1 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--peer_addresses: each address must be host:port with a port in [1, 65535] (e.g. "
          "dion-ps-1.dion-ps:50051), got '", address, "' (entry ", addresses.size(), ")"));
    }
    addresses.emplace_back(address);
  }
  if (static_cast<int>(addresses.size()) != num_shards) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--peer_addresses lists ", addresses.size(), " addresses; expected one per shard, ",
        num_shards, " (--num_shards), in shard index order"));
  }
  return addresses;
}

absl::StatusOr<std::unique_ptr<PeerChannels>> PeerChannels::Create(
    const PeerChannelOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(options.tls);
  if (!credentials.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer channels: ", credentials.status().message()));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  // A restarted peer is seen again within a second, not after gRPC's default backoff (120 s).
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  AddTlsChannelArguments(options.tls, &args);
  std::unique_ptr<PeerChannels> channels(new PeerChannels());
  for (const std::string& address : options.addresses) {
    channels->addresses_.push_back(address);
    channels->channels_.push_back(grpc::CreateCustomChannel(address, *credentials, args));
    channels->stubs_.push_back(v1::ShardPeer::NewStub(channels->channels_.back()));
  }
  return channels;
}

void PeerChannels::Connect(int own_shard) const {
  for (int shard = 0; shard < size(); ++shard) {
    if (shard != own_shard) channels_[shard]->GetState(/*try_to_connect=*/true);
  }
}

absl::StatusOr<v1::ShardPeer::StubInterface*> PeerChannels::Stub(int shard) const {
  if (shard < 0 || shard >= size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no peer address for shard ", shard, ": --peer_addresses lists ", size(),
        " shards (it must list every shard to split parameters over them)"));
  }
  return stubs_[shard].get();
}

}  // namespace dion
