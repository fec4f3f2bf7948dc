#include "common/tls.h"

#include <atomic>
#include <map>
#include <utility>

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_stamp.h"
#include "common/mutex.h"

namespace dion {
namespace {

// The file of `flag` holds PEM of `kind` ("CERTIFICATE", or "PRIVATE KEY" for any key type).
absl::Status CheckPem(const std::string& flag, const std::string& path, absl::string_view kind) {
  absl::StatusOr<std::string> text = ReadWholeFile(flag, path);
  if (!text.ok()) return text.status();
  const bool found = kind == "CERTIFICATE"
                         ? absl::StrContains(*text, "-----BEGIN CERTIFICATE-----")
                         : absl::StrContains(*text, "-----BEGIN") &&
                               absl::StrContains(*text, "PRIVATE KEY-----");
  if (!found) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", path, "' holds no PEM ", kind, " (expected a '-----BEGIN ",
                     kind == "CERTIFICATE" ? "CERTIFICATE" : "... PRIVATE KEY", "-----' block)"));
  }
  return absl::OkStatus();
}

absl::Status CheckPair(const std::string& cert_flag, const std::string& cert,
                       const std::string& key_flag, const std::string& key) {
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_flag, " and ", key_flag, " go together: set both or neither"));
  }
  if (cert.empty()) return absl::OkStatus();
  if (absl::Status s = CheckPem(cert_flag, cert, "CERTIFICATE"); !s.ok()) return s;
  return CheckPem(key_flag, key, "PRIVATE KEY");
}

unsigned int RefreshSeconds(absl::Duration interval) {
  const int64_t s = absl::ToInt64Seconds(interval);
  return s < 1 ? 1u : static_cast<unsigned int>(s);
}

// Sends the token of a file, re-read when the file's modification time or size changes
// (checked at most once a second). A file that became unreadable keeps the last token.
class TokenFilePlugin final : public grpc::MetadataCredentialsPlugin {
 public:
  TokenFilePlugin(std::string path, std::string token) : path_(std::move(path)) {
    MutexLock lock(&mu_);
    stamp_ = StampOf(path_);
    header_ = absl::StrCat("Bearer ", token);
    published_.store(true, std::memory_order_release);
  }
  // gRPC may destroy the plugin on another of its threads: the same pairing, and the lock
  // orders the destruction after the last GetMetadata.
  ~TokenFilePlugin() override {
    (void)published_.load(std::memory_order_acquire);
    MutexLock lock(&mu_);
  }
  bool IsBlocking() const override { return false; }
  const char* GetType() const override { return "dion-token-file"; }

  grpc::Status GetMetadata(grpc::string_ref, grpc::string_ref, const grpc::AuthContext&,
                           std::multimap<grpc::string, grpc::string>* metadata) override {
    // gRPC hands the plugin to its own threads through code ThreadSanitizer cannot see; this
    // acquire pairs with the constructor's release, so the construction visibly happens first.
    (void)published_.load(std::memory_order_acquire);
    MutexLock lock(&mu_);
    MaybeReloadLocked();
    metadata->emplace("authorization", header_);
    return grpc::Status::OK;
  }

 private:
  void MaybeReloadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = absl::Now();
    if (now - checked_ < absl::Seconds(1)) return;
    checked_ = now;
    const FileStamp stamp = StampOf(path_);
    if (stamp == stamp_) return;
    absl::StatusOr<std::string> token = ReadTokenFile(path_);
    if (!token.ok()) return;  // mid-rotation: keep the last good token, try again later
    stamp_ = stamp;
    header_ = absl::StrCat("Bearer ", *token);
  }

  const std::string path_;
  std::atomic<bool> published_{false};
  Mutex mu_;
  FileStamp stamp_ ABSL_GUARDED_BY(mu_);
  absl::Time checked_ ABSL_GUARDED_BY(mu_) = absl::Now();
  std::string header_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadWholeFile("token_file", path);
  if (!text.ok()) return text.status();
  std::string token(absl::StripAsciiWhitespace(text->substr(0, text->find('\n'))));
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_file: '", path, "' is empty (expected the token on its first line)"));
  }
  for (unsigned char c : token) {
    if (c <= ' ' || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token_file: the token in '", path, "' contains whitespace or a control character"));
    }
  }
  return token;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsServerConfig& config) {
  if (config.cert_file.empty() && config.key_file.empty()) {
    if (!config.client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "tls_client_ca_file needs TLS: set tls_cert_file and tls_key_file too");
    }
    return grpc::InsecureServerCredentials();
  }
  if (absl::Status s = CheckPair("tls_cert_file", config.cert_file, "tls_key_file",
                                 config.key_file);
      !s.ok()) {
    return s;
  }
  if (!config.client_ca_file.empty()) {
    if (absl::Status s = CheckPem("tls_client_ca_file", config.client_ca_file, "CERTIFICATE");
        !s.ok()) {
      return s;
    }
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      config.key_file, config.cert_file, config.client_ca_file,
      RefreshSeconds(config.reload_interval));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!config.client_ca_file.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsClientConfig& config) {
  if (config.ca_file.empty()) {
    if (!config.token_file.empty() || !config.cert_file.empty() || !config.key_file.empty()) {
      return absl::InvalidArgumentError(
          "tls_ca_file is required with token_file, tls_cert_file or tls_key_file: tokens and "
          "client certificates are only sent over TLS");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (absl::Status s = CheckPem("tls_ca_file", config.ca_file, "CERTIFICATE"); !s.ok()) return s;
  if (absl::Status s = CheckPair("tls_cert_file", config.cert_file, "tls_key_file",
                                 config.key_file);
      !s.ok()) {
    return s;
  }
  // Read once, at start: gRPC's classic SSL credentials (a file watcher on the client side
  // showed handshakes that timed out after a reconnect under load, gRPC 1.51).
  grpc::SslCredentialsOptions options;
  absl::StatusOr<std::string> ca = ReadWholeFile("tls_ca_file", config.ca_file);
  if (!ca.ok()) return ca.status();
  options.pem_root_certs = *ca;
  if (!config.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadWholeFile("tls_cert_file", config.cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadWholeFile("tls_key_file", config.key_file);
    if (!key.ok()) return key.status();
    options.pem_cert_chain = *cert;
    options.pem_private_key = *key;
  }
  std::shared_ptr<grpc::ChannelCredentials> channel = grpc::SslCredentials(options);
  if (config.token_file.empty()) return channel;
  absl::StatusOr<std::string> token = ReadTokenFile(config.token_file);
  if (!token.ok()) return token.status();
  std::shared_ptr<grpc::CallCredentials> call = grpc::MetadataCredentialsFromPlugin(
      std::make_unique<TokenFilePlugin>(config.token_file, *token));
  return grpc::CompositeChannelCredentials(channel, call);
}

void AddTlsChannelArguments(const TlsClientConfig& config, grpc::ChannelArguments* args) {
  if (!config.ca_file.empty() && !config.server_name.empty()) {
    args->SetSslTargetNameOverride(config.server_name);
  }
}

}  // namespace dion
