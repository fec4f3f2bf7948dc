// ShardMetrics: every documented metric is exposed with the right type from the start, each
// Record*/Set* moves exactly its series, and MetricsServer serves the same text over HTTP on
// loopback. Values are read back by parsing the text exposition format, i.e. what Prometheus
// itself would scrape.
#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/metrics_text.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "tests/http_get.h"

namespace dion {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Sample lines "name{labels} value" keyed by "name{labels}" (exactly as printed).
std::map<std::string, double> ParseSamples(const std::string& text) {
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    samples[std::string(line.substr(0, space))] =
        std::strtod(std::string(line.substr(space + 1)).c_str(), nullptr);
  }
  return samples;
}

// The value of one series; fails the test (and returns NaN) if the series is missing.
double Sample(const std::string& text, const std::string& key) {
  const auto samples = ParseSamples(text);
  const auto it = samples.find(key);
  if (it == samples.end()) {
    ADD_FAILURE() << "series " << key << " missing from:\n" << text;
    return std::nan("");
  }
  return it->second;
}

// "# TYPE name type" lines: name -> type.
std::map<std::string, std::string> ParseTypes(const std::string& text) {
  std::map<std::string, std::string> types;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    if (parts.size() == 4 && parts[0] == "#" && parts[1] == "TYPE") types[parts[2]] = parts[3];
  }
  return types;
}

struct Documented {
  const char* name;
  const char* type;
};
// The list in server/metrics.h.
const std::vector<Documented>& DocumentedMetrics() {
  static const auto* list = new std::vector<Documented>{
      {"dion_pushes_total", "counter"},
      {"dion_received_bytes_total", "counter"},
      {"dion_sent_bytes_total", "counter"},
      {"dion_push_staleness", "histogram"},
      {"dion_batch_contributions", "histogram"},
      {"dion_step_phase_duration_seconds", "histogram"},
      {"dion_steps_total", "counter"},
      {"dion_failed_steps_total", "counter"},
      {"dion_subscriber_lag_events_total", "counter"},
      {"dion_broadcast_full_value_fallbacks_total", "counter"},
      {"dion_broadcast_conflated_updates_total", "counter"},
      {"dion_lagging_subscribers", "gauge"},
      {"dion_parameter_version", "gauge"},
      {"dion_connected_workers", "gauge"},
      {"dion_push_backpressure_seconds_total", "counter"},
      {"dion_nonfinite_pushes_total", "counter"},
      {"dion_auth_failures_total", "counter"},
      {"dion_subscribers", "gauge"},
      {"dion_orthogonality_error", "gauge"},
      {"dion_worker_loss", "gauge"},
      {"dion_dp_epsilon", "gauge"},
      {"dion_checkpoints_total", "counter"},
      {"dion_checkpoint_duration_seconds", "histogram"},
      {"dion_peer_reduction_duration_seconds", "histogram"},
      {"dion_peer_reduction_failures_total", "counter"},
      {"dion_peer_sent_bytes_total", "counter"},
      {"dion_peer_received_bytes_total", "counter"},
      {"dion_split_step_failures_total", "counter"},
  };
  return *list;
}

TEST(ShardMetricsTest, ExposesEveryDocumentedMetricWithHelpAndType) {
  ShardMetrics metrics;
  const std::string text = metrics.Serialize();
  const auto types = ParseTypes(text);
  for (const Documented& m : DocumentedMetrics()) {
    SCOPED_TRACE(m.name);
    EXPECT_THAT("\n" + text, HasSubstr(absl::StrCat("\n# HELP ", m.name, " ")));
    ASSERT_TRUE(types.count(m.name));
    EXPECT_EQ(types.at(m.name), m.type);
  }
  // Nothing undocumented sneaks in (a new metric must be added to the header and the docs).
  EXPECT_EQ(types.size(), DocumentedMetrics().size());
}

