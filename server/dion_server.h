// A shard served over gRPC: the Shard, its ParameterServer service, its ShardPeer service and
// the transport of the reductions of row-split parameters (server/peer/, docs/server.md,
// "Peers"), the gRPC health service (grpc.health.v1) and server reflection, and the
// Prometheus endpoint. Used by the dion-server binary (server/main.cc) and by the integration
// tests, which start it on 127.0.0.1:0.
//
// Shutdown order (docs/server.md, "Shutdown"): health NOT_SERVING, the shard refuses new
// contributions and ends the subscriptions, gRPC stops accepting calls and waits up to
// `shutdown_grace` for running ones, then the shard applies every accepted contribution and
// writes a last checkpoint (with a write-ahead log: by `shutdown_grace` after the start of
// Shutdown, or not at all, the log holding it).
//
// Thread-safety: safe for concurrent use.
#ifndef DION_SERVER_DION_SERVER_H_
#define DION_SERVER_DION_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "common/tls.h"
#include "server/metrics.h"
#include "server/peer/grpc_row_reducer.h"
#include "server/peer/grpc_split_peers.h"
#include "server/peer/peer_channels.h"
#include "server/peer/peer_service.h"
#include "server/peer/reduce_hub.h"
#include "server/service.h"
#include "server/shard.h"

namespace dion {

// The other shards, for the reductions of row-split parameters (docs/server.md, "Peers").
struct PeerOptions {
  std::vector<std::string> addresses;  // every shard's host:port by index; empty: no peers
  // CA the peers' certificates chain to, when the shard serves TLS; empty: tls.client_ca_file.
  std::string tls_ca_file;
  // Name the peers' certificates must carry instead of the host of their address (e.g. the
  // headless Service name when one certificate serves every shard); empty: that host.
  std::string tls_server_name;
  std::string token_file;  // bearer token (role peer) sent to peers; needed with tokens
  absl::Duration timeout = absl::Seconds(5);  // a reduction's deadline
  int max_pending = 64;                       // reductions this shard gathers at once
  // Fault tests only: PeerEnv::reduced_fault (server/peer/grpc_row_reducer.h).
  std::function<absl::Status(const ReduceKey&, absl::string_view tag)> reduced_fault;
};

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";          // gRPC host:port; port 0 picks a free one
  std::string metrics_listen = "127.0.0.1:9091";   // Prometheus host:port; empty: disabled
  int64_t max_message_bytes = 64 << 20;            // largest message a client may send
  absl::Duration shutdown_grace = absl::Seconds(5);  // running calls get this long to finish
  TlsServerConfig tls;           // TLS on the gRPC port (common/tls.h); plaintext when unset
  std::string auth_tokens_file;  // bearer tokens with roles (server/auth.h); empty: none
  absl::Duration auth_reload_interval = absl::Seconds(1);  // how often the file is checked
  ServiceOptions service;        // service.tokens is set by Start from auth_tokens_file
  PeerOptions peer;
  ShardOptions shard;
};

// InvalidArgument naming the option (addresses must be host:port, sizes positive, ...).
absl::Status ValidateServerOptions(const ServerOptions& options);

class DionServer {
 public:
  // Creates the shard (restoring its newest checkpoint), binds and starts serving.
  // Unavailable when an address cannot be bound.
  static absl::StatusOr<std::unique_ptr<DionServer>> Start(const ServerOptions& options);
  ~DionServer();  // Shutdown()
  DionServer(const DionServer&) = delete;
  DionServer& operator=(const DionServer&) = delete;

  // The bound gRPC port and "host:port" to connect to; the metrics port (0 when disabled).
  int port() const { return port_; }
  std::string address() const;
  int metrics_port() const;

  Shard& shard() { return *shard_; }
  ShardMetrics& metrics() { return *metrics_; }
  const ParameterServerService& service() const { return *service_; }
  // What a GrpcRowReducer of this shard needs: its hub, the channels to the other shards (null
  // without --peer_addresses), the timeout and the metrics. Valid while the server lives.
  const PeerEnv& peer_env() const { return peer_env_; }

  // Graceful shutdown (file comment). Idempotent; returns the last checkpoint's status.
  absl::Status Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit DionServer(const ServerOptions& options) : options_(options) {}
  // The reduction hub and the channels to the peers (before the shard, which may use them).
  absl::Status StartPeers();

  const ServerOptions options_;
  std::unique_ptr<ShardMetrics> metrics_;
  std::unique_ptr<ReduceHub> reduce_hub_;
  std::unique_ptr<PeerChannels> peer_channels_;  // null without peer addresses
  PeerEnv peer_env_;
  std::unique_ptr<GrpcSplitPeers> split_peers_;  // null without peer addresses
  std::unique_ptr<Shard> shard_;
  std::unique_ptr<ParameterServerService> service_;
  std::unique_ptr<ShardPeerService> peer_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsServer> metrics_server_;
  int port_ = 0;

  Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status shutdown_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dion

#endif  // DION_SERVER_DION_SERVER_H_
