#include "server/metrics.h"

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"

#include "common/metrics_text.h"
#include "common/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace dion {
namespace {

constexpr std::array<PushOutcome, 4> kOutcomes = {PushOutcome::kAccepted, PushOutcome::kDuplicate,
                                                   PushOutcome::kStale, PushOutcome::kRejected};
constexpr std::array<StepPhase, 5> kPhases = {StepPhase::kAggregate, StepPhase::kPowerIteration,
                                              StepPhase::kOrthonormalize, StepPhase::kUpdate,
                                              StepPhase::kBroadcast};
constexpr std::array<OptimizerKind, 4> kKinds = {OptimizerKind::kDion, OptimizerKind::kAdamW,
                                                 OptimizerKind::kLion, OptimizerKind::kMuon};

// Record* index the per-label arrays by the enum's value: keep the lists in enum order.
template <typename Enum, size_t N>
constexpr bool InEnumOrder(const std::array<Enum, N>& values) {
  for (size_t i = 0; i < N; ++i) {
    if (static_cast<size_t>(values[i]) != i) return false;
  }
  return true;
}
static_assert(InEnumOrder(kOutcomes) && InEnumOrder(kPhases) && InEnumOrder(kKinds));

const char* OutcomeLabel(PushOutcome outcome) {
  switch (outcome) {
    case PushOutcome::kAccepted: return "accepted";
    case PushOutcome::kDuplicate: return "duplicate";
    case PushOutcome::kStale: return "stale";
    case PushOutcome::kRejected: return "rejected";
  }
  return "unknown";
}

const char* PhaseLabel(StepPhase phase) {
  switch (phase) {
    case StepPhase::kAggregate: return "aggregate";
    case StepPhase::kPowerIteration: return "power_iteration";
    case StepPhase::kOrthonormalize: return "orthonormalize";
    case StepPhase::kUpdate: return "update";
    case StepPhase::kBroadcast: return "broadcast";
  }
  return "unknown";
}

// start, start*factor, ..., while <= limit (with a little slack for rounding).
prometheus::Histogram::BucketBoundaries ExponentialBuckets(double start, double factor,
                                                           double limit) {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = start; b <= limit * (1 + 1e-9); b *= factor) bounds.push_back(b);
  return bounds;
}

// Staleness is small integers; the coarse tail still separates "a bit late" from "far behind".
const prometheus::Histogram::BucketBoundaries& StalenessBuckets() {
  static const auto* bounds =
      new prometheus::Histogram::BucketBoundaries{0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64};
  return *bounds;
}
const prometheus::Histogram::BucketBoundaries& BatchBuckets() {
  static const auto* bounds =
      new prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256};
  return *bounds;
}

// Peer reduction failures by reason; RecordPeerFailure maps status codes onto these.
constexpr std::array<const char*, 7> kPeerFailureReasons = {
    "timeout", "invalid", "unavailable", "resource_exhausted", "denied", "aborted", "other"};

size_t PeerFailureIndex(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kDeadlineExceeded: return 0;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kInternal: return 1;
    case absl::StatusCode::kUnavailable: return 2;
    case absl::StatusCode::kResourceExhausted: return 3;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied: return 4;
    case absl::StatusCode::kAborted: return 5;
    default: return 6;
  }
}

// A tag that may become a label value: 1-32 of [A-Za-z0-9_].
bool IsLabelTag(absl::string_view tag) {
  if (tag.empty() || tag.size() > 32) return false;
  for (char c : tag) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

constexpr size_t kMaxPeerTags = 8;

}  // namespace

// References into families owned by the registry (stable: Family::Add returns a reference to
// a metric that lives until removed, and nothing here removes). The constructor registers the
// families group by group, in a fixed order.
struct ShardMetrics::Families {
  explicit Families(prometheus::Registry& r) {
    AddPushFamilies(r);
    AddStepFamilies(r);
    AddStreamFamilies(r);
    AddTrainingFamilies(r);
    AddCheckpointFamilies(r);
    AddPeerFamilies(r);
  }