TEST(ShardMetricsTest, PeerReductionTagsAreBoundedAndFailuresGroupedByReason) {
  ShardMetrics metrics;
  for (int i = 0; i < 20; ++i) metrics.RecordPeerReduction(absl::StrCat("tag", i), 0.01);
  metrics.RecordPeerReduction("not a label!", 0.01);
  const std::string text = metrics.Serialize();
  // gram, sketch, R and the first 5 other well-formed tags keep their label; the rest (and
  // malformed ones) are "other".
  EXPECT_EQ(Sample(text, "dion_peer_reduction_duration_seconds_count{tag=\"gram\"}"), 0);
  EXPECT_EQ(Sample(text, "dion_peer_reduction_duration_seconds_count{tag=\"tag4\"}"), 1);
  EXPECT_THAT(text, Not(HasSubstr("tag=\"tag5\"")));
  EXPECT_EQ(Sample(text, "dion_peer_reduction_duration_seconds_count{tag=\"other\"}"), 16);
  metrics.RecordPeerFailure(absl::StatusCode::kDeadlineExceeded);
  metrics.RecordPeerFailure(absl::StatusCode::kFailedPrecondition);
  metrics.RecordPeerFailure(absl::StatusCode::kUnavailable);
  const std::string after = metrics.Serialize();
  EXPECT_EQ(Sample(after, "dion_peer_reduction_failures_total{reason=\"timeout\"}"), 1);
  EXPECT_EQ(Sample(after, "dion_peer_reduction_failures_total{reason=\"invalid\"}"), 1);
  EXPECT_EQ(Sample(after, "dion_peer_reduction_failures_total{reason=\"unavailable\"}"), 1);
}

TEST(ShardMetricsTest, PrivacySpentOnlyMovesUp) {
  // Steps of different parameters end concurrently and may report out of order.
  ShardMetrics metrics;
  EXPECT_EQ(Sample(metrics.Serialize(), "dion_dp_epsilon"), 0);
  metrics.SetPrivacySpent(3.5);
  metrics.SetPrivacySpent(2.0);
  EXPECT_EQ(Sample(metrics.Serialize(), "dion_dp_epsilon"), 3.5);
  metrics.SetPrivacySpent(4.25);
  EXPECT_EQ(Sample(metrics.Serialize(), "dion_dp_epsilon"), 4.25);
}

TEST(ShardMetricsTest, EveryLabelValueExistsAtZeroBeforeAnyRecording) {
  ShardMetrics metrics;
  const std::string text = metrics.Serialize();
  for (const char* result : {"accepted", "duplicate", "stale", "rejected"}) {
    EXPECT_EQ(Sample(text, absl::StrCat("dion_pushes_total{result=\"", result, "\"}")), 0);
  }
  for (const char* phase :
       {"aggregate", "power_iteration", "orthonormalize", "update", "broadcast"}) {
    EXPECT_EQ(
        Sample(text, absl::StrCat("dion_step_phase_duration_seconds_count{phase=\"", phase, "\"}")),
        0);
  }
  for (const char* kind : {"dion", "adamw", "lion", "muon"}) {
    EXPECT_EQ(Sample(text, absl::StrCat("dion_steps_total{kind=\"", kind, "\"}")), 0);
    EXPECT_EQ(Sample(text, absl::StrCat("dion_parameter_version{kind=\"", kind, "\"}")), 0);
    EXPECT_EQ(Sample(text, absl::StrCat("dion_failed_steps_total{kind=\"", kind, "\"}")), 0);
  }
  EXPECT_EQ(Sample(text, "dion_subscriber_lag_events_total"), 0);
  EXPECT_EQ(Sample(text, "dion_broadcast_full_value_fallbacks_total"), 0);
  EXPECT_EQ(Sample(text, "dion_lagging_subscribers"), 0);
  for (const char* result : {"ok", "error"}) {
    EXPECT_EQ(Sample(text, absl::StrCat("dion_checkpoints_total{result=\"", result, "\"}")), 0);
  }
  EXPECT_EQ(Sample(text, "dion_received_bytes_total"), 0);
  EXPECT_EQ(Sample(text, "dion_push_staleness_count"), 0);
  EXPECT_EQ(Sample(text, "dion_connected_workers"), 0);
  EXPECT_EQ(Sample(text, "dion_push_backpressure_seconds_total"), 0);
  EXPECT_EQ(Sample(text, "dion_nonfinite_pushes_total"), 0);
}

TEST(ShardMetricsTest, RecordPushCountsOnlyItsResult) {
  ShardMetrics metrics;
  metrics.RecordPush(PushOutcome::kStale);
  metrics.RecordPush(PushOutcome::kStale);
  metrics.RecordPush(PushOutcome::kAccepted);
  metrics.RecordPush(PushOutcome::kRejected);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_pushes_total{result=\"stale\"}"), 2);
  EXPECT_EQ(Sample(text, "dion_pushes_total{result=\"accepted\"}"), 1);
  EXPECT_EQ(Sample(text, "dion_pushes_total{result=\"rejected\"}"), 1);
  EXPECT_EQ(Sample(text, "dion_pushes_total{result=\"duplicate\"}"), 0);
}

