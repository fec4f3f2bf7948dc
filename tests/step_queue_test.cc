#include "server/step_queue.h"

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "gtest/gtest.h"

namespace dion {
namespace {

constexpr auto kBound = std::chrono::seconds(10);  // no test waits longer than this

Batch At(int64_t version) {
  Batch batch;
  batch.parameter = "p";
  batch.version = version;
  return batch;
}

// Records the versions a lane applied, and fails if two of them ever overlapped.
struct Recorder {
  Mutex mu;
  std::vector<int64_t> applied ABSL_GUARDED_BY(mu);
  std::atomic<int> running{0};
  std::atomic<bool> overlapped{false};

  StepQueue::ApplyFn Fn() {
    return [this](Batch batch) {
      if (running.fetch_add(1) != 0) overlapped = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      {
        MutexLock lock(&mu);
        applied.push_back(batch.version);
      }
      running.fetch_sub(1);
      return absl::OkStatus();
    };
  }
  std::vector<int64_t> Applied() {
    MutexLock lock(&mu);
    return applied;
  }
};

TEST(StepQueue, AppliesALaneStrictlyInVersionOrderWhateverTheEnqueueOrder) {
  StepQueue queue(4, 16);
  Recorder recorder;
  const StepQueue::LaneId lane = queue.AddLane(5, recorder.Fn());
  for (int64_t version : {9, 7, 5, 8, 6}) queue.Enqueue(lane, At(version));
  queue.Drain();
  EXPECT_EQ(recorder.Applied(), (std::vector<int64_t>{5, 6, 7, 8, 9}));
  EXPECT_FALSE(recorder.overlapped);
  EXPECT_EQ(queue.stats().pending, 0);
}

TEST(StepQueue, AGapHoldsLaterVersionsBack) {
  StepQueue queue(2, 16);
  Recorder recorder;
  const StepQueue::LaneId lane = queue.AddLane(0, recorder.Fn());
  queue.Enqueue(lane, At(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(recorder.Applied().empty());
  EXPECT_EQ(queue.stats().pending, 1);
  queue.Enqueue(lane, At(0));
  queue.Drain();
  EXPECT_EQ(recorder.Applied(), (std::vector<int64_t>{0, 1}));
}

TEST(StepQueue, DifferentLanesStepInParallel) {
  StepQueue queue(2, 4);
  absl::Notification a_started, b_started;
  std::atomic<bool> a_saw_b{false};
  const StepQueue::LaneId a = queue.AddLane(0, [&](Batch) {
    a_started.Notify();
    a_saw_b = b_started.WaitForNotificationWithTimeout(absl::Seconds(10));
    return absl::OkStatus();
  });
  const StepQueue::LaneId b = queue.AddLane(0, [&](Batch) {
    b_started.Notify();
    a_started.WaitForNotificationWithTimeout(absl::Seconds(10));
    return absl::OkStatus();
  });
  queue.Enqueue(a, At(0));
  queue.Enqueue(b, At(0));
  queue.Drain();
  EXPECT_TRUE(a_saw_b);
}

// One thread, max_pending 2: the lane's first batch is being applied (blocked), two more wait,
// so a producer waits until the first finishes and the next one is taken.
TEST(StepQueue, BoundedBacklogHoldsAProducerUntilABatchIsTaken) {
  StepQueue queue(1, 2);
  absl::Notification release;
  const StepQueue::LaneId lane = queue.AddLane(0, [&](Batch) {
    release.WaitForNotificationWithTimeout(absl::Seconds(10));
    return absl::OkStatus();
  });
  EXPECT_FALSE(queue.WaitForRoom(lane).has_value());  // empty: no wait
  for (int64_t v = 0; v < 3; ++v) queue.Enqueue(lane, At(v));
  // The thread took version 0 (it may need a moment); versions 1 and 2 fill the backlog.
  auto producer = std::async(std::launch::async, [&] { return queue.WaitForRoom(lane); });
  EXPECT_EQ(producer.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  release.Notify();
  ASSERT_EQ(producer.wait_for(kBound), std::future_status::ready);
  const std::optional<absl::Duration> waited = producer.get();
  ASSERT_TRUE(waited.has_value());
  EXPECT_GT(*waited, absl::ZeroDuration());
  queue.Drain();
  const StepQueueStats stats = queue.stats();
  EXPECT_EQ(stats.backpressure_waits, 1);
  EXPECT_GE(stats.max_pending_seen, 2);
  EXPECT_LE(stats.max_pending_seen, 3);
  EXPECT_EQ(stats.pending, 0);
}

TEST(StepQueue, DrainWaitsForEveryBatch) {
  StepQueue queue(2, 64);
  std::atomic<int> applied{0};
  std::vector<StepQueue::LaneId> lanes;
  for (int i = 0; i < 3; ++i) {
    lanes.push_back(queue.AddLane(0, [&](Batch) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      ++applied;
      return absl::OkStatus();
    }));
  }
  for (int64_t v = 0; v < 10; ++v) {
    for (StepQueue::LaneId lane : lanes) queue.Enqueue(lane, At(v));
  }
  queue.Drain();
  EXPECT_EQ(applied.load(), 30);
  EXPECT_EQ(queue.stats().pending, 0);
}

TEST(StepQueue, ReleaseWaitersLetsABlockedProducerGoAndKeepsLettingThemGo) {
  StepQueue queue(1, 1);
  absl::Notification release;
  const StepQueue::LaneId lane = queue.AddLane(0, [&](Batch) {
    release.WaitForNotificationWithTimeout(absl::Seconds(10));
    return absl::OkStatus();
  });
  queue.Enqueue(lane, At(0));
  queue.Enqueue(lane, At(1));
  queue.Enqueue(lane, At(2));  // at least one waits whichever the thread took
  auto producer = std::async(std::launch::async, [&] { return queue.WaitForRoom(lane); });
  EXPECT_EQ(producer.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  queue.ReleaseWaiters();
  ASSERT_EQ(producer.wait_for(kBound), std::future_status::ready);
  EXPECT_TRUE(producer.get().has_value());
  EXPECT_FALSE(queue.WaitForRoom(lane).has_value());  // released: no more waiting
  release.Notify();
  queue.Drain();
}

TEST(StepQueue, StopReleasesWaitersAndJoins) {
  auto queue = std::make_unique<StepQueue>(1, 1);
  absl::Notification release;
  const StepQueue::LaneId lane = queue->AddLane(0, [&](Batch) {
    release.WaitForNotificationWithTimeout(absl::Seconds(10));
    return absl::OkStatus();
  });
  for (int64_t v = 0; v < 3; ++v) queue->Enqueue(lane, At(v));
  auto producer = std::async(std::launch::async, [&] { return queue->WaitForRoom(lane); });
  EXPECT_EQ(producer.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  auto stopper = std::async(std::launch::async, [&] { queue->Stop(); });
  ASSERT_EQ(producer.wait_for(kBound), std::future_status::ready);
  release.Notify();
  ASSERT_EQ(stopper.wait_for(kBound), std::future_status::ready);
  EXPECT_EQ(queue->stats().pending, 0);  // what was ready was applied before the threads ended
  queue->Stop();                          // idempotent
}

TEST(StepQueue, AFailedApplyIsCountedAndTheLaneMovesOn) {
  StepQueue queue(1, 8);
  Recorder recorder;
  StepQueue::ApplyFn record = recorder.Fn();
  const StepQueue::LaneId lane = queue.AddLane(0, [&](Batch batch) {
    const bool fail = batch.version == 1;
    EXPECT_TRUE(record(std::move(batch)).ok());
    return fail ? absl::InternalError("refused") : absl::OkStatus();
  });
  for (int64_t v = 0; v < 3; ++v) queue.Enqueue(lane, At(v));
  queue.Drain();
  EXPECT_EQ(recorder.Applied(), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(queue.stats().failed, 1);
}

}  // namespace
}  // namespace dion
