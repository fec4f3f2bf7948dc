#include "server/auth.h"

#include <iostream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/metrics.h"

namespace dion {
namespace {

constexpr size_t kMinTokenLength = 16;

// Equal in a time that depends only on the lengths, not on where the first difference is.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = a.size();
  for (size_t i = 0; i < n; ++i) {
    const unsigned char other = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(a[i]) ^ other;
  }
  return diff == 0;
}

absl::StatusOr<Role> ParseRole(absl::string_view word) {
  if (word == "worker") return Role::kWorker;
  if (word == "reader") return Role::kReader;
  if (word == "admin") return Role::kAdmin;
  if (word == "peer") return Role::kPeer;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown role '", word, "' (expected worker, reader, admin or peer)"));
}

// One line's fields after the token: role [name] [workers=a,b].
absl::StatusOr<Principal> ParsePrincipal(const std::vector<absl::string_view>& fields,
                                         int line) {
  absl::StatusOr<Role> role = ParseRole(fields[1]);
  if (!role.ok()) return role.status();
  Principal p;
  p.role = *role;
  p.name = absl::StrCat("line ", line);
  for (size_t i = 2; i < fields.size(); ++i) {
    absl::string_view f = fields[i];
    if (absl::ConsumePrefix(&f, "workers=")) {
      if (!p.worker_ids.empty() || f.empty()) {
        return absl::InvalidArgumentError("workers= must appear once, with at least one id");
      }
      for (absl::string_view id : absl::StrSplit(f, ',')) {
        if (id.empty()) return absl::InvalidArgumentError("workers= holds an empty worker id");
        p.worker_ids.emplace_back(id);
      }
    } else if (absl::ConsumePrefix(&f, "expires=")) {
      std::string error;
      if (!absl::ParseTime(absl::RFC3339_full, f, &p.expires, &error)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "expires= must be an RFC 3339 time such as 2027-01-31T00:00:00Z, got '", f, "'"));
      }
    } else if (i == 2) {
      p.name = std::string(f);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected field '", f,
          "' (expected: <token> <role> [<name>] [workers=<ids>] [expires=<time>])"));
    }
  }
  return p;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kWorker: return "worker";
    case Role::kReader: return "reader";
    case Role::kAdmin: return "admin";
    case Role::kPeer: return "peer";
  }
  return "?";
}

bool Principal::MayActAs(absl::string_view worker_id) const {
  if (worker_ids.empty()) return true;
  for (const std::string& id : worker_ids) {
    if (id == worker_id) return true;
  }
  return false;
}

absl::StatusOr<std::vector<TokenEntry>> ParseTokens(absl::string_view text,
                                                    absl::string_view file) {
  std::vector<TokenEntry> entries;
  absl::flat_hash_set<std::string> seen;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = line.substr(0, line.find('#'));
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    const auto error = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat("auth_tokens_file '", file, "' line ", line_number, ": ", what));
    };
    if (fields.size() < 2) return error("expected '<token> <role> [<name>] [workers=<ids>]'");
    if (fields[0].size() < kMinTokenLength) {
      return error(absl::StrCat("the token is shorter than ", kMinTokenLength, " characters"));
    }
    if (!seen.insert(std::string(fields[0])).second) return error("the token appears twice");
    absl::StatusOr<Principal> principal = ParsePrincipal(fields, line_number);
    if (!principal.ok()) return error(principal.status().message());
    entries.push_back({std::string(fields[0]), *std::move(principal)});
  }
  return entries;
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::Create(
    std::string path, absl::Duration reload_interval) {
  std::unique_ptr<TokenAuthenticator> auth(
      new TokenAuthenticator(std::move(path), reload_interval));
  FileStamp stamp;
  std::vector<TokenEntry> entries;
  if (absl::Status s = auth->Load(&stamp, &entries); !s.ok()) return s;
  MutexLock lock(&auth->mu_);
  auth->stamp_ = stamp;
  auth->checked_ = absl::Now();
  auth->entries_ = std::make_shared<const std::vector<TokenEntry>>(std::move(entries));
  return auth;
}