TEST(ShardMetricsTest, ByteCountersAccumulateAndNeverDecrease) {
  ShardMetrics metrics;
  metrics.RecordReceivedBytes(1000);
  metrics.RecordReceivedBytes(24);
  metrics.RecordReceivedBytes(-500);  // a bogus size must not make a counter go down
  metrics.RecordSentBytes(7);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_received_bytes_total"), 1024);
  EXPECT_EQ(Sample(text, "dion_sent_bytes_total"), 7);
}

TEST(ShardMetricsTest, StalenessHistogramBucketsAreCumulative) {
  ShardMetrics metrics;
  for (int64_t tau : {0, 1, 5, 5, 100}) metrics.RecordStaleness(tau);
  const std::string text = metrics.Serialize();
  // Buckets 0,1,2,3,4,6,8,12,16,24,32,64: tau=5 falls in le=6, tau=100 only in +Inf.
  EXPECT_EQ(Sample(text, "dion_push_staleness_bucket{le=\"0\"}"), 1);
  EXPECT_EQ(Sample(text, "dion_push_staleness_bucket{le=\"1\"}"), 2);
  EXPECT_EQ(Sample(text, "dion_push_staleness_bucket{le=\"4\"}"), 2);
  EXPECT_EQ(Sample(text, "dion_push_staleness_bucket{le=\"6\"}"), 4);
  EXPECT_EQ(Sample(text, "dion_push_staleness_bucket{le=\"64\"}"), 4);
  EXPECT_EQ(Sample(text, "dion_push_staleness_bucket{le=\"+Inf\"}"), 5);
  EXPECT_EQ(Sample(text, "dion_push_staleness_count"), 5);
  EXPECT_EQ(Sample(text, "dion_push_staleness_sum"), 111);
}

TEST(ShardMetricsTest, BatchHistogramUsesPowerOfTwoBuckets) {
  ShardMetrics metrics;
  metrics.RecordBatch(1);
  metrics.RecordBatch(3);
  metrics.RecordBatch(256);
  metrics.RecordBatch(300);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_batch_contributions_bucket{le=\"1\"}"), 1);
  EXPECT_EQ(Sample(text, "dion_batch_contributions_bucket{le=\"2\"}"), 1);
  EXPECT_EQ(Sample(text, "dion_batch_contributions_bucket{le=\"4\"}"), 2);
  EXPECT_EQ(Sample(text, "dion_batch_contributions_bucket{le=\"256\"}"), 3);
  EXPECT_EQ(Sample(text, "dion_batch_contributions_bucket{le=\"+Inf\"}"), 4);
  EXPECT_EQ(Sample(text, "dion_batch_contributions_sum"), 560);
}

TEST(ShardMetricsTest, PhaseDurationGoesToItsPhaseOnlyWithExponentialBuckets) {
  ShardMetrics metrics;
  metrics.RecordPhase(StepPhase::kOrthonormalize, 0.003);
  metrics.RecordPhase(StepPhase::kOrthonormalize, 20.0);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_step_phase_duration_seconds_count{phase=\"orthonormalize\"}"), 2);
  EXPECT_EQ(Sample(text, "dion_step_phase_duration_seconds_count{phase=\"update\"}"), 0);

  // Collect the bucket bounds of one phase: they start at 1e-4 s, grow geometrically, end
  // near 10 s, and count cumulatively (0.003 s is in every bucket from le >= 0.003 on).
  const std::string prefix = "dion_step_phase_duration_seconds_bucket{phase=\"orthonormalize\",le=\"";
  std::vector<std::pair<double, double>> buckets;  // (le, count), +Inf excluded
  for (const auto& [key, value] : ParseSamples(text)) {
    if (key.rfind(prefix, 0) != 0) continue;
    const std::string le = key.substr(prefix.size(), key.size() - prefix.size() - 2);
    if (le != "+Inf") buckets.emplace_back(std::strtod(le.c_str(), nullptr), value);
  }
  std::sort(buckets.begin(), buckets.end());
  ASSERT_GE(buckets.size(), 10u);
  EXPECT_NEAR(buckets.front().first, 1e-4, 1e-12);
  EXPECT_GE(buckets.back().first, 8.0);
  EXPECT_LE(buckets.back().first, 20.0);
  for (size_t i = 1; i < buckets.size(); ++i) {
    EXPECT_NEAR(buckets[i].first / buckets[i - 1].first, buckets[1].first / buckets[0].first,
                1e-6);
    EXPECT_EQ(buckets[i].second, buckets[i].first >= 0.003 ? 1 : 0) << "le=" << buckets[i].first;
  }
  EXPECT_EQ(Sample(text, prefix + "+Inf\"}"), 2);
}

