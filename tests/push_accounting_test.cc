#include "server/push_accounting.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/metrics.h"

namespace dion {
namespace {

PushSource Known(absl::string_view worker, absl::string_view parameter) {
  return {worker, true, parameter, true};
}

TEST(PushCounts, AddCountsEachOutcomeInItsOwnField) {
  PushCounts counts;
  counts.Add(PushOutcome::kAccepted);
  counts.Add(PushOutcome::kDuplicate);
  counts.Add(PushOutcome::kDuplicate);
  counts.Add(PushOutcome::kStale);
  counts.Add(PushOutcome::kStale);
  counts.Add(PushOutcome::kStale);
  counts.Add(PushOutcome::kRejected);
  EXPECT_EQ(counts.accepted, 1);
  EXPECT_EQ(counts.duplicate, 2);
  EXPECT_EQ(counts.stale, 3);
  EXPECT_EQ(counts.rejected, 1);
}

TEST(PushAccounting, CountsInTotalPerParameterAndPerWorker) {
  PushAccounting accounting(nullptr);
  accounting.Count(Known("w1", "a"), PushOutcome::kAccepted, 0.5);
  accounting.Count(Known("w1", "b"), PushOutcome::kStale, 9.0);
  accounting.Count(Known("w2", "a"), PushOutcome::kDuplicate, 0.0);
  const PushTally tally = accounting.Tally();
  EXPECT_EQ(tally.total.accepted, 1);
  EXPECT_EQ(tally.total.stale, 1);
  EXPECT_EQ(tally.total.duplicate, 1);
  EXPECT_EQ(tally.parameters.at("a").accepted, 1);
  EXPECT_EQ(tally.parameters.at("a").duplicate, 1);
  EXPECT_EQ(tally.parameters.at("b").stale, 1);
  EXPECT_EQ(tally.workers.at("w1").pushes.accepted, 1);
  EXPECT_EQ(tally.workers.at("w1").pushes.stale, 1);
  EXPECT_EQ(tally.workers.at("w2").pushes.duplicate, 1);
  // The last loss is that of the latest accepted push, not of a stale one.
  EXPECT_EQ(tally.workers.at("w1").last_loss, 0.5);
}

TEST(PushAccounting, UnknownNamesCountOnlyInTheTotal) {
  PushAccounting accounting(nullptr);
  for (int i = 0; i < 100; ++i) {
    const std::string name = "junk" + std::to_string(i);
    accounting.Count({name, false, name, false}, PushOutcome::kRejected, 0.0);
  }
  accounting.Count({"w", true, "nope", false}, PushOutcome::kRejected, 0.0);
  const PushTally tally = accounting.Tally();
  EXPECT_EQ(tally.total.rejected, 101);
  EXPECT_TRUE(tally.parameters.empty());
  ASSERT_EQ(tally.workers.size(), 1u);
  EXPECT_EQ(tally.workers.at("w").pushes.rejected, 1);
}

TEST(PushAccounting, ReportsEveryOutcomeToTheMetrics) {
  ShardMetrics metrics;
  PushAccounting accounting(&metrics);
  accounting.Count(Known("w", "a"), PushOutcome::kAccepted, 0.0);
  accounting.Count(Known("w", "a"), PushOutcome::kRejected, 0.0);
  accounting.Count({"x", false, "y", false}, PushOutcome::kRejected, 0.0);
  const std::string text = metrics.Serialize();
  EXPECT_NE(text.find("dion_pushes_total{result=\"accepted\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("dion_pushes_total{result=\"rejected\"} 2"), std::string::npos) << text;
}

TEST(PushAccounting, ConcurrentCountsAreNotLost) {
  PushAccounting accounting(nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) accounting.Count(Known("w", "a"), PushOutcome::kAccepted, 1);
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(accounting.Tally().total.accepted, 4000);
  EXPECT_EQ(accounting.Tally().parameters.at("a").accepted, 4000);
}

}  // namespace
}  // namespace dion
