// Polling for tests that wait for something another thread or process does.
// Thread-safety: as the predicate.
#ifndef DION_TESTS_WAIT_TEST_UTIL_H_
#define DION_TESTS_WAIT_TEST_UTIL_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dion::testing {

// Polls `done` every 5 ms until it returns true (true) or `timeout` has passed (false).
template <typename Predicate>
bool WaitUntil(Predicate done, absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

}  // namespace dion::testing

#endif  // DION_TESTS_WAIT_TEST_UTIL_H_
