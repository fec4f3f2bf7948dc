// The broadcaster's conflation (server/broadcaster.h): a subscriber that lags gets one full
// value in place of queued updates that cost more, never a gap, and what it is sent otherwise
// is every update in order.
#include "server/broadcaster.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "server/metrics.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

// The shard's current state as the broadcaster reads it: one value per parameter.
struct State {
  std::map<std::string, VersionUpdate> current;
  VersionSource Source() {
    return {[this](const std::string& p) -> absl::StatusOr<VersionUpdate> {
              return current.at(p);
            },
            [this](const std::string& p) -> absl::StatusOr<int64_t> {
              return current.at(p).version;
            }};
  }
};

// A low-rank step of an m x n matrix at rank r: (m + n) r elements against m n for the value.
VersionUpdate Step(const std::string& parameter, int64_t version, int m, int n, int r) {
  VersionUpdate u;
  u.parameter = parameter;
  u.version = version;
  LowRankStep step;
  step.P = Matrix::Constant(m, r, static_cast<float>(version));
  step.Q = Matrix::Constant(n, r, 1.0f);
  u.content = step;
  return u;
}

VersionUpdate Value(const std::string& parameter, int64_t version, int m, int n) {
  VersionUpdate u;
  u.parameter = parameter;
  u.version = version;
  u.content = Matrix(Matrix::Constant(m, n, static_cast<float>(version)));
  return u;
}

// Publishes versions first..last of `parameter` as the shard would: the state moves first.
void PublishSteps(Broadcaster& b, State& state, const std::string& parameter, int first,
                  int last, int m, int n, int r) {
  for (int v = first; v <= last; ++v) {
    state.current[parameter] = Value(parameter, v, m, n);
    b.Publish(Step(parameter, v, m, n, r));
  }
}

std::vector<std::shared_ptr<const VersionUpdate>> Drain(Subscription& s) {
  std::vector<std::shared_ptr<const VersionUpdate>> sent;
  while (auto next = s.Next(absl::Milliseconds(10))) sent.push_back(*next);
  return sent;
}

double Conflated(ShardMetrics& metrics) {
  return testing::MetricValue(metrics.Serialize(), "dion_broadcast_conflated_updates_total");
}

// 96 x 64 at rank 8: a step is 1280 elements, the value 6144, so from 5 queued steps on
// (6400 >= 6144) one value is cheaper; 4 steps (5120) are not.
TEST(BroadcasterConflation, StepsThatOutweighTheValueBecomeOneValue) {
  ShardMetrics metrics;
  State state;
  state.current["w"] = Value("w", 0, 96, 64);
  Broadcaster b({64}, state.Source(), &metrics);
  std::unique_ptr<Subscription> s = b.Subscribe({"w"}, {{"w", 0}});

  PublishSteps(b, state, "w", 1, 4, 96, 64, 8);
  std::vector<std::shared_ptr<const VersionUpdate>> sent = Drain(*s);
  ASSERT_EQ(sent.size(), 4u) << "4 steps cost less than the value: each is sent";
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(sent[i]->is_low_rank());
    EXPECT_EQ(sent[i]->version, i + 1);
  }
  EXPECT_EQ(Conflated(metrics), 0);

  PublishSteps(b, state, "w", 5, 9, 96, 64, 8);
  sent = Drain(*s);
  ASSERT_EQ(sent.size(), 1u) << "5 steps outweigh the value: one value in their place";
  EXPECT_FALSE(sent[0]->is_low_rank());
  EXPECT_EQ(sent[0]->version, 9);
  EXPECT_EQ(Conflated(metrics), 5);

  // Afterwards the steps apply on top of that value again.
  PublishSteps(b, state, "w", 10, 10, 96, 64, 8);
  sent = Drain(*s);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_TRUE(sent[0]->is_low_rank());
  EXPECT_EQ(sent[0]->version, 10);
}

// Other parameters' updates in the queue are neither counted nor dropped, and keep their order.
TEST(BroadcasterConflation, OnlyTheParametersUpdatesAreReplaced) {
  ShardMetrics metrics;
  State state;
  state.current["w"] = Value("w", 0, 96, 64);
  state.current["v"] = Value("v", 0, 96, 64);
  Broadcaster b({64}, state.Source(), &metrics);
  std::unique_ptr<Subscription> s = b.Subscribe({"w", "v"}, {{"w", 0}, {"v", 0}});
  for (int v = 1; v <= 5; ++v) {
    PublishSteps(b, state, "w", v, v, 96, 64, 8);
    PublishSteps(b, state, "v", v, v, 96, 64, 2);  // 320 elements a step: never outweighs
  }
  const std::vector<std::shared_ptr<const VersionUpdate>> sent = Drain(*s);
  std::vector<int64_t> v_versions;
  int w_values = 0, w_steps = 0;
  for (const auto& u : sent) {
    if (u->parameter == "v") {
      EXPECT_TRUE(u->is_low_rank());
      v_versions.push_back(u->version);
    } else {
      (u->is_low_rank() ? w_steps : w_values) += 1;
      if (!u->is_low_rank()) EXPECT_EQ(u->version, 5);
    }
  }
  EXPECT_EQ(v_versions, (std::vector<int64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(w_values, 1);
  EXPECT_EQ(w_steps, 0);
  EXPECT_EQ(Conflated(metrics), 5);
}

// Values (element-wise optimizers) are superseded by a newer queued value whatever their size.
TEST(BroadcasterConflation, AValueWithANewerOneQueuedIsNotSent) {
  ShardMetrics metrics;
  State state;
  state.current["b"] = Value("b", 0, 1, 16);
  Broadcaster b({64}, state.Source(), &metrics);
  std::unique_ptr<Subscription> s = b.Subscribe({"b"}, {{"b", 0}});
  for (int v = 1; v <= 3; ++v) {
    state.current["b"] = Value("b", v, 1, 16);
    b.Publish(Value("b", v, 1, 16));
  }
  const std::vector<std::shared_ptr<const VersionUpdate>> sent = Drain(*s);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0]->version, 3);
  EXPECT_EQ(std::get<Matrix>(sent[0]->content)(0, 0), 3.0f);
  EXPECT_EQ(Conflated(metrics), 3);
}

}  // namespace
}  // namespace dion
