#include "server/dion_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/metrics.h"

namespace dion {
namespace {

// "host:port" with a non-empty host and a port in [0, 65535] ("[::1]:0" included).
absl::Status CheckAddress(absl::string_view what, const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must be host:port with a port in [0, 65535] (e.g. 127.0.0.1:50051), got '",
        address, "'"));
  }
  return absl::OkStatus();
}

// The peers' addresses, one per shard, and what their calls need (TLS trust, a token).
absl::Status ValidatePeerOptions(const ServerOptions& options) {
  const PeerOptions& peer = options.peer;
  if (peer.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("peer_timeout must be positive, got ",
                                                   absl::FormatDuration(peer.timeout)));
  }
  if (peer.max_pending < 1) {
    return absl::InvalidArgumentError("peer max_pending must be >= 1");
  }
  if (peer.addresses.empty()) return absl::OkStatus();
  if (static_cast<int>(peer.addresses.size()) != options.shard.store.num_shards) {
    return absl::InvalidArgumentError(absl::StrCat(
        "peer_addresses lists ", peer.addresses.size(), " addresses; expected one per shard (",
        options.shard.store.num_shards, ", num_shards)"));
  }
  if (!options.tls.cert_file.empty() && peer.tls_ca_file.empty() &&
      options.tls.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "peer_addresses on a TLS shard needs peer_tls_ca_file (the CA of the shards' "
        "certificates) or tls_client_ca_file to verify the peers");
  }
  if (!peer.token_file.empty() && options.tls.cert_file.empty()) {
    return absl::InvalidArgumentError(
        "peer_token_file needs TLS (tls_cert_file): tokens are only sent over TLS");
  }
  if (!options.auth_tokens_file.empty() && peer.token_file.empty()) {
    return absl::InvalidArgumentError(
        "peer_addresses on a shard with auth_tokens_file needs peer_token_file (a token of "
        "role peer listed in the peers' tokens files)");
  }
  return absl::OkStatus();
}

// The channels to the peers, with the shard's own TLS settings (docs/server.md, "Peers").
absl::StatusOr<std::unique_ptr<PeerChannels>> MakePeerChannels(const ServerOptions& options) {
  PeerChannelOptions channels;
  channels.addresses = options.peer.addresses;
  channels.max_message_bytes = options.max_message_bytes;
  if (!options.tls.cert_file.empty()) {
    channels.tls.ca_file = options.peer.tls_ca_file.empty() ? options.tls.client_ca_file
                                                            : options.peer.tls_ca_file;
    channels.tls.cert_file = options.tls.cert_file;
    channels.tls.key_file = options.tls.key_file;
    channels.tls.token_file = options.peer.token_file;
    channels.tls.server_name = options.peer.tls_server_name;
  }
  return PeerChannels::Create(channels);
}

}  // namespace

absl::Status ValidateServerOptions(const ServerOptions& options) {
  if (absl::Status s = CheckAddress("listen", options.listen); !s.ok()) return s;
  if (!options.metrics_listen.empty()) {
    if (absl::Status s = CheckAddress("metrics_listen", options.metrics_listen); !s.ok()) {
      return s;
    }
  }
  if (options.max_message_bytes < 1024 || options.max_message_bytes > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_message_bytes must be in [1024, 2^31 - 1], got ", options.max_message_bytes));
  }
  if (options.shutdown_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("shutdown_grace must not be negative");
  }
  if (absl::Status s = ValidatePeerOptions(options); !s.ok()) return s;
  return ValidateShardOptions(options.shard);
}

