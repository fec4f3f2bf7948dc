// An HTTP endpoint serving a prometheus-cpp registry at /metrics (the text exposition
// format), used by the shard and the worker on their own ports.
//
// Thread-safety: Start and the destructor are not to be called concurrently on one object;
// scrapes are served on the exposer's own threads.
#ifndef DION_COMMON_METRICS_SERVER_H_
#define DION_COMMON_METRICS_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace prometheus {
class Registry;
class Exposer;
}  // namespace prometheus

namespace dion {

// Serves a registry at http://<listen>/metrics. listen is "host:port"; port 0 picks a free
// port. Failure to bind is an error (Unavailable) naming the address; so is an IPv6 address
// with Debian's civetweb, which is built without IPv6. The registry is held weakly: keep its
// owner (ShardMetrics) alive while serving, or scrapes return nothing of it. Destruction
// stops the listener within milliseconds.
class MetricsServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsServer();
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  std::string connect_host_;  // how to reach the listener (loopback for wildcard addresses)
};

}  // namespace dion

#endif  // DION_COMMON_METRICS_SERVER_H_
