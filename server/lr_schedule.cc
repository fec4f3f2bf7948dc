#include "server/lr_schedule.h"

#include "absl/strings/str_cat.h"

namespace dion {

absl::Status ValidateLrSchedule(const LrSchedule& schedule) {
  const auto bad = [](absl::string_view field, absl::string_view flag, auto value,
                      absl::string_view expected) {
    return absl::InvalidArgumentError(absl::StrCat("lr schedule: ", field, " (", flag,
                                                   ") must be ", expected, ", got ", value));
  };
  if (schedule.total_samples < 0) {
    return bad("total_samples", "--lr_schedule_samples", schedule.total_samples,
               ">= 0 (0: constant lr)");
  }
  if (!(schedule.cooldown_fraction >= 0 && schedule.cooldown_fraction <= 1)) {
    return bad("cooldown_fraction", "--lr_cooldown_fraction", schedule.cooldown_fraction,
               "in [0, 1]");
  }
  if (!(schedule.final_scale >= 0 && schedule.final_scale <= 1)) {
    return bad("final_scale", "--lr_final_scale", schedule.final_scale, "in [0, 1]");
  }
  return absl::OkStatus();
}

double LrScale(const LrSchedule& schedule, int64_t samples_applied) {
  if (schedule.total_samples <= 0) return 1.0;
  const double total = static_cast<double>(schedule.total_samples);
  const double s = static_cast<double>(samples_applied);
  if (s >= total) return schedule.final_scale;
  const double length = schedule.cooldown_fraction * total;
  const double start = total - length;
  if (length <= 0 || s < start) return 1.0;
  return 1.0 - (1.0 - schedule.final_scale) * (s - start) / length;
}

}  // namespace dion
