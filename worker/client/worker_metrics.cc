#include "worker/client/worker_metrics.h"

#include <array>
#include <atomic>

#include "common/metrics_text.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace dion {

struct WorkerMetrics::Families {
  prometheus::Counter* samples;
  prometheus::Gauge* samples_per_second;
  prometheus::Histogram* local_steps;
  prometheus::Histogram* push_bytes;
  prometheus::Counter* sent_bytes;
  prometheus::Counter* dense_bytes;
  prometheus::Counter* received_bytes;
  prometheus::Counter* received_dense_bytes;
  prometheus::Gauge* compression_ratio;
  prometheus::Histogram* latency;
  std::array<prometheus::Counter*, 4> pushes;
  prometheus::Counter* refused;
  prometheus::Counter* stale_dropped_samples;
  prometheus::Family<prometheus::Counter>* resyncs;
  prometheus::Counter* reconnects;
  prometheus::Gauge* push_rank_fraction;
  prometheus::Gauge* uplink_rate;
  prometheus::Gauge* loss;
  prometheus::Gauge* test_loss;
  prometheus::Gauge* test_accuracy;
  // Exact running totals for the ratio (prometheus counters are doubles already, but the
  // ratio must use the same two sums even when pushes race).
  std::atomic<int64_t> sent_total{0};
  std::atomic<int64_t> dense_total{0};
};

WorkerMetrics::WorkerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()), families_(new Families) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  prometheus::Registry& r = *registry_;
  Families& f = *families_;
  f.samples = &BuildCounter().Name("dion_worker_samples_total")
                   .Help("Training samples processed by this worker").Register(r).Add({});
  f.samples_per_second = &BuildGauge().Name("dion_worker_samples_per_second")
                              .Help("Training samples per second over the last interval")
                              .Register(r).Add({});
  f.local_steps = &BuildHistogram().Name("dion_worker_local_steps_per_push")
                       .Help("Local steps accumulated into one push (grows on a slow link)")
                       .Register(r).Add({}, prometheus::Histogram::BucketBoundaries{
                                                1, 2, 3, 4, 6, 8, 12, 16, 32, 64});
  f.push_bytes = &BuildHistogram().Name("dion_worker_push_bytes")
                      .Help("Payload bytes of one push").Register(r)
                      .Add({}, prometheus::Histogram::BucketBoundaries{
                                   1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6});
  f.sent_bytes = &BuildCounter().Name("dion_worker_sent_bytes_total")
                      .Help("Push payload bytes sent").Register(r).Add({});
  f.dense_bytes = &BuildCounter().Name("dion_worker_dense_equivalent_bytes_total")
                       .Help("Bytes dense float32 gradients would have cost for the same pushes")
                       .Register(r).Add({});
  f.received_bytes = &BuildCounter().Name("dion_worker_received_bytes_total")
                          .Help("Payload bytes of versions received: broadcasts (low-rank "
                                "steps and full values) and values pulled to resync")
                          .Register(r).Add({});
  f.received_dense_bytes =
      &BuildCounter().Name("dion_worker_received_dense_equivalent_bytes_total")
           .Help("Bytes one dense float32 value per version received would have cost")
           .Register(r).Add({});
  f.compression_ratio = &BuildGauge().Name("dion_worker_compression_ratio")
                             .Help("Dense-equivalent bytes / sent bytes, since start")
                             .Register(r).Add({});
  f.latency = &BuildHistogram().Name("dion_worker_push_latency_seconds")
                   .Help("Time from taking a push to its acknowledgement").Register(r)
                   .Add({}, prometheus::Histogram::BucketBoundaries{
                                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                                1, 2, 5});
  auto& pushes = BuildCounter().Name("dion_worker_pushes_total")
                     .Help("Pushes acknowledged, by result").Register(r);
  f.pushes = {&pushes.Add({{"result", "accepted"}}), &pushes.Add({{"result", "duplicate"}}),
              &pushes.Add({{"result", "stale"}}), &pushes.Add({{"result", "rejected"}})};
  f.refused = &BuildCounter().Name("dion_worker_refused_pushes_total")
                   .Help("Pushes refused by a shard and restored into the residual")
                   .Register(r).Add({});
  f.stale_dropped_samples =
      &BuildCounter().Name("dion_worker_stale_dropped_samples_total")
           .Help("Samples of pushes answered STALE (older than the shard's max_staleness), "
                 "dropped")
           .Register(r).Add({});
  f.resyncs = &BuildCounter().Name("dion_worker_resyncs_total")
                   .Help("Full pulls of a parameter, by reason").Register(r);
  f.reconnects = &BuildCounter().Name("dion_worker_reconnects_total")
                      .Help("Streams to a shard re-opened after a failure").Register(r).Add({});
  f.push_rank_fraction = &BuildGauge().Name("dion_worker_push_rank_fraction")
                              .Help("Push-rank fraction chosen by the adaptive push rank")
                              .Register(r).Add({});
  f.uplink_rate = &BuildGauge().Name("dion_worker_uplink_rate_bytes_per_second")
                      .Help("Uplink rate to the shards (TCP delivery rate) the adaptive push "
                            "rank chose from")
                      .Register(r).Add({});
  f.loss = &BuildGauge().Name("dion_worker_training_loss")
                .Help("Mean training loss of the last pushed steps").Register(r).Add({});
  f.test_loss = &BuildGauge().Name("dion_worker_test_loss")
                     .Help("Test-set loss at the last evaluation").Register(r).Add({});
  f.test_accuracy = &BuildGauge().Name("dion_worker_test_accuracy")
                         .Help("Test-set accuracy (0..1) at the last evaluation")
                         .Register(r).Add({});
}

