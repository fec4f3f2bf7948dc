// Where the server's batching code reads the time, so tests can drive deadlines and arrival
// rates without sleeping.
//
// Thread-safety: Clock implementations are safe for concurrent use.
#ifndef DION_SERVER_CLOCK_H_
#define DION_SERVER_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dion {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // The wall clock (absl::Now()); a process-wide object that is never destroyed.
  static const Clock* Real();
};

// A clock that only moves when told to. Starts at the Unix epoch.
class FakeClock : public Clock {
 public:
  absl::Time Now() const override {
    MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    MutexLock lock(&mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  mutable Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::UnixEpoch();
};

}  // namespace dion

#endif  // DION_SERVER_CLOCK_H_
