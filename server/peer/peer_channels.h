// gRPC channels from this shard to every shard of the model, by shard index: how an owner of a
// row-split parameter reaches the shard that leads its reductions (dion-server
// --peer_addresses, docs/server.md, "Peers"). Channels connect lazily, on their first call.
//
// Security: with TLS (`tls.ca_file` set) the peers' certificates must chain to that CA, the
// shard presents `tls.cert_file`/`tls.key_file` (its own certificate, for peers that require
// mTLS) and sends the bearer token of `tls.token_file` with every call; without it, plaintext.
//
// Thread-safety: immutable after Create; safe for concurrent use.
#ifndef DION_SERVER_PEER_PEER_CHANNELS_H_
#define DION_SERVER_PEER_PEER_CHANNELS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tls_config.h"
#include "dion/v1/peer.grpc.pb.h"

namespace dion {

// The addresses of --peer_addresses: empty for an empty flag, else exactly `num_shards`
// comma-separated host:port addresses. InvalidArgument naming the flag otherwise.
absl::StatusOr<std::vector<std::string>> ParsePeerAddresses(absl::string_view flag,
                                                            int num_shards);

struct PeerChannelOptions {
  std::vector<std::string> addresses;   // by shard index
  TlsClientConfig tls;                  // ca_file empty: plaintext (no token then)
  int64_t max_message_bytes = 64 << 20;  // largest sum a peer may answer
};

class PeerChannels {
 public:
  // InvalidArgument for a malformed address or TLS file (common/tls.h), or a token without TLS.
  static absl::StatusOr<std::unique_ptr<PeerChannels>> Create(const PeerChannelOptions& options);

  int size() const { return static_cast<int>(addresses_.size()); }
  // Starts connecting the channel of every shard but `own_shard` (without waiting), so that
  // the first reduction does not pay for the handshakes.
  void Connect(int own_shard) const;
  // REQUIRES: 0 <= shard < size().
  const std::string& address(int shard) const { return addresses_[shard]; }
  // REQUIRES: 0 <= shard < size(). E.g. to connect ahead of the first reduction.
  const std::shared_ptr<grpc::Channel>& channel(int shard) const { return channels_[shard]; }
  // The stub of ShardPeer at `shard`; FailedPrecondition naming the flag when there is none.
  absl::StatusOr<v1::ShardPeer::StubInterface*> Stub(int shard) const;

 private:
  PeerChannels() = default;
  std::vector<std::string> addresses_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::ShardPeer::Stub>> stubs_;
};

}  // namespace dion

#endif  // DION_SERVER_PEER_PEER_CHANNELS_H_
