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
    if (spec.optimizer != OptimizerKind::kDion) {
      bytes += 4 * spec.rows() * spec.cols();
      continue;
    }
    const int64_t owners = std::max(1, spec.split_owners);
    const int64_t tall = std::max(spec.rows(), spec.cols());
    const int64_t short_side = std::min(spec.rows(), spec.cols());
    bytes += 4 * (tall + owners * short_side) * CompressionRank(spec, fraction);
  }
  return bytes;
}

double NextRankFraction(absl::Span<const ParamSpec> specs, double current, double budget_bytes,
                        double ceiling) {
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
  const double grown = std::min({1.0, ceiling, current * 2});
  const int64_t grown_bytes = PushBytesAt(specs, grown);
  if (grown_bytes > bytes &&  // a doubling that sends nothing more is no rung
      static_cast<double>(grown_bytes) <= kAutoRankGrowMargin * budget_bytes) {
    return grown;
  }
  return current;
}

int64_t PayloadBytes(const Contribution& c, int owners) {
  if (!c.is_low_rank()) return 4 * c.gradient().size();  // dense: cut by rows, nothing repeated
  const int64_t p = c.factors().P.size();
  const int64_t r = c.factors().R.size();
  // Each owner gets its rows of the tall side's factor and the whole other one.
  return 4 * (std::max(p, r) + std::max(1, owners) * std::min(p, r));
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
    : specs_(std::move(specs)), ceiling_(start_fraction) {
  state_.fraction = start_fraction;
}

void PushRankController::OnSent(int64_t payload_bytes, absl::Time now) {
  MutexLock lock(&mu_);
  if (window_start_ == absl::InfinitePast()) window_start_ = now;
  window_sent_ += payload_bytes;
  MaybeDecide(now);
}

void PushRankController::OnDelivery(absl::Span<const double> rates, absl::Time now) {
  MutexLock lock(&mu_);
  if (window_start_ == absl::InfinitePast()) {
    if (rates.empty()) return;
    window_start_ = now;
  }
  for (double rate : rates) {
    if (window_.size() < kAutoRankWindowSamples) window_.push_back(rate);
  }
  MaybeDecide(now);
}

void PushRankController::MaybeDecide(absl::Time now) {
  const absl::Duration length = now - window_start_;
  if (length < kAutoRankWindow) return;
  if (!window_.empty()) {
    auto quartile = window_.begin() + static_cast<std::ptrdiff_t>(window_.size() / 4);
    std::nth_element(window_.begin(), quartile, window_.end());
    // The previous window counts only if it ended right before this one (not before a pause).
    const bool adjacent = window_start_ - previous_end_ <= kAutoRankWindow;
    state_.rate_bytes_per_s = adjacent ? std::max(*quartile, previous_quartile_) : *quartile;
    previous_quartile_ = *quartile;
    previous_end_ = now;
  }
  state_.sent_bytes_per_s =
      static_cast<double>(window_sent_) / absl::ToDoubleSeconds(length);
  const bool measured = !window_.empty();
  window_.clear();
  window_sent_ = 0;
  window_start_ = absl::InfinitePast();
  if (!measured || state_.sent_bytes_per_s <= 0) return;  // nothing to judge this window by
  if (++windows_since_change_ < kAutoRankSettleWindows) return;
  const double budget = static_cast<double>(PushBytesAt(specs_, state_.fraction)) *
                        kAutoRankLinkShare * state_.rate_bytes_per_s / state_.sent_bytes_per_s;
  const double next = NextRankFraction(specs_, state_.fraction, budget, ceiling_);
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
