// `owners` shards in one process, for benchmarks of the shard-to-shard reductions: each a
// ReduceHub and the ShardPeer service on 127.0.0.1:0 (plaintext), with channels to all of
// them. Parts up to 64 MiB.
//
// Thread-safety: built and destroyed on one thread; the hubs, services and channels are
// thread-safe.
#ifndef DION_BENCH_LOOPBACK_PEERS_H_
#define DION_BENCH_LOOPBACK_PEERS_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/metrics.h"
#include "server/peer/grpc_row_reducer.h"
#include "server/peer/peer_channels.h"
#include "server/peer/peer_service.h"
#include "server/peer/reduce_hub.h"

namespace dion {

struct LoopbackPeers {
  static constexpr int64_t kMaxMessage = int64_t{64} << 20;

  explicit LoopbackPeers(int owners) {
    std::vector<std::string> addresses;
    for (int s = 0; s < owners; ++s) {
      metrics.push_back(std::make_unique<ShardMetrics>());
      ReduceHubOptions hub;
      hub.max_part_bytes = kMaxMessage;
      hubs.push_back(std::make_unique<ReduceHub>(hub));
      services.push_back(std::make_unique<ShardPeerService>(hubs.back().get(), nullptr, nullptr,
                                                            metrics.back().get(),
                                                            absl::Seconds(60)));
      grpc::ServerBuilder builder;
      int port = 0;
      builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
      builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxMessage));
      builder.RegisterService(services.back().get());
      servers.push_back(builder.BuildAndStart());
      addresses.push_back(absl::StrCat("127.0.0.1:", port));
    }
    PeerChannelOptions options;
    options.addresses = addresses;
    options.max_message_bytes = kMaxMessage;
    channels = *PeerChannels::Create(options);
    for (int s = 0; s < owners; ++s) {
      channels->channel(s)->WaitForConnected(
          absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    }
  }
  ~LoopbackPeers() {
    for (size_t s = 0; s < servers.size(); ++s) {
      hubs[s]->Shutdown();
      servers[s]->Shutdown();
    }
  }
  std::vector<std::unique_ptr<ShardMetrics>> metrics;
  std::vector<std::unique_ptr<ReduceHub>> hubs;
  std::vector<std::unique_ptr<ShardPeerService>> services;
  std::vector<std::unique_ptr<grpc::Server>> servers;
  std::unique_ptr<PeerChannels> channels;

  // What owner `shard`'s reducers need.
  PeerEnv Env(int shard, absl::Duration timeout) const {
    return PeerEnv{hubs[static_cast<size_t>(shard)].get(), channels.get(), timeout, nullptr};
  }

  // Owner `owner`'s reducer of step `step` of parameter `name`, the owners being every shard
  // here in index order (as a split over all of them).
  std::unique_ptr<RowReducer> Reducer(const std::string& name, int64_t step, int owner,
                                      absl::Duration timeout) const {
    std::vector<int> shards(hubs.size());
    for (size_t k = 0; k < shards.size(); ++k) shards[k] = static_cast<int>(k);
    return std::make_unique<GrpcRowReducer>(name, step, shards, owner, Env(owner, timeout));
  }
};

}  // namespace dion

#endif  // DION_BENCH_LOOPBACK_PEERS_H_
