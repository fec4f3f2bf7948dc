// The Prometheus text exposition format of a registry (what a scrape of /metrics returns), for
// ShardMetrics::Serialize and WorkerMetrics::Serialize. Header-only so that every target
// linking prometheus-cpp::core can use it: the worker's client library does not link the HTTP
// server (common/metrics_server.h).
//
// Thread-safety: safe to call concurrently with updates and with other calls
// (Registry::Collect locks the registry; the metrics are atomic).
#ifndef DION_COMMON_METRICS_TEXT_H_
#define DION_COMMON_METRICS_TEXT_H_

#include <sstream>
#include <string>

#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace dion {

// Every family of `registry`, in registration order.
inline std::string SerializeMetrics(const prometheus::Registry& registry) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry.Collect());
  return out.str();
}

}  // namespace dion

#endif  // DION_COMMON_METRICS_TEXT_H_
