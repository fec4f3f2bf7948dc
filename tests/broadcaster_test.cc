// The broadcaster's conflation (server/broadcaster.h): a subscriber that lags gets one full
// value in place of queued updates that cost more, never a gap, and what it is sent otherwise
// is every update in order.
#include "server/broadcaster.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"

#include "server/metrics.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

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

struct Shape {
  std::string parameter;
  int m = 0, n = 0;
};

// A shard's broadcaster (queues of 64) over its current values, which start at version 0 of
// `shapes`, and one subscriber that holds version 0 of each.
struct OneSubscriber {
  explicit OneSubscriber(const std::vector<Shape>& shapes) {
    std::vector<std::string> names;
    absl::flat_hash_map<std::string, int64_t> have;
    for (const Shape& s : shapes) {
      current[s.parameter] = Value(s.parameter, 0, s.m, s.n);
      names.push_back(s.parameter);
      have[s.parameter] = 0;
    }
    subscription = broadcaster.Subscribe(names, have);
  }

  // Publishes versions first..last of `parameter` as the shard would: the state moves first.
  void PublishSteps(const std::string& parameter, int first, int last, int m, int n, int r) {
    for (int v = first; v <= last; ++v) {
      current[parameter] = Value(parameter, v, m, n);
      broadcaster.Publish(Step(parameter, v, m, n, r));
    }
  }
  void PublishValue(const std::string& parameter, int v, int m, int n) {
    current[parameter] = Value(parameter, v, m, n);
    broadcaster.Publish(Value(parameter, v, m, n));
  }
  // Everything the subscriber is sent until its queue stays empty for 10 ms.
  std::vector<std::shared_ptr<const VersionUpdate>> Drain() {
    std::vector<std::shared_ptr<const VersionUpdate>> sent;
    while (auto next = subscription->Next(absl::Milliseconds(10))) sent.push_back(*next);
    return sent;
  }
  double Conflated() {
    return testing::MetricValue(metrics.Serialize(), "dion_broadcast_conflated_updates_total");
  }

  ShardMetrics metrics;
  std::map<std::string, VersionUpdate> current;
  Broadcaster broadcaster{{64},
                          {[this](const std::string& p) -> absl::StatusOr<VersionUpdate> {
                             return current.at(p);
                           },
                           [this](const std::string& p) -> absl::StatusOr<int64_t> {
                             return current.at(p).version;
                           }},
                          &metrics};
  std::unique_ptr<Subscription> subscription;  // last: destroyed before the broadcaster
};

// 96 x 64 at rank 8: a step is 1280 elements, the value 6144, so from 5 queued steps on
// (6400 >= 6144) one value is cheaper; 4 steps (5120) are not.
TEST(BroadcasterConflation, StepsThatOutweighTheValueBecomeOneValue) {
  OneSubscriber shard({{"w", 96, 64}});
  shard.PublishSteps("w", 1, 4, 96, 64, 8);
  std::vector<std::shared_ptr<const VersionUpdate>> sent = shard.Drain();
  ASSERT_EQ(sent.size(), 4u) << "4 steps cost less than the value: each is sent";
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(sent[i]->is_low_rank());
    EXPECT_EQ(sent[i]->version, i + 1);
  }
  EXPECT_EQ(shard.Conflated(), 0);

  shard.PublishSteps("w", 5, 9, 96, 64, 8);
  sent = shard.Drain();
  ASSERT_EQ(sent.size(), 1u) << "5 steps outweigh the value: one value in their place";
  EXPECT_FALSE(sent[0]->is_low_rank());
  EXPECT_EQ(sent[0]->version, 9);
  EXPECT_EQ(shard.Conflated(), 5);

  // Afterwards the steps apply on top of that value again.
  shard.PublishSteps("w", 10, 10, 96, 64, 8);
  sent = shard.Drain();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_TRUE(sent[0]->is_low_rank());
  EXPECT_EQ(sent[0]->version, 10);
}

// Other parameters' updates in the queue are neither counted nor dropped, and keep their order.
TEST(BroadcasterConflation, OnlyTheParametersUpdatesAreReplaced) {
  OneSubscriber shard({{"w", 96, 64}, {"v", 96, 64}});
  for (int v = 1; v <= 5; ++v) {
    shard.PublishSteps("w", v, v, 96, 64, 8);
    shard.PublishSteps("v", v, v, 96, 64, 2);  // 320 elements a step: never outweighs
  }
  const std::vector<std::shared_ptr<const VersionUpdate>> sent = shard.Drain();
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
  EXPECT_EQ(shard.Conflated(), 5);
}

// Values (element-wise optimizers) are superseded by a newer queued value whatever their size.
TEST(BroadcasterConflation, AValueWithANewerOneQueuedIsNotSent) {
  OneSubscriber shard({{"b", 1, 16}});
  for (int v = 1; v <= 3; ++v) shard.PublishValue("b", v, 1, 16);
  const std::vector<std::shared_ptr<const VersionUpdate>> sent = shard.Drain();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0]->version, 3);
  EXPECT_EQ(std::get<Matrix>(sent[0]->content)(0, 0), 3.0f);
  EXPECT_EQ(shard.Conflated(), 3);
}

}  // namespace
}  // namespace dion