  std::array<prometheus::Counter*, kOutcomes.size()> pushes{};
  prometheus::Counter* received_bytes = nullptr;
  prometheus::Counter* sent_bytes = nullptr;
  prometheus::Histogram* staleness = nullptr;
  prometheus::Histogram* batch_contributions = nullptr;
  std::array<prometheus::Histogram*, kPhases.size()> phase_duration{};
  std::array<prometheus::Counter*, kKinds.size()> steps{};
  std::array<prometheus::Counter*, kKinds.size()> failed_steps{};
  prometheus::Counter* subscriber_lag_events = nullptr;
  prometheus::Counter* full_value_fallbacks = nullptr;
  prometheus::Counter* conflated_updates = nullptr;
  prometheus::Gauge* lagging_subscribers = nullptr;
  std::array<prometheus::Gauge*, kKinds.size()> parameter_version{};
  prometheus::Gauge* connected_workers = nullptr;
  prometheus::Counter* backpressure_seconds = nullptr;
  prometheus::Counter* nonfinite_pushes = nullptr;
  prometheus::Counter* auth_unauthenticated = nullptr;
  prometheus::Counter* auth_denied = nullptr;
  prometheus::Gauge* subscribers = nullptr;
  prometheus::Gauge* orthogonality_error = nullptr;
  prometheus::Gauge* worker_loss = nullptr;
  prometheus::Gauge* dp_epsilon = nullptr;
  prometheus::Counter* checkpoints_ok = nullptr;
  prometheus::Counter* checkpoints_error = nullptr;
  prometheus::Histogram* checkpoint_duration = nullptr;
  prometheus::Family<prometheus::Histogram>* peer_duration = nullptr;
  std::array<prometheus::Counter*, kPeerFailureReasons.size()> peer_failures{};
  prometheus::Counter* peer_sent_bytes = nullptr;
  prometheus::Counter* peer_received_bytes = nullptr;
  prometheus::Counter* split_step_failures = nullptr;

  // The version gauge shows the highest version per kind; "read max, then Set" must be one
  // step or two racing steps could leave the lower version showing (the same for
  // dp_epsilon). Steps are per batch, so a lock here costs nothing measurable.
  Mutex version_mu;
  std::array<int64_t, kKinds.size()> highest_version ABSL_GUARDED_BY(version_mu){};

  // The reduction-duration histogram of each tag seen (at most kMaxPeerTags, then "other").
  Mutex peer_tags_mu;
  std::vector<std::pair<std::string, prometheus::Histogram*>> peer_tags
      ABSL_GUARDED_BY(peer_tags_mu);

  prometheus::Histogram* FindPeerTag(absl::string_view label)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(peer_tags_mu) {
    for (const auto& [name, histogram] : peer_tags) {
      if (name == label) return histogram;
    }
    return nullptr;
  }

  prometheus::Histogram* PeerHistogram(absl::string_view tag) {
    MutexLock lock(&peer_tags_mu);
    absl::string_view label = IsLabelTag(tag) ? tag : "other";
    if (prometheus::Histogram* h = FindPeerTag(label)) return h;
    if (label != "other" &&
        peer_tags.size() - (FindPeerTag("other") != nullptr ? 1 : 0) >= kMaxPeerTags) {
      label = "other";
      if (prometheus::Histogram* h = FindPeerTag(label)) return h;
    }
    // 1e-4 s .. ~13 s in factors of 2: a Gram matrix on loopback to a timeout of seconds.
    peer_tags.emplace_back(std::string(label),
                           &peer_duration->Add({{"tag", std::string(label)}},
                                               ExponentialBuckets(1e-4, 2.0, 15.0)));
    return peer_tags.back().second;
  }

