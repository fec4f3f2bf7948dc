// The compute pool of a shard: closed batches wait here until a compute thread applies them.
// Batches of one lane (one parameter) are applied strictly in version order, one at a time;
// different lanes are applied in parallel on up to `threads` threads. Each lane's backlog is
// bounded: WaitForRoom blocks a producer while its lane has `max_pending` batches waiting.
//
// Thread-safety: safe for concurrent use. The apply callbacks run on the pool's threads with
// no lock of the queue held.
#ifndef DION_SERVER_STEP_QUEUE_H_
#define DION_SERVER_STEP_QUEUE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/contribution.h"
#include "common/mutex.h"

namespace dion {

struct StepQueueStats {
  int64_t pending = 0;           // enqueued batches not yet applied (all lanes)
  int64_t failed = 0;            // batches whose apply callback returned an error
  int64_t max_pending_seen = 0;  // the most batches one lane has had waiting at once
  int64_t backpressure_waits = 0;  // WaitForRoom calls that had to wait
};

class StepQueue {
 public:
  using LaneId = int;
  // Applies one batch. An error is counted (StepQueueStats::failed) and the lane moves on to
  // the next version all the same, so a lane never wedges.
  using ApplyFn = std::function<absl::Status(Batch batch)>;

  // Starts `threads` compute threads. REQUIRES: threads >= 1, max_pending >= 1.
  StepQueue(int threads, int max_pending);
  // Stop().
  ~StepQueue();
  StepQueue(const StepQueue&) = delete;
  StepQueue& operator=(const StepQueue&) = delete;

  // A new lane whose first batch must have version `next_version`.
  LaneId AddLane(int64_t next_version, ApplyFn apply) ABSL_LOCKS_EXCLUDED(mu_);

  // Hands a closed batch of `lane` to the pool. Batches may arrive out of version order; each
  // starts once every lower version of its lane has been applied.
  void Enqueue(LaneId lane, Batch batch) ABSL_LOCKS_EXCLUDED(mu_);

  // Returns once `lane` has fewer than max_pending batches waiting, or at once after
  // ReleaseWaiters() or Stop(). Returns how long it waited, nullopt when it did not wait.
  std::optional<absl::Duration> WaitForRoom(LaneId lane) ABSL_LOCKS_EXCLUDED(mu_);

  // Waits until every enqueued batch has been applied.
  void Drain() ABSL_LOCKS_EXCLUDED(mu_);

  // Lets every present and future WaitForRoom return at once (the start of shutdown).
  void ReleaseWaiters() ABSL_LOCKS_EXCLUDED(mu_);

  // Applies what is ready, then joins the threads. Batches enqueued afterwards are never
  // applied. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  StepQueueStats stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Lane {
    ApplyFn apply;
    std::map<int64_t, Batch> pending;  // by version
    int64_t next_version = 0;          // the version the next applied batch must have
    bool scheduled = false;            // in ready_ or being applied
  };

  void ComputeLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Puts `lane` in ready_ if it is idle and its next version is pending.
  void ScheduleIfReadyLocked(Lane* lane) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_pending_;

  mutable Mutex mu_;
  CondVar work_cv_;  // ready_ non-empty or stop_
  CondVar idle_cv_;  // outstanding_ reached 0
  CondVar room_cv_;  // a lane's pending shrank, released_ or stop_
  std::vector<std::unique_ptr<Lane>> lanes_ ABSL_GUARDED_BY(mu_);  // by LaneId
  std::deque<Lane*> ready_ ABSL_GUARDED_BY(mu_);
  int64_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;  // enqueued, not yet applied
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  StepQueueStats stats_ ABSL_GUARDED_BY(mu_);  // all but `pending`

  Mutex stop_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // serialises Stop()
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(stop_mu_);
};

}  // namespace dion

#endif  // DION_SERVER_STEP_QUEUE_H_
