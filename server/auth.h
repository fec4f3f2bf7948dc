// Bearer tokens with roles (dion-server --auth_tokens_file): who may call what.
//
// The tokens file has one token a line:
//   `<token> <role> [<name>] [workers=<id>,<id>,...] [expires=<RFC 3339 time>]`;
// `#` starts a comment, blank lines are skipped. A token past its `expires` time is
// UNAUTHENTICATED, as an unknown one. Roles:
//   worker  RegisterModel of the table already registered, GetLayout, Push, Subscribe, Pull of
//           values, Status. With `workers=` it may register and push only as those worker ids.
//   reader  GetLayout, Pull of values, Status.
//   admin   everything: registering a new table, Pull with optimizer state, Checkpoint.
//   peer    ShardPeer.Reduce only (the shards' own service, server/peer/): what one shard
//           presents to another (--peer_token_file); it may call nothing of ParameterServer.
// Clients send `authorization: Bearer <token>` metadata. A call without a token or with an
// unknown one is UNAUTHENTICATED; a known token whose role may not make the call is
// PERMISSION_DENIED. Tokens are compared in constant time (in the token's length) and never
// logged; errors name the token's `name` (or its line) instead.
//
// The file is re-read when its modification time, size or inode changes (checked at most once
// per reload interval, on the calls themselves): an edit, or Kubernetes swapping a mounted
// Secret, takes effect without a restart. A file that became invalid keeps the last good table
// and is reported once (stderr and `reload_errors`).
//
// Thread-safety: TokenAuthenticator is safe for concurrent use.
#ifndef DION_SERVER_AUTH_H_
#define DION_SERVER_AUTH_H_

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/file_stamp.h"
#include "common/mutex.h"

namespace dion {

enum class Role { kWorker, kReader, kAdmin, kPeer };

absl::string_view RoleName(Role role);

struct Principal {
  Role role = Role::kReader;
  std::string name;                     // for messages; "line N" when the file gives none
  std::vector<std::string> worker_ids;  // empty: any worker id (role worker or admin)
  absl::Time expires = absl::InfiniteFuture();

  // Whether this principal may act as `worker_id` (register it, push as it).
  bool MayActAs(absl::string_view worker_id) const;
};

struct TokenEntry {
  std::string token;
  Principal principal;
};

// Parses a tokens file's text. InvalidArgument naming the line for an unknown role, a
// duplicate token, a token shorter than 16 characters, or a malformed `workers=`.
absl::StatusOr<std::vector<TokenEntry>> ParseTokens(absl::string_view text,
                                                    absl::string_view file);

class TokenAuthenticator {
 public:
  // Reads and parses `path`; errors as ParseTokens, or the file cannot be read.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> Create(
      std::string path, absl::Duration reload_interval = absl::Seconds(1));

  // The principal of the call's bearer token. UNAUTHENTICATED (saying what is missing) for a
  // call without `authorization: Bearer ...` metadata or with an unknown token.
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContext& context);
  absl::StatusOr<Principal> AuthenticateToken(absl::string_view token);

  int64_t reloads() const { return reloads_.load(); }
  int64_t reload_errors() const { return reload_errors_.load(); }

 private:
  TokenAuthenticator(std::string path, absl::Duration reload_interval)
      : path_(std::move(path)), reload_interval_(reload_interval) {}
  // Re-reads the file when it changed and the interval has passed.
  void MaybeReload() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Load(FileStamp* stamp, std::vector<TokenEntry>* entries) const;

  const std::string path_;
  const absl::Duration reload_interval_;
  Mutex mu_;
  absl::Time checked_ ABSL_GUARDED_BY(mu_);
  FileStamp stamp_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const std::vector<TokenEntry>> entries_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> reloads_{0};
  std::atomic<int64_t> reload_errors_{0};
};

class ShardMetrics;

// Authorization of one call of a service, shared by the shard's services: the caller's
// principal when its role is one of `allowed` (without tokens, every caller is an admin);
// UNAUTHENTICATED or PERMISSION_DENIED naming `method` otherwise, counted in `metrics` (which
// may be null).
grpc::Status AuthorizeCall(TokenAuthenticator* tokens, ShardMetrics* metrics,
                           const grpc::ServerContext& context, absl::string_view method,
                           std::initializer_list<Role> allowed, Principal* principal);

}  // namespace dion

#endif  // DION_SERVER_AUTH_H_