 private:
  // What arrives on the push streams: results, payload bytes, staleness.
  void AddPushFamilies(prometheus::Registry& r) {
    auto& results = prometheus::BuildCounter()
                        .Name("dion_pushes_total")
                        .Help("Contributions pushed to this shard, by acknowledgement result.")
                        .Register(r);
    for (size_t i = 0; i < kOutcomes.size(); ++i) {
      pushes[i] = &results.Add({{"result", OutcomeLabel(kOutcomes[i])}});
    }
    nonfinite_pushes = &prometheus::BuildCounter()
                            .Name("dion_nonfinite_pushes_total")
                            .Help("Pushes rejected because a value or the loss was NaN or Inf "
                                  "(also counted in dion_pushes_total{result=\"rejected\"}).")
                            .Register(r)
                            .Add({});
    auto& auth = prometheus::BuildCounter()
                     .Name("dion_auth_failures_total")
                     .Help("Calls refused by token authentication (--auth_tokens_file), by "
                           "reason: unauthenticated (no or unknown token) or "
                           "permission_denied (the token's role may not make the call).")
                     .Register(r);
    auth_unauthenticated = &auth.Add({{"reason", "unauthenticated"}});
    auth_denied = &auth.Add({{"reason", "permission_denied"}});
    received_bytes = &prometheus::BuildCounter()
                          .Name("dion_received_bytes_total")
                          .Help("Serialized gRPC request payload bytes received.")
                          .Register(r)
                          .Add({});
    sent_bytes = &prometheus::BuildCounter()
                      .Name("dion_sent_bytes_total")
                      .Help("Serialized gRPC response payload bytes sent.")
                      .Register(r)
                      .Add({});
    staleness = &prometheus::BuildHistogram()
                     .Name("dion_push_staleness")
                     .Help("Staleness tau of pushed contributions (current version minus base "
                           "version, in versions).")
                     .Register(r)
                     .Add({}, StalenessBuckets());
  }

  // Batches and optimizer steps: batch sizes, phase times, steps and versions per kind.
  void AddStepFamilies(prometheus::Registry& r) {
    batch_contributions = &prometheus::BuildHistogram()
                               .Name("dion_batch_contributions")
                               .Help("Contributions combined in each closed batch.")
                               .Register(r)
                               .Add({}, BatchBuckets());
    // 1e-4 s .. ~13 s in factors of 2: an aggregate of small factors takes ~100 us, a Dion
    // step on a large matrix seconds.
    const auto phase_buckets = ExponentialBuckets(1e-4, 2.0, 15.0);
    auto& phases = prometheus::BuildHistogram()
                       .Name("dion_step_phase_duration_seconds")
                       .Help("Wall time of each phase of an optimizer step.")
                       .Register(r);
    for (size_t i = 0; i < kPhases.size(); ++i) {
      phase_duration[i] = &phases.Add({{"phase", PhaseLabel(kPhases[i])}}, phase_buckets);
    }
    auto& step_counts = prometheus::BuildCounter()
                            .Name("dion_steps_total")
                            .Help("Optimizer steps applied, by optimizer kind.")
                            .Register(r);
    auto& versions = prometheus::BuildGauge()
                         .Name("dion_parameter_version")
                         .Help("Highest parameter version reached, by optimizer kind.")
                         .Register(r);
    auto& failed = prometheus::BuildCounter()
                       .Name("dion_failed_steps_total")
                       .Help("Closed batches the store refused to apply (the step did not "
                             "happen; a bug if ever non-zero), by optimizer kind.")
                       .Register(r);
    for (size_t i = 0; i < kKinds.size(); ++i) {
      const std::string kind(OptimizerKindName(kKinds[i]));
      steps[i] = &step_counts.Add({{"kind", kind}});
      parameter_version[i] = &versions.Add({{"kind", kind}});
      failed_steps[i] = &failed.Add({{"kind", kind}});
    }
  }

  // The open streams: connected workers and how long their pushes waited, subscribers and
  // how they fell behind.
  void AddStreamFamilies(prometheus::Registry& r) {
    connected_workers = &prometheus::BuildGauge()
                             .Name("dion_connected_workers")
                             .Help("Workers with an open push stream.")
                             .Register(r)
                             .Add({});
    backpressure_seconds = &prometheus::BuildCounter()
                                .Name("dion_push_backpressure_seconds_total")
                                .Help("Time pushes waited because their parameter already had "
                                      "max_pending_batches closed batches waiting for a step.")
                                .Register(r)
                                .Add({});
    subscribers = &prometheus::BuildGauge()
                       .Name("dion_subscribers")
                       .Help("Open subscribe streams.")
                       .Register(r)
                       .Add({});
    subscriber_lag_events = &prometheus::BuildCounter()
                                 .Name("dion_subscriber_lag_events_total")
                                 .Help("Times a subscriber's update queue was full: the queue "
                                       "was dropped and full values sent instead.")
                                 .Register(r)
                                 .Add({});
    full_value_fallbacks = &prometheus::BuildCounter()
                                .Name("dion_broadcast_full_value_fallbacks_total")
                                .Help("Full values sent to subscribers in place of updates they "
                                      "missed or could not apply (initial values excluded).")
                                .Register(r)
                                .Add({});
    conflated_updates = &prometheus::BuildCounter()
                             .Name("dion_broadcast_conflated_updates_total")
                             .Help("Queued updates a subscriber was not sent because one full "
                                   "value replaced them: a lagging subscriber's low-rank steps "
                                   "that outweigh the value, or a value superseded by a newer "
                                   "one.")
                             .Register(r)
                             .Add({});
    lagging_subscribers = &prometheus::BuildGauge()
                               .Name("dion_lagging_subscribers")
                               .Help("Subscribers that still owe full values after their queue "
                                     "overflowed.")
                               .Register(r)
                               .Add({});
  }

