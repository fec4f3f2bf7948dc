// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff and
// Jitter", 2015), for reconnecting to a shard that is unavailable: the n-th wait is uniform in
// [0, min(max_delay, initial_delay * multiplier^n)], so many workers that lost the same shard
// do not come back in lockstep. A deadline bounds the whole retry: once it has passed the
// caller gives up with a clear error.
//
// Thread-safety: not safe for concurrent use; one Backoff per retrying loop.
#ifndef DION_WORKER_BACKOFF_H_
#define DION_WORKER_BACKOFF_H_

#include <cstdint>

#include "absl/time/time.h"
#include "common/rng.h"

namespace dion {

struct BackoffOptions {
  absl::Duration initial_delay = absl::Milliseconds(100);  // cap of the first wait
  absl::Duration max_delay = absl::Seconds(5);             // cap of any wait
  double multiplier = 2.0;                                 // growth of the cap per attempt
  absl::Duration give_up_after = absl::Seconds(60);        // total budget of one outage
};

class Backoff {
 public:
  Backoff(const BackoffOptions& options, uint64_t seed);

  // The wait before the next attempt (jittered), and advances the attempt count.
  absl::Duration NextDelay();
  // Starts a new outage: attempt 0 and a fresh budget counted from `now`.
  void Reset(absl::Time now);
  // True once `now` is past the budget of the current outage.
  bool Expired(absl::Time now) const { return now >= deadline_; }
  int attempts() const { return attempts_; }

 private:
  BackoffOptions options_;
  Rng rng_;
  int attempts_ = 0;
  absl::Time deadline_ = absl::InfiniteFuture();
};

}  // namespace dion

#endif  // DION_WORKER_BACKOFF_H_
