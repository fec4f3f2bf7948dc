#include "worker/client/backoff.h"

#include <algorithm>
#include <cmath>

#include "absl/time/clock.h"

namespace dion {

Backoff::Backoff(const BackoffOptions& options, uint64_t seed) : options_(options), rng_(seed) {
  Reset(absl::Now());
}

absl::Duration Backoff::NextDelay() {
  // Cap grows geometrically; the exponent is bounded so the double never overflows.
  const double growth = std::pow(options_.multiplier, std::min(attempts_, 60));
  const absl::Duration cap = std::min(options_.max_delay, options_.initial_delay * growth);
  ++attempts_;
  return cap * rng_.Uniform();
}

void Backoff::Reset(absl::Time now) {
  attempts_ = 0;
  deadline_ = now + options_.give_up_after;
}

}  // namespace dion
