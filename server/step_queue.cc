#include "server/step_queue.h"

#include <algorithm>
#include <utility>

#include "absl/time/clock.h"

namespace dion {

StepQueue::StepQueue(int threads, int max_pending) : max_pending_(max_pending) {
  MutexLock lock(&stop_mu_);
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { ComputeLoop(); });
}

StepQueue::~StepQueue() { Stop(); }

StepQueue::LaneId StepQueue::AddLane(int64_t next_version, ApplyFn apply) {
  auto lane = std::make_unique<Lane>();
  lane->apply = std::move(apply);
  lane->next_version = next_version;
  MutexLock lock(&mu_);
  lanes_.push_back(std::move(lane));
  return static_cast<LaneId>(lanes_.size() - 1);
}

void StepQueue::Enqueue(LaneId id, Batch batch) {
  MutexLock lock(&mu_);
  Lane* lane = lanes_.at(id).get();
  const int64_t version = batch.version;
  lane->pending.emplace(version, std::move(batch));
  stats_.max_pending_seen =
      std::max(stats_.max_pending_seen, static_cast<int64_t>(lane->pending.size()));
  ++outstanding_;
  ScheduleIfReadyLocked(lane);
}

void StepQueue::ScheduleIfReadyLocked(Lane* lane) {
  // Concurrent producers can hand over batches out of order; only the next version may start.
  if (lane->scheduled || lane->pending.empty() ||
      lane->pending.begin()->first != lane->next_version) {
    return;
  }
  lane->scheduled = true;
  ready_.push_back(lane);
  work_cv_.Signal();
}

std::optional<absl::Duration> StepQueue::WaitForRoom(LaneId id) {
  MutexLock lock(&mu_);
  const Lane* lane = lanes_.at(id).get();
  const auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || released_ || static_cast<int64_t>(lane->pending.size()) < max_pending_;
  };
  if (room()) return std::nullopt;
  ++stats_.backpressure_waits;
  const absl::Time start = absl::Now();
  while (!room()) room_cv_.Wait(&mu_);
  return absl::Now() - start;
}

void StepQueue::ComputeLoop() {
  MutexLock lock(&mu_);
  while (true) {
    while (ready_.empty() && !stop_) work_cv_.Wait(&mu_);
    if (ready_.empty()) return;  // stopping and nothing left
    Lane* lane = ready_.front();
    ready_.pop_front();
    auto first = lane->pending.begin();
    Batch batch = std::move(first->second);
    lane->pending.erase(first);
    room_cv_.SignalAll();
    const int64_t version = batch.version;
    mu_.Unlock();
    const absl::Status status = lane->apply(std::move(batch));
    mu_.Lock();
    if (!status.ok()) ++stats_.failed;
    // Advance even after a failure so the lane never wedges.
    lane->next_version = version + 1;
    lane->scheduled = false;
    ScheduleIfReadyLocked(lane);
    if (--outstanding_ == 0) idle_cv_.SignalAll();
  }
}

void StepQueue::Drain() {
  MutexLock lock(&mu_);
  while (outstanding_ > 0) idle_cv_.Wait(&mu_);
}

void StepQueue::ReleaseWaiters() {
  MutexLock lock(&mu_);
  released_ = true;
  room_cv_.SignalAll();
}

void StepQueue::Stop() {
  MutexLock stop_lock(&stop_mu_);
  {
    MutexLock lock(&mu_);
    stop_ = true;
    work_cv_.SignalAll();
    room_cv_.SignalAll();
  }
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
}

StepQueueStats StepQueue::stats() const {
  MutexLock lock(&mu_);
  StepQueueStats stats = stats_;
  stats.pending = outstanding_;
  return stats;
}

}  // namespace dion