WorkerMetrics::~WorkerMetrics() = default;

void WorkerMetrics::RecordSamples(int64_t samples) {
  families_->samples->Increment(static_cast<double>(samples));
}
void WorkerMetrics::SetSamplesPerSecond(double rate) { families_->samples_per_second->Set(rate); }

void WorkerMetrics::RecordPush(int local_steps, int64_t bytes, int64_t dense_bytes) {
  Families& f = *families_;
  f.local_steps->Observe(local_steps);
  f.push_bytes->Observe(static_cast<double>(bytes));
  f.sent_bytes->Increment(static_cast<double>(bytes));
  f.dense_bytes->Increment(static_cast<double>(dense_bytes));
  const int64_t sent = f.sent_total.fetch_add(bytes) + bytes;
  const int64_t dense = f.dense_total.fetch_add(dense_bytes) + dense_bytes;
  if (sent > 0) f.compression_ratio->Set(static_cast<double>(dense) / sent);
}

void WorkerMetrics::RecordReceived(int64_t bytes, int64_t dense_bytes) {
  families_->received_bytes->Increment(static_cast<double>(bytes));
  families_->received_dense_bytes->Increment(static_cast<double>(dense_bytes));
}

void WorkerMetrics::RecordAck(WorkerPushResult result, double latency_seconds) {
  families_->pushes[static_cast<int>(result)]->Increment();
  families_->latency->Observe(latency_seconds);
}
void WorkerMetrics::RecordRefused() { families_->refused->Increment(); }
void WorkerMetrics::RecordStaleDropped(int64_t samples) {
  families_->stale_dropped_samples->Increment(static_cast<double>(samples));
}
void WorkerMetrics::RecordResync(absl::string_view reason) {
  families_->resyncs->Add({{"reason", std::string(reason)}}).Increment();
}
void WorkerMetrics::RecordReconnect() { families_->reconnects->Increment(); }
void WorkerMetrics::SetPushRank(double fraction, double rate_bytes_per_second) {
  families_->push_rank_fraction->Set(fraction);
  families_->uplink_rate->Set(rate_bytes_per_second);
}

void WorkerMetrics::SetTrainingLoss(double loss) { families_->loss->Set(loss); }
void WorkerMetrics::SetEvaluation(double loss, double accuracy) {
  families_->test_loss->Set(loss);
  families_->test_accuracy->Set(accuracy);
}

std::shared_ptr<prometheus::Registry> WorkerMetrics::registry() const { return registry_; }

std::string WorkerMetrics::Serialize() const { return SerializeMetrics(*registry_); }

}  // namespace dion
