// A blocking HTTP/1.0 GET over loopback for tests that scrape a /metrics endpoint the way
// Prometheus would. Bounded: the socket times out after 5 s each way.
//
// Thread-safety: free functions with no shared state.
#ifndef DION_TESTS_HTTP_GET_H_
#define DION_TESTS_HTTP_GET_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace dion::testing {

// GET http://127.0.0.1:<port><path>; the whole response (status line, headers, body), or "" when
// the connection fails. HTTP/1.0: the server closes the connection after the response.
inline std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
    }
  }
  close(fd);
  return response;
}

// The body of a 200 response to HttpGet; "" on any failure or another status.
inline std::string HttpGetBody(int port, const std::string& path) {
  const std::string response = HttpGet(port, path);
  if (response.find(" 200 ") == std::string::npos) return "";
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

}  // namespace dion::testing

#endif  // DION_TESTS_HTTP_GET_H_