absl::StatusOr<std::unique_ptr<DionServer>> DionServer::Start(const ServerOptions& options) {
  if (absl::Status s = ValidateServerOptions(options); !s.ok()) return s;
  // Credentials and tokens first: a typo in a file name fails before the shard restores.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  ServiceOptions service = options.service;
  if (!options.auth_tokens_file.empty()) {
    absl::StatusOr<std::unique_ptr<TokenAuthenticator>> tokens =
        TokenAuthenticator::Create(options.auth_tokens_file, options.auth_reload_interval);
    if (!tokens.ok()) return tokens.status();
    service.tokens = *std::move(tokens);
  }
  std::unique_ptr<DionServer> server(new DionServer(options));
  server->metrics_ = std::make_unique<ShardMetrics>();
  if (absl::Status s = server->StartPeers(); !s.ok()) return s;
  ShardOptions shard_options = options.shard;
  shard_options.split_peers = server->split_peers_.get();
  absl::StatusOr<std::unique_ptr<Shard>> shard =
      Shard::Create(shard_options, server->metrics_.get());
  if (!shard.ok()) return shard.status();
  server->shard_ = *std::move(shard);
  server->service_ = std::make_unique<ParameterServerService>(
      server->shard_.get(), server->metrics_.get(), service);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  // Accept the workers' keepalive pings (every 20 s, also without active calls: worker/
  // shard_link.cc); gRPC's default would answer pings more often than every 5 min with GOAWAY.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.RegisterService(server->service_.get());
  server->peer_service_ = std::make_unique<ShardPeerService>(
      server->reduce_hub_.get(), server->shard_.get(), service.tokens, server->metrics_.get(),
      options.peer.timeout);
  builder.RegisterService(server->peer_service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", options.listen, "' (address in use or invalid?)"));
  }
  server->server_->GetHealthCheckService()->SetServingStatus(true);

  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> metrics =
        MetricsServer::Start(options.metrics_listen, server->metrics_->registry());
    if (!metrics.ok()) return metrics.status();
    server->metrics_server_ = *std::move(metrics);
  }
  return server;
}

absl::Status DionServer::StartPeers() {
  ReduceHubOptions hub;
  hub.max_part_bytes = options_.max_message_bytes;
  hub.max_pending = options_.peer.max_pending;
  reduce_hub_ = std::make_unique<ReduceHub>(hub);
  if (!options_.peer.addresses.empty()) {
    absl::StatusOr<std::unique_ptr<PeerChannels>> channels = MakePeerChannels(options_);
    if (!channels.ok()) return channels.status();
    peer_channels_ = *std::move(channels);
    peer_channels_->Connect(options_.shard.store.shard_index);
  }
  peer_env_ = PeerEnv{reduce_hub_.get(), peer_channels_.get(), options_.peer.timeout,
                      metrics_.get(), options_.peer.reduced_fault};
  // Split parameters need every owner reachable: without peer addresses the shard refuses a
  // table that gives it rows of one (Shard::CheckSplitServable).
  if (peer_channels_ != nullptr) split_peers_ = std::make_unique<GrpcSplitPeers>(peer_env_);
  return absl::OkStatus();
}

DionServer::~DionServer() { Shutdown().IgnoreError(); }

std::string DionServer::address() const {
  const size_t colon = options_.listen.rfind(':');
  return absl::StrCat(options_.listen.substr(0, colon), ":", port_);
}

int DionServer::metrics_port() const {
  return metrics_server_ == nullptr ? 0 : metrics_server_->port();
}

absl::Status DionServer::Shutdown() {
  MutexLock lock(&mu_);
  if (shut_down_) return shutdown_status_;
  shut_down_ = true;
  const absl::Time deadline = absl::Now() + options_.shutdown_grace;  // the shard's too
  if (server_ != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    // Split parameters step on all their owners: what was accepted is applied while the
    // peers still answer (each shard serves StepRows and reductions until its drain ends).
    if (split_peers_ != nullptr) shard_->DrainBeforeShutdown(deadline);
    // Reductions waiting for parts end UNAVAILABLE now rather than at their deadlines.
    reduce_hub_->Shutdown();
    // Subscriptions end and pushes are refused first, so the calls below can finish.
    shard_->BeginShutdown();
    server_->Shutdown(absl::ToChronoTime(deadline));
    server_->Wait();
  }
  if (shard_ != nullptr) shutdown_status_ = shard_->Shutdown(deadline);
  metrics_server_.reset();
  return shutdown_status_;
}

}  // namespace dion