absl::Status TokenAuthenticator::Load(FileStamp* stamp,
                                      std::vector<TokenEntry>* entries) const {
  *stamp = StampOf(path_);
  absl::StatusOr<std::string> text = ReadWholeFile("auth_tokens_file", path_);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<TokenEntry>> parsed = ParseTokens(*text, path_);
  if (!parsed.ok()) return parsed.status();
  *entries = *std::move(parsed);
  return absl::OkStatus();
}

void TokenAuthenticator::MaybeReload() {
  FileStamp stamp;
  {
    MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (now - checked_ < reload_interval_) return;
    checked_ = now;
    stamp = StampOf(path_);
    if (stamp == stamp_) return;
  }
  std::vector<TokenEntry> entries;
  absl::Status loaded = Load(&stamp, &entries);
  MutexLock lock(&mu_);
  if (stamp == stamp_) return;  // another call reloaded it meanwhile
  stamp_ = stamp;  // an invalid version is reported once, not at every check
  if (!loaded.ok()) {
    ++reload_errors_;
    std::cerr << "dion-server: keeping the previous tokens: " << loaded.message() << std::endl;
    return;
  }
  entries_ = std::make_shared<const std::vector<TokenEntry>>(std::move(entries));
  ++reloads_;
}

absl::StatusOr<Principal> TokenAuthenticator::AuthenticateToken(absl::string_view token) {
  MaybeReload();
  std::shared_ptr<const std::vector<TokenEntry>> entries;
  {
    MutexLock lock(&mu_);
    entries = entries_;
  }
  const TokenEntry* found = nullptr;
  for (const TokenEntry& e : *entries) {  // every entry, whichever matches
    if (ConstantTimeEquals(token, e.token)) found = &e;
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown bearer token");
  if (absl::Now() >= found->principal.expires) {
    return absl::UnauthenticatedError(
        absl::StrCat("the bearer token '", found->principal.name, "' expired at ",
                     absl::FormatTime(absl::RFC3339_sec, found->principal.expires,
                                      absl::UTCTimeZone())));
  }
  return found->principal;
}

absl::StatusOr<Principal> TokenAuthenticator::Authenticate(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "this shard requires a bearer token: send 'authorization: Bearer <token>' metadata "
        "(dion-worker --token_file)");
  }
  absl::string_view value(it->second.data(), it->second.size());
  // The scheme is case-insensitive (RFC 6750 via RFC 7235); one or more spaces follow it.
  constexpr absl::string_view kScheme = "bearer";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme) ||
      value[kScheme.size()] != ' ') {
    return absl::UnauthenticatedError("the authorization metadata must be 'Bearer <token>'");
  }
  value.remove_prefix(kScheme.size());
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  return AuthenticateToken(value);
}

grpc::Status AuthorizeCall(TokenAuthenticator* tokens, ShardMetrics* metrics,
                           const grpc::ServerContext& context, absl::string_view method,
                           std::initializer_list<Role> allowed, Principal* principal) {
  if (tokens == nullptr) {
    *principal = Principal{Role::kAdmin, "anyone", {}};
    return grpc::Status::OK;
  }
  absl::StatusOr<Principal> who = tokens->Authenticate(context);
  if (!who.ok()) {
    if (metrics != nullptr) metrics->RecordAuthFailure("unauthenticated");
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        absl::StrCat(method, ": ", who.status().message()));
  }
  for (Role role : allowed) {
    if (who->role == role) {
      *principal = *std::move(who);
      return grpc::Status::OK;
    }
  }
  if (metrics != nullptr) metrics->RecordAuthFailure("permission_denied");
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      absl::StrCat(method, " is not allowed for role ", RoleName(who->role),
                                   " (token '", who->name, "')"));
}

}  // namespace dion