TEST(ShardMetricsTest, RecordStepCountsStepsAndKeepsTheHighestVersion) {
  ShardMetrics metrics;
  metrics.RecordStep(OptimizerKind::kDion, 5);
  metrics.RecordStep(OptimizerKind::kDion, 3);  // another parameter lagging behind
  metrics.RecordStep(OptimizerKind::kAdamW, 1);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_steps_total{kind=\"dion\"}"), 2);
  EXPECT_EQ(Sample(text, "dion_steps_total{kind=\"adamw\"}"), 1);
  EXPECT_EQ(Sample(text, "dion_steps_total{kind=\"muon\"}"), 0);
  EXPECT_EQ(Sample(text, "dion_parameter_version{kind=\"dion\"}"), 5);
  EXPECT_EQ(Sample(text, "dion_parameter_version{kind=\"adamw\"}"), 1);
}

TEST(ShardMetricsTest, FailedStepsCountPerKind) {
  ShardMetrics metrics;
  metrics.RecordFailedStep(OptimizerKind::kLion);
  metrics.RecordFailedStep(OptimizerKind::kLion);
  metrics.RecordFailedStep(OptimizerKind::kDion);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_failed_steps_total{kind=\"lion\"}"), 2);
  EXPECT_EQ(Sample(text, "dion_failed_steps_total{kind=\"dion\"}"), 1);
  EXPECT_EQ(Sample(text, "dion_failed_steps_total{kind=\"adamw\"}"), 0);
  EXPECT_EQ(Sample(text, "dion_steps_total{kind=\"lion\"}"), 0) << "a failed step is no step";
}

TEST(ShardMetricsTest, BroadcastLagCountersAndLaggingGauge) {
  ShardMetrics metrics;
  metrics.RecordSubscriberLag();
  metrics.RecordSubscriberLag();
  metrics.RecordFullValueFallback();
  metrics.AddLaggingSubscribers(1);
  metrics.AddLaggingSubscribers(1);
  metrics.AddLaggingSubscribers(-1);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_subscriber_lag_events_total"), 2);
  EXPECT_EQ(Sample(text, "dion_broadcast_full_value_fallbacks_total"), 1);
  EXPECT_EQ(Sample(text, "dion_lagging_subscribers"), 1);
}

TEST(ShardMetricsTest, GaugesShowTheLastValueSet) {
  ShardMetrics metrics;
  metrics.SetConnectedWorkers(8);
  metrics.SetConnectedWorkers(3);
  metrics.SetSubscribers(2);
  metrics.SetOrthogonalityError(2.5e-7);
  metrics.SetWorkerLoss(1.75);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_connected_workers"), 3);
  EXPECT_EQ(Sample(text, "dion_subscribers"), 2);
  EXPECT_DOUBLE_EQ(Sample(text, "dion_orthogonality_error"), 2.5e-7);
  EXPECT_EQ(Sample(text, "dion_worker_loss"), 1.75);
}

TEST(ShardMetricsTest, RecordCheckpointCountsByResultAndTimesBoth) {
  ShardMetrics metrics;
  metrics.RecordCheckpoint(true, 0.5);
  metrics.RecordCheckpoint(true, 0.25);
  metrics.RecordCheckpoint(false, 0.125);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_checkpoints_total{result=\"ok\"}"), 2);
  EXPECT_EQ(Sample(text, "dion_checkpoints_total{result=\"error\"}"), 1);
  EXPECT_EQ(Sample(text, "dion_checkpoint_duration_seconds_count"), 3);
  EXPECT_EQ(Sample(text, "dion_checkpoint_duration_seconds_sum"), 0.875);
}

TEST(ShardMetricsTest, NonFinitePushesAreCountedApart) {
  ShardMetrics metrics;
  metrics.RecordNonFinitePush();
  metrics.RecordNonFinitePush();
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_nonfinite_pushes_total"), 2);
  EXPECT_EQ(Sample(text, "dion_pushes_total{result=\"rejected\"}"), 0);  // RecordPush's job
}