  // How training goes: the last orthogonality error and the workers' loss.
  void AddTrainingFamilies(prometheus::Registry& r) {
    orthogonality_error = &prometheus::BuildGauge()
                               .Name("dion_orthogonality_error")
                               .Help("Last measured orthogonality error of a Dion step's "
                                     "orthonormalized factor, ||P^T P - I||_max.")
                               .Register(r)
                               .Add({});
    worker_loss = &prometheus::BuildGauge()
                       .Name("dion_worker_loss")
                       .Help("Sample-weighted mean of the training loss reported by the "
                             "workers in the last batch.")
                       .Register(r)
                       .Add({});
    dp_epsilon = &prometheus::BuildGauge()
                      .Name("dion_dp_epsilon")
                      .Help("Differential privacy: epsilon of the (epsilon, --dp_delta) this "
                            "shard's applied batches have spent (0 when the mode is off).")
                      .Register(r)
                      .Add({});
  }

  void AddCheckpointFamilies(prometheus::Registry& r) {
    auto& checkpoints = prometheus::BuildCounter()
                            .Name("dion_checkpoints_total")
                            .Help("Checkpoints attempted, by result.")
                            .Register(r);
    checkpoints_ok = &checkpoints.Add({{"result", "ok"}});
    checkpoints_error = &checkpoints.Add({{"result", "error"}});
    // 1 ms .. ~130 s: tiny test models to multi-GB shards on a slow disk.
    checkpoint_duration = &prometheus::BuildHistogram()
                               .Name("dion_checkpoint_duration_seconds")
                               .Help("Wall time of writing one checkpoint.")
                               .Register(r)
                               .Add({}, ExponentialBuckets(1e-3, 2.0, 150.0));
  }

  // Shard-to-shard reductions of row-split parameters (server/peer/).
  void AddPeerFamilies(prometheus::Registry& r) {
    peer_duration = &prometheus::BuildHistogram()
                         .Name("dion_peer_reduction_duration_seconds")
                         .Help("Wall time of one owner's reduction (AllReduce) of a row-split "
                               "parameter's step, from its call to the sum, by tag.")
                         .Register(r);
    // The tags of common/row_reduce.h are there from the start (dashboards see the series).
    for (const char* tag : {"gram", "sketch", "R"}) PeerHistogram(tag);
    auto& failures = prometheus::BuildCounter()
                         .Name("dion_peer_reduction_failures_total")
                         .Help("Reductions of row-split parameters that failed (the step was "
                               "abandoned), by reason.")
                         .Register(r);
    for (size_t i = 0; i < kPeerFailureReasons.size(); ++i) {
      peer_failures[i] = &failures.Add({{"reason", kPeerFailureReasons[i]}});
    }
    peer_sent_bytes = &prometheus::BuildCounter()
                           .Name("dion_peer_sent_bytes_total")
                           .Help("ShardPeer payload bytes this shard sent (parts as a "
                                 "follower, sums as a leader).")
                           .Register(r)
                           .Add({});
    peer_received_bytes = &prometheus::BuildCounter()
                               .Name("dion_peer_received_bytes_total")
                               .Help("ShardPeer payload bytes this shard received (sums as a "
                                     "follower, parts as a leader).")
                               .Register(r)
                               .Add({});
    split_step_failures = &prometheus::BuildCounter()
                               .Name("dion_split_step_failures_total")
                               .Help("Attempts of a split parameter's step that this shard led "
                                     "and that failed on some owner (nothing applied; retried).")
                               .Register(r)
                               .Add({});
  }
};

ShardMetrics::ShardMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      families_(std::make_unique<Families>(*registry_)) {}

ShardMetrics::~ShardMetrics() = default;

void ShardMetrics::RecordPush(PushOutcome outcome) {
  families_->pushes[static_cast<size_t>(outcome)]->Increment();
}

