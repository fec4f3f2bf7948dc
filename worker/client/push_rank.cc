#include "worker/client/push_rank.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "worker/client/client.h"

namespace dion {

int CompressionRank(const ParamSpec& spec, double fraction) {
  const int64_t m = spec.rows();
  const int64_t n = spec.cols();
  const int64_t short_side = std::min(m, n);
  const int64_t break_even = std::max<int64_t>(1, m * n / (m + n));
  const int64_t rank = std::llround(fraction * static_cast<double>(short_side));
  return static_cast<int>(std::clamp<int64_t>(rank, 1, std::min(short_side, break_even)));
}

int64_t PushBytesAt(absl::Span<const ParamSpec> specs, double fraction) {
  int64_t bytes = 0;
  for (const ParamSpec& spec : specs) {
    bytes += spec.optimizer == OptimizerKind::kDion
                 ? 4 * (spec.rows() + spec.cols()) * CompressionRank(spec, fraction)
                 : 4 * spec.rows() * spec.cols();
  }
  return bytes;
}

double NextRankFraction(absl::Span<const ParamSpec> specs, double current, double budget_bytes) {
  int64_t bytes = PushBytesAt(specs, current);
  if (static_cast<double>(bytes) > budget_bytes) {
    // A halving may save nothing (ranks capped at the break-even rank), so the floor is where
    // every rank is 1 (fraction 0), not the first halving that saves nothing.
    const int64_t floor = PushBytesAt(specs, 0);
    double f = current;
    while (static_cast<double>(bytes) > budget_bytes && bytes > floor) {
      f /= 2;
      bytes = PushBytesAt(specs, f);
    }
    return f;
  }
  const double grown = std::min(1.0, current * 2);
  const int64_t grown_bytes = PushBytesAt(specs, grown);
  if (grown_bytes > bytes &&  // a doubling that sends nothing more is no rung
      static_cast<double>(grown_bytes) <= kAutoRankGrowMargin * budget_bytes) {
    return grown;
  }
  return current;
}

int64_t PayloadBytes(const Contribution& c) {
  if (c.is_low_rank()) return 4 * (c.factors().P.size() + c.factors().R.size());
  return 4 * c.gradient().size();
}

bool AbslParseFlag(absl::string_view text, PushRankSetting* setting, std::string* error) {
  if (text == "auto") {
    *setting = PushRankSetting{true, 0};
    return true;
  }
  double fraction = 0;
  if (!absl::SimpleAtod(text, &fraction) || !(fraction >= 0 && fraction <= 1)) {
    *error = absl::StrCat("expected a fraction in [0, 1] or 'auto', got '", text, "'");
    return false;
  }
  *setting = PushRankSetting{false, fraction};
  return true;
}

std::string AbslUnparseFlag(const PushRankSetting& setting) {
  return setting.adaptive ? "auto" : absl::StrCat(setting.fraction);
}

double StartingPushRankFraction(const PushRankSetting& setting, double adaptive_start,
                                double rank_fraction) {
  if (setting.adaptive) return adaptive_start;
  return setting.fraction > 0 ? setting.fraction : rank_fraction;
}

PushRankController::PushRankController(std::vector<ParamSpec> specs, double start_fraction)
    : specs_(std::move(specs)) {
  state_.fraction = start_fraction;
}

void PushRankController::OnStep(absl::Time now) {
  MutexLock lock(&mu_);
  if (last_step_ != absl::InfinitePast()) {
    double interval = absl::ToDoubleSeconds(now - last_step_);
    double& step = state_.step_seconds;
    if (step > 0) interval = std::min(interval, 4 * step);
    step = step > 0 ? (1 - kAutoRankEwmaWeight) * step + kAutoRankEwmaWeight * interval
                    : interval;
  }
  last_step_ = now;
}

void PushRankController::AdvanceClock(absl::Time now) {
  if (in_flight_ > 0 && now > last_event_) window_busy_ += now - last_event_;
  last_event_ = std::max(last_event_, now);
}

void PushRankController::OnSent(absl::Time now) {
  MutexLock lock(&mu_);
  AdvanceClock(now);
  ++in_flight_;
}

void PushRankController::OnSettled(int64_t bytes, absl::Time now) {
  MutexLock lock(&mu_);
  AdvanceClock(now);
  in_flight_ = std::max(0, in_flight_ - 1);
  window_bytes_ += bytes;
  MaybeDecide();
}

void PushRankController::MaybeDecide() {
  if (window_busy_ < kAutoRankWindow || window_bytes_ <= 0) return;
  const double sample = static_cast<double>(window_bytes_) / absl::ToDoubleSeconds(window_busy_);
  double& rate = state_.rate_bytes_per_s;
  rate = rate > 0 ? (1 - kAutoRankEwmaWeight) * rate + kAutoRankEwmaWeight * sample : sample;
  window_busy_ = absl::ZeroDuration();
  window_bytes_ = 0;
  if (++windows_since_change_ < kAutoRankSettleWindows || state_.step_seconds <= 0) return;
  const double budget = rate * state_.step_seconds * kAutoRankLinkShare;
  const double next = NextRankFraction(specs_, state_.fraction, budget);
  if (next != state_.fraction) {
    state_.fraction = next;
    ++state_.changes;
    windows_since_change_ = 0;
  }
}

PushRankController::State PushRankController::state() const {
  MutexLock lock(&mu_);
  return state_;
}

double PushRankController::fraction() const {
  MutexLock lock(&mu_);
  return state_.fraction;
}

}  // namespace dion