TEST(ShardMetricsTest, BackpressureAddsUpTheWaits) {
  ShardMetrics metrics;
  metrics.RecordBackpressure(0.5);
  metrics.RecordBackpressure(0.125);
  EXPECT_EQ(Sample(metrics.Serialize(), "dion_push_backpressure_seconds_total"), 0.625);
}

TEST(ShardMetricsTest, ConcurrentRecordingLosesNothingAndVersionEndsAtMax) {
  ShardMetrics metrics;
  constexpr int kThreads = 4;
  constexpr int kEach = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics, t] {
      for (int i = 0; i < kEach; ++i) {
        metrics.RecordPush(PushOutcome::kAccepted);
        metrics.RecordStaleness(i % 3);
        metrics.RecordStep(OptimizerKind::kMuon, static_cast<int64_t>(i) * kThreads + t);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const std::string text = metrics.Serialize();
  EXPECT_EQ(Sample(text, "dion_pushes_total{result=\"accepted\"}"), kThreads * kEach);
  EXPECT_EQ(Sample(text, "dion_push_staleness_count"), kThreads * kEach);
  EXPECT_EQ(Sample(text, "dion_steps_total{kind=\"muon\"}"), kThreads * kEach);
  EXPECT_EQ(Sample(text, "dion_parameter_version{kind=\"muon\"}"), kThreads * kEach - 1);
}

// [a-zA-Z_:][a-zA-Z0-9_:]* for metric names; the same without ':' for label names. Written
// out rather than with std::regex, whose libstdc++ internals trip -Wmaybe-uninitialized at -O1.
bool MatchesPrometheusName(absl::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

TEST(ShardMetricsTest, NameCheckerAcceptsAndRefusesWhatPrometheusDoes) {
  EXPECT_TRUE(MatchesPrometheusName("dion_pushes_total", true));
  EXPECT_TRUE(MatchesPrometheusName("job:rate5m", true));
  EXPECT_FALSE(MatchesPrometheusName("job:rate5m", false));
  EXPECT_FALSE(MatchesPrometheusName("5xx", true));
  EXPECT_FALSE(MatchesPrometheusName("dion-pushes", true));
  EXPECT_FALSE(MatchesPrometheusName("", true));
}

TEST(ShardMetricsTest, NamesFollowPrometheusConventions) {
  ShardMetrics metrics;
  const std::string text = metrics.Serialize();
  const auto types = ParseTypes(text);
  ASSERT_FALSE(types.empty());
  for (const auto& [name, type] : types) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(MatchesPrometheusName(name, /*allow_colon=*/true));
    EXPECT_TRUE(absl::StartsWith(name, "dion_")) << "every metric carries the dion_ prefix";
    EXPECT_EQ(absl::EndsWith(name, "_total"), type == "counter") << "_total exactly on counters";
    if (absl::StrContains(name, "duration")) {
      EXPECT_TRUE(absl::EndsWith(name, "_seconds")) << "durations in base unit seconds";
    }
    if (absl::StrContains(name, "bytes")) {
      EXPECT_TRUE(absl::EndsWith(name, "_bytes_total")) << "byte counters in base unit bytes";
    }
  }
  // Every label name of every sample line: name{a="x",b="y"}.
  int labels_seen = 0;
  for (const auto& [key, value] : ParseSamples(text)) {
    const size_t open = key.find('{');
    if (open == std::string::npos) continue;
    const std::string inside = key.substr(open + 1, key.size() - open - 2);
    for (absl::string_view pair : absl::StrSplit(inside, ',')) {
      const absl::string_view label = pair.substr(0, pair.find('='));
      EXPECT_TRUE(MatchesPrometheusName(label, /*allow_colon=*/false)) << key;
      ++labels_seen;
    }
  }
  EXPECT_GT(labels_seen, 0);
}

// --- SerializeMetrics: the text both ShardMetrics and WorkerMetrics return ---------------

TEST(SerializeMetricsTest, PrintsEveryFamilyOfTheRegistryWithHelpTypeAndValues) {
  prometheus::Registry registry;
  EXPECT_EQ(SerializeMetrics(registry), "");
  auto& counters = prometheus::BuildCounter().Name("demo_total").Help("Demo.").Register(registry);
  counters.Add({{"k", "a"}}).Increment(3);
  counters.Add({{"k", "b"}});
  prometheus::BuildGauge().Name("demo_level").Help("Level.").Register(registry).Add({}).Set(2.5);

  const std::string text = SerializeMetrics(registry);
  EXPECT_THAT(text, HasSubstr("# HELP demo_total Demo.\n# TYPE demo_total counter\n"));
  EXPECT_THAT(text, HasSubstr("# HELP demo_level Level.\n# TYPE demo_level gauge\n"));
  EXPECT_EQ(Sample(text, "demo_total{k=\"a\"}"), 3);
  EXPECT_EQ(Sample(text, "demo_total{k=\"b\"}"), 0);
  EXPECT_EQ(Sample(text, "demo_level"), 2.5);
  EXPECT_EQ(ParseSamples(text).size(), 3u);
}

TEST(SerializeMetricsTest, ShardMetricsSerializeIsItsRegistrysText) {
  ShardMetrics metrics;
  metrics.RecordPush(PushOutcome::kDuplicate);
  metrics.SetWorkerLoss(0.75);
  EXPECT_EQ(metrics.Serialize(), SerializeMetrics(*metrics.registry()));
  EXPECT_EQ(Sample(metrics.Serialize(), "dion_pushes_total{result=\"duplicate\"}"), 1);
}

// --- MetricsServer over loopback ------------------------------------------------------------

using testing::HttpGet;

TEST(MetricsServerTest, ServesTheSerializedTextOverHttp) {
  ShardMetrics metrics;
  metrics.RecordPush(PushOutcome::kStale);
  metrics.RecordPush(PushOutcome::kStale);
  metrics.RecordStaleness(3);
  auto server = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);

  const std::string response = HttpGet((*server)->port(), "/metrics");
  ASSERT_THAT(response, HasSubstr(" 200 ")) << response;
  const size_t header_end = response.find("\r\n\r\n");
  ASSERT_NE(header_end, std::string::npos);
  const std::string body = response.substr(header_end + 4);
  EXPECT_EQ(Sample(body, "dion_pushes_total{result=\"stale\"}"), 2);
  // Every line we serialize is served unchanged (the exposer adds its own exposer_* metrics).
  for (absl::string_view line : absl::StrSplit(metrics.Serialize(), '\n')) {
    EXPECT_THAT(body, HasSubstr(std::string(line)));
  }
}

