// Transport security of dion-ps's gRPC connections, shared by dion-server, dion-worker and
// `dion`: TLS credentials from PEM files that gRPC re-reads when they change (Kubernetes
// rotates mounted Secrets in place), and the bearer token a client sends with every call.
//
// A shard with TlsServerConfig::cert_file set serves TLS only; with client_ca_file also set it
// requires and verifies a client certificate (mTLS). A client with TlsClientConfig::ca_file set
// connects with TLS and verifies the shard's certificate against that CA, for the host of the
// address or `server_name`. A token is only ever sent over TLS: gRPC refuses to attach call
// credentials to a plaintext channel, so a client given a token but no CA fails at start.
//
// The files are checked when the credentials are made (readable, PEM of the right kind), so a
// typo fails the start with the file's name instead of every handshake later. After that a
// shard's gRPC polls its files every `reload_interval` (a rotation that leaves them invalid
// keeps the last good ones); a client reads its CA and certificate once, at start, and its
// token file again whenever the file changes.
//
// Thread-safety: the functions are thread-safe; the credentials they return may be shared by
// any number of channels or servers.
#ifndef DION_COMMON_TLS_H_
#define DION_COMMON_TLS_H_

#include <memory>
#include <string>

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/status/statusor.h"
#include "common/tls_config.h"

namespace dion {

// Plaintext when config.cert_file is empty. InvalidArgument naming the flag and file when a file
// is missing, unreadable or not PEM of the expected kind, or when only one of cert/key is set.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsServerConfig& config);

// The credentials of a channel to a shard: plaintext when config.ca_file is empty (then
// token_file, cert_file and key_file must be empty too), else TLS, with the token (read again
// whenever the file changes) attached to every call. Errors as MakeServerCredentials.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsClientConfig& config);

// Adds the channel arguments `config` needs (the TLS name override) to `args`.
void AddTlsChannelArguments(const TlsClientConfig& config, grpc::ChannelArguments* args);

// The token in `path`: its first line, surrounding whitespace removed. InvalidArgument when the
// file cannot be read, is empty, or holds whitespace or control characters inside the token.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

}  // namespace dion

#endif  // DION_COMMON_TLS_H_
