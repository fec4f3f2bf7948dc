// The shard's learning-rate schedule (server/lr_schedule.h) against a reference written from
// the formula's breakpoints, and its validation.
#include "server/lr_schedule.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/match.h"

namespace dion {
namespace {

// Straight from the definition: the cooldown is the segment from (start, 1) to (total, final).
double Reference(int64_t total, double cooldown, double final_scale, int64_t s) {
  if (total == 0) return 1.0;
  if (s >= total) return final_scale;
  const double start = (1.0 - cooldown) * static_cast<double>(total);
  if (static_cast<double>(s) < start) return 1.0;
  const double x0 = start, y0 = 1.0, x1 = static_cast<double>(total), y1 = final_scale;
  return y0 + (y1 - y0) * (static_cast<double>(s) - x0) / (x1 - x0);
}

TEST(LrSchedule, MatchesTheReferenceAcrossTheRun) {
  for (const LrSchedule schedule : {LrSchedule{1000, 0.2, 0.1}, LrSchedule{720000, 0.2, 0.1},
                                    LrSchedule{999, 0.5, 0.0}, LrSchedule{10, 1.0, 0.25}}) {
    for (int64_t k = 0; k <= 220; ++k) {
      const int64_t s = schedule.total_samples * k / 200;  // to 1.1 x total
      EXPECT_NEAR(LrScale(schedule, s),
                  Reference(schedule.total_samples, schedule.cooldown_fraction,
                            schedule.final_scale, s),
                  1e-12)
          << "total " << schedule.total_samples << " s " << s;
    }
  }
}

TEST(LrSchedule, HandPickedPoints) {
  const LrSchedule schedule{1000, 0.2, 0.1};
  EXPECT_EQ(LrScale(schedule, 0), 1.0);
  EXPECT_EQ(LrScale(schedule, 799), 1.0);
  EXPECT_DOUBLE_EQ(LrScale(schedule, 800), 1.0);
  EXPECT_DOUBLE_EQ(LrScale(schedule, 900), 0.55);  // halfway down from 1 to 0.1
  EXPECT_DOUBLE_EQ(LrScale(schedule, 1000), 0.1);
  EXPECT_DOUBLE_EQ(LrScale(schedule, 5000), 0.1);  // past the horizon: stays at the end value
}

TEST(LrSchedule, ZeroTotalOrZeroCooldownKeepTheLearningRate) {
  EXPECT_EQ(LrScale(LrSchedule{}, 0), 1.0);
  EXPECT_EQ(LrScale(LrSchedule{}, int64_t{1} << 40), 1.0);
  const LrSchedule no_cooldown{1000, 0.0, 0.1};
  EXPECT_EQ(LrScale(no_cooldown, 999), 1.0);
  EXPECT_DOUBLE_EQ(LrScale(no_cooldown, 1000), 0.1);
}

TEST(LrSchedule, ValidationNamesTheField) {
  EXPECT_TRUE(ValidateLrSchedule(LrSchedule{}).ok());
  EXPECT_TRUE(ValidateLrSchedule(LrSchedule{100, 1.0, 0.0}).ok());
  const struct {
    LrSchedule schedule;
    std::string field;
  } bad[] = {{{-1, 0.2, 0.1}, "total_samples"},
             {{100, -0.1, 0.1}, "cooldown_fraction"},
             {{100, 1.5, 0.1}, "cooldown_fraction"},
             {{100, 0.2, -0.5}, "final_scale"},
             {{100, 0.2, 1.5}, "final_scale"},
             {{100, 0.2, std::numeric_limits<double>::quiet_NaN()}, "final_scale"}};
  for (const auto& b : bad) {
    const absl::Status s = ValidateLrSchedule(b.schedule);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.field;
    EXPECT_TRUE(absl::StrContains(s.message(), b.field)) << s;
  }
}

}  // namespace
}  // namespace dion