void ShardMetrics::RecordNonFinitePush() { families_->nonfinite_pushes->Increment(); }

void ShardMetrics::RecordAuthFailure(absl::string_view reason) {
  (reason == "unauthenticated" ? families_->auth_unauthenticated : families_->auth_denied)
      ->Increment();
}

// Counter::Increment ignores negative amounts, so a bogus size cannot make a counter go down.
void ShardMetrics::RecordReceivedBytes(int64_t bytes) {
  families_->received_bytes->Increment(static_cast<double>(bytes));
}
void ShardMetrics::RecordSentBytes(int64_t bytes) {
  families_->sent_bytes->Increment(static_cast<double>(bytes));
}

void ShardMetrics::RecordStaleness(int64_t tau) {
  families_->staleness->Observe(static_cast<double>(tau));
}

void ShardMetrics::RecordBatch(int contributions) {
  families_->batch_contributions->Observe(contributions);
}

void ShardMetrics::RecordPhase(StepPhase phase, double seconds) {
  families_->phase_duration[static_cast<size_t>(phase)]->Observe(seconds);
}

void ShardMetrics::RecordStep(OptimizerKind kind, int64_t version) {
  const auto i = static_cast<size_t>(kind);
  families_->steps[i]->Increment();
  MutexLock lock(&families_->version_mu);
  if (version > families_->highest_version[i]) {
    families_->highest_version[i] = version;
    families_->parameter_version[i]->Set(static_cast<double>(version));
  }
}

void ShardMetrics::RecordFailedStep(OptimizerKind kind) {
  families_->failed_steps[static_cast<size_t>(kind)]->Increment();
}

void ShardMetrics::RecordSubscriberLag() { families_->subscriber_lag_events->Increment(); }
void ShardMetrics::RecordFullValueFallback() { families_->full_value_fallbacks->Increment(); }
void ShardMetrics::RecordConflatedUpdates(int64_t n) {
  families_->conflated_updates->Increment(static_cast<double>(n));
}
void ShardMetrics::AddLaggingSubscribers(int64_t delta) {
  if (delta >= 0) {
    families_->lagging_subscribers->Increment(static_cast<double>(delta));
  } else {
    families_->lagging_subscribers->Decrement(static_cast<double>(-delta));
  }
}

void ShardMetrics::RecordBackpressure(double seconds) {
  families_->backpressure_seconds->Increment(seconds);
}

void ShardMetrics::SetConnectedWorkers(int64_t n) {
  families_->connected_workers->Set(static_cast<double>(n));
}
void ShardMetrics::SetSubscribers(int64_t n) { families_->subscribers->Set(static_cast<double>(n)); }
void ShardMetrics::SetOrthogonalityError(double error) {
  families_->orthogonality_error->Set(error);
}
void ShardMetrics::SetWorkerLoss(double loss) { families_->worker_loss->Set(loss); }
void ShardMetrics::SetPrivacySpent(double epsilon) {
  // Steps of different parameters end concurrently: only the largest value may stay.
  MutexLock lock(&families_->version_mu);
  if (epsilon > families_->dp_epsilon->Value()) families_->dp_epsilon->Set(epsilon);
}

void ShardMetrics::RecordCheckpoint(bool ok, double seconds) {
  (ok ? families_->checkpoints_ok : families_->checkpoints_error)->Increment();
  families_->checkpoint_duration->Observe(seconds);
}

void ShardMetrics::RecordPeerReduction(absl::string_view tag, double seconds) {
  families_->PeerHistogram(tag)->Observe(seconds);
}

void ShardMetrics::RecordPeerFailure(absl::StatusCode code) {
  families_->peer_failures[PeerFailureIndex(code)]->Increment();
}

void ShardMetrics::RecordSplitStepFailure() { families_->split_step_failures->Increment(); }

void ShardMetrics::RecordPeerBytes(int64_t sent, int64_t received) {
  if (sent > 0) families_->peer_sent_bytes->Increment(static_cast<double>(sent));
  if (received > 0) families_->peer_received_bytes->Increment(static_cast<double>(received));
}

std::shared_ptr<prometheus::Registry> ShardMetrics::registry() const { return registry_; }

std::string ShardMetrics::Serialize() const { return SerializeMetrics(*registry_); }

}  // namespace dion
