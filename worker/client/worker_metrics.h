// Prometheus metrics of one worker (prometheus-cpp), served on the worker's own port.
// Same conventions as the shard's (server/metrics.h): prefix dion_worker_, base units,
// _total counters, no per-parameter labels.
//
//   dion_worker_samples_total                       counter, training samples processed
//   dion_worker_samples_per_second                  gauge, over the last progress interval
//   dion_worker_local_steps_per_push                histogram: local steps folded into a push
//                                                   (grows when the link is slow)
//   dion_worker_push_bytes                          histogram: payload bytes per push
//   dion_worker_sent_bytes_total                    counter, push payload bytes
//   dion_worker_dense_equivalent_bytes_total        counter, what dense float32 gradients for
//                                                   the same pushes would have cost
//   dion_worker_compression_ratio                   gauge, dense / sent bytes so far
//   dion_worker_received_bytes_total                counter, payload bytes of the versions
//                                                   received (broadcasts) and pulled (resyncs)
//   dion_worker_received_dense_equivalent_bytes_total  counter, one dense float32 value for
//                                                   each of them
//   dion_worker_push_latency_seconds                histogram, push taken -> acknowledged
//   dion_worker_pushes_total{result="accepted|duplicate|stale|rejected"}   counter
//   dion_worker_refused_pushes_total                counter, restored into the residual
//   dion_worker_stale_dropped_samples_total         counter, samples of pushes answered STALE
//                                                   (older than max_staleness: dropped)
//   dion_worker_resyncs_total{reason="gap|checksum_mismatch|went_back|rejected_version"}
//   dion_worker_reconnects_total                    counter, streams re-opened
//   dion_worker_push_rank_fraction                  gauge, push-rank fraction in use (set only
//                                                   by the adaptive push rank)
//   dion_worker_uplink_rate_bytes_per_second        gauge, the uplink rate it measured
//   dion_worker_training_loss                       gauge, mean loss of the last push round
//   dion_worker_test_loss, dion_worker_test_accuracy gauges, last evaluation
//
// Thread-safety: safe for concurrent use (prometheus-cpp metrics are atomic).
#ifndef DION_WORKER_WORKER_METRICS_H_
#define DION_WORKER_WORKER_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace dion {

enum class WorkerPushResult { kAccepted, kDuplicate, kStale, kRejected };

class WorkerMetrics {
 public:
  WorkerMetrics();
  ~WorkerMetrics();
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  void RecordSamples(int64_t samples);
  void SetSamplesPerSecond(double rate);
  // One contribution sent: local steps in it, payload bytes, dense-equivalent bytes.
  void RecordPush(int local_steps, int64_t bytes, int64_t dense_bytes);
  // One version received (a broadcast or a pulled value): payload bytes, dense-equivalent bytes.
  void RecordReceived(int64_t bytes, int64_t dense_bytes);
  void RecordAck(WorkerPushResult result, double latency_seconds);
  void RecordRefused();
  void RecordStaleDropped(int64_t samples);
  void RecordResync(absl::string_view reason);
  void RecordReconnect();
  // The adaptive push rank's fraction and measured rate (worker/client/push_rank.h).
  void SetPushRank(double fraction, double rate_bytes_per_second);
  void SetTrainingLoss(double loss);
  void SetEvaluation(double loss, double accuracy);

  std::shared_ptr<prometheus::Registry> registry() const;
  std::string Serialize() const;

 private:
  struct Families;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> families_;
};

}  // namespace dion

#endif  // DION_WORKER_WORKER_METRICS_H_
