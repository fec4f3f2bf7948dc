// Reconnect backoff (worker/client/backoff.h): jittered waits under a growing cap, and a budget.
#include "worker/client/backoff.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace dion {
namespace {

TEST(Backoff, WaitsStayUnderAGeometricallyGrowingCap) {
  BackoffOptions options;
  options.initial_delay = absl::Milliseconds(10);
  options.max_delay = absl::Milliseconds(200);
  options.multiplier = 2.0;
  Backoff backoff(options, 1);
  absl::Duration longest_late = absl::ZeroDuration();
  for (int attempt = 0; attempt < 40; ++attempt) {
    const absl::Duration cap =
        std::min(options.max_delay, options.initial_delay * (1 << std::min(attempt, 20)));
    const absl::Duration d = backoff.NextDelay();
    EXPECT_GE(d, absl::ZeroDuration());
    EXPECT_LE(d, cap) << "attempt " << attempt;
    if (attempt >= 10) longest_late = std::max(longest_late, d);
  }
  // Later waits use the whole 200 ms cap (jitter is uniform: 30 draws all below 100 ms would
  // have probability 2^-30).
  EXPECT_GT(longest_late, absl::Milliseconds(100));
}

TEST(Backoff, JitterDiffersBetweenSeeds) {
  BackoffOptions options;
  Backoff a(options, 1), b(options, 2);
  int same = 0;
  for (int i = 0; i < 10; ++i) same += a.NextDelay() == b.NextDelay();
  EXPECT_LT(same, 10);
}

TEST(Backoff, ExpiresAfterTheBudgetAndResetStartsANewOne) {
  BackoffOptions options;
  options.give_up_after = absl::Seconds(5);
  Backoff backoff(options, 1);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  backoff.Reset(t0);
  EXPECT_FALSE(backoff.Expired(t0 + absl::Seconds(4)));
  EXPECT_TRUE(backoff.Expired(t0 + absl::Seconds(5)));
  (void)backoff.NextDelay();
  backoff.Reset(t0 + absl::Seconds(10));
  EXPECT_EQ(backoff.attempts(), 0);
  EXPECT_FALSE(backoff.Expired(t0 + absl::Seconds(14)));
}

}  // namespace
}  // namespace dion