TEST(MetricsServerTest, TwoServersOnPortZeroGetDifferentPorts) {
  ShardMetrics metrics;
  auto first = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  auto second = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NE((*first)->port(), (*second)->port());
}

TEST(MetricsServerTest, BindingATakenAddressIsUnavailableAndNamesIt) {
  ShardMetrics metrics;
  auto first = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string taken = absl::StrCat("127.0.0.1:", (*first)->port());
  auto second = MetricsServer::Start(taken, metrics.registry());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(taken));
  // The first server still serves.
  EXPECT_THAT(HttpGet((*first)->port(), "/metrics"), HasSubstr("dion_pushes_total"));
}

TEST(MetricsServerTest, StopsPromptlyRatherThanAfterCivetwebsPollTimeout) {
  ShardMetrics metrics;
  auto server = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(server.ok()) << server.status();
  const auto start = std::chrono::steady_clock::now();
  server->reset();
  // Without the wake-up connections this takes civetweb's 2 s poll quantum; 1 s leaves room
  // for a loaded machine or a sanitizer build.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

TEST(MetricsServerTest, ServesOnIpv6LoopbackOrSaysWhyNot) {
  const int probe = socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_loopback;
  const bool has_ipv6 =
      probe >= 0 && bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  if (probe >= 0) close(probe);
  if (!has_ipv6) GTEST_SKIP() << "no IPv6 loopback on this machine";
  ShardMetrics metrics;
  auto server = MetricsServer::Start("[::1]:0", metrics.registry());
  if (!server.ok()) {
    // Debian's civetweb is built without IPv6: then the failure must be a clear Unavailable.
    EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(server.status().message()), HasSubstr("[::1]:0"));
    GTEST_SKIP() << "civetweb cannot listen on IPv6 here: " << server.status();
  }
  EXPECT_GT((*server)->port(), 0);
  const auto start = std::chrono::steady_clock::now();
  server->reset();  // the wake-up must reach an IPv6 listener too
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

TEST(MetricsServerTest, RefusesAnAddressWithoutPortOrANullRegistry) {
  ShardMetrics metrics;
  auto no_port = MetricsServer::Start("127.0.0.1", metrics.registry());
  EXPECT_EQ(no_port.status().code(), absl::StatusCode::kInvalidArgument);
  auto no_registry = MetricsServer::Start("127.0.0.1:0", nullptr);
  EXPECT_EQ(no_registry.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dion
