#include "server/plaintext_warning.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dion {
namespace {

// The host part of "host:port" or "[v6]:port", brackets removed.
absl::string_view Host(absl::string_view listen) {
  const size_t colon = listen.rfind(':');
  absl::string_view host = colon == absl::string_view::npos ? listen : listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host;
}

// Whether `host` is a dotted IPv4 address in 127.0.0.0/8.
bool IsIpv4Loopback(absl::string_view host) {
  const std::vector<absl::string_view> octets = absl::StrSplit(host, '.');
  if (octets.size() != 4) return false;
  for (absl::string_view octet : octets) {
    int value = 0;
    if (octet.empty() || !absl::SimpleAtoi(octet, &value) || value < 0 || value > 255) {
      return false;
    }
  }
  return octets[0] == "127";
}

}  // namespace

bool IsLoopbackListenAddress(absl::string_view listen) {
  const absl::string_view host = Host(listen);
  return absl::EqualsIgnoreCase(host, "localhost") || host == "::1" || IsIpv4Loopback(host);
}

std::optional<std::string> PlaintextWarning(absl::string_view listen, bool tls) {
  if (tls || IsLoopbackListenAddress(listen)) return std::nullopt;
  return absl::StrCat(
      "warning: serving plaintext gRPC without TLS on ", listen,
      ", which other machines can reach: anyone who reaches the port can register a model, push "
      "as any worker and read every weight. Set --tls_cert_file and --tls_key_file (and "
      "--tls_client_ca_file to require client certificates), or listen on 127.0.0.1 behind a "
      "TLS-terminating proxy");
}

}  // namespace dion
