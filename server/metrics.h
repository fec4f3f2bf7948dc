// Prometheus metrics of one shard (prometheus-cpp), served on their own port.
//
// Names follow Prometheus conventions: prefix dion_, base units, _total for counters,
// _seconds / _bytes suffixes, and only low-cardinality labels (result, phase, kind). Per-
// parameter labels are deliberately absent: a model can have thousands of parameters.
//
//   dion_pushes_total{result="accepted|duplicate|stale|rejected"}   counter
//   dion_received_bytes_total, dion_sent_bytes_total               counters (gRPC payloads)
//   dion_push_staleness                                             histogram of tau (versions)
//   dion_batch_contributions                                        histogram per closed batch
//   dion_step_phase_duration_seconds{phase="aggregate|power_iteration|orthonormalize|update|broadcast"}
//   dion_steps_total{kind="dion|adamw|lion|muon"}                   counter
//   dion_failed_steps_total{kind=...}                               counter, batches refused
//   dion_parameter_version{kind=...}                                gauge, highest version
//   dion_connected_workers, dion_subscribers                       gauges
//   dion_push_backpressure_seconds_total                            counter, time pushes waited
//   dion_nonfinite_pushes_total                                     counter, NaN/Inf refused
//   dion_subscriber_lag_events_total                                counter, queue overflows
//   dion_broadcast_full_value_fallbacks_total                       counter
//   dion_broadcast_conflated_updates_total                          counter, queued updates a
//                                                                   newer full value replaced
//   dion_lagging_subscribers                                        gauge
//   dion_orthogonality_error                                        gauge, last measured
//   dion_worker_loss                                                gauge, last batch's mean
//   dion_checkpoints_total{result="ok|error"}, dion_checkpoint_duration_seconds
//   dion_dp_epsilon                                                 gauge, privacy spent
//                                                                   (docs/privacy.md)
//   dion_peer_reduction_duration_seconds{tag}                       histogram, one owner's
//                                                                   AllReduce of a split step
//   dion_peer_reduction_failures_total{reason="timeout|invalid|unavailable|resource_exhausted|
//                                      denied|aborted|other"}       counter
//   dion_peer_sent_bytes_total, dion_peer_received_bytes_total      counters, ShardPeer payloads
// (tag: "gram", "sketch", "R" from the start; another tag of 1-32 of [A-Za-z0-9_] while there
// are fewer than 8, else "other", so the label set stays bounded).
//
// Thread-safety: safe for concurrent use (prometheus-cpp metrics are atomic; RecordStep also
// takes a short internal lock so the version gauge only ever moves up).
#ifndef DION_SERVER_METRICS_H_
#define DION_SERVER_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/contribution.h"
#include "common/metrics_server.h"
#include "common/param_spec.h"

namespace prometheus {
class Registry;
class Exposer;
}  // namespace prometheus

namespace dion {

enum class StepPhase { kAggregate, kPowerIteration, kOrthonormalize, kUpdate, kBroadcast };

class ShardMetrics {
 public:
  // Metrics registered in a fresh registry (not served anywhere yet).
  ShardMetrics();
  ~ShardMetrics();
  ShardMetrics(const ShardMetrics&) = delete;
  ShardMetrics& operator=(const ShardMetrics&) = delete;

  void RecordPush(PushOutcome outcome);
  // A push REJECTED for NaN or Inf values (also counted by RecordPush as rejected).
  void RecordNonFinitePush();
  // A call refused by token authentication; `reason` is "unauthenticated" or
  // "permission_denied".
  void RecordAuthFailure(absl::string_view reason);
  void RecordReceivedBytes(int64_t bytes);
  void RecordSentBytes(int64_t bytes);
  void RecordStaleness(int64_t tau);
  void RecordBatch(int contributions);
  void RecordPhase(StepPhase phase, double seconds);
  void RecordStep(OptimizerKind kind, int64_t version);  // steps_total and version gauge
  void RecordFailedStep(OptimizerKind kind);  // a closed batch the store refused to apply
  // Broadcaster: a subscriber's queue overflowed and was dropped (one event);
  void RecordSubscriberLag();
  // a full value sent in place of updates a subscriber missed or could not apply (not the
  // initial values of a new subscription);
  void RecordFullValueFallback();
  // `n` queued updates not sent because one full value, cheaper, replaced them (Broadcaster);
  void RecordConflatedUpdates(int64_t n);
  // subscribers that owe full values after a lag event (+1 when one starts, -1 when it has
  // caught up or goes away).
  void AddLaggingSubscribers(int64_t delta);
  // A push waited `seconds` for its parameter's backlog of closed batches to shrink.
  void RecordBackpressure(double seconds);
  void SetConnectedWorkers(int64_t n);
  void SetSubscribers(int64_t n);
  void SetOrthogonalityError(double error);
  void SetWorkerLoss(double loss);
  // Differential privacy: epsilon of the (epsilon, delta) spent so far; the gauge only moves
  // up (concurrent steps may report out of order).
  void SetPrivacySpent(double epsilon);
  void RecordCheckpoint(bool ok, double seconds);
  // Shard-to-shard reductions of row-split parameters (server/peer/): one AllReduce that
  // completed in `seconds`; one that failed with `code` (DEADLINE_EXCEEDED: timeout;
  // INVALID_ARGUMENT, FAILED_PRECONDITION, INTERNAL: invalid; UNAVAILABLE: unavailable;
  // RESOURCE_EXHAUSTED; UNAUTHENTICATED, PERMISSION_DENIED: denied; ABORTED; else other);
  // ShardPeer payload bytes sent and received by this shard (either side of the call).
  void RecordPeerReduction(absl::string_view tag, double seconds);
  void RecordPeerFailure(absl::StatusCode code);
  void RecordPeerBytes(int64_t sent, int64_t received);
  // An attempt of a split parameter's step this shard led failed (it is retried).
  void RecordSplitStepFailure();

  std::shared_ptr<prometheus::Registry> registry() const;
  // The text exposition format of everything registered (what /metrics serves).
  std::string Serialize() const;

 private:
  struct Families;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> families_;
};

}  // namespace dion

#endif  // DION_SERVER_METRICS_H_
