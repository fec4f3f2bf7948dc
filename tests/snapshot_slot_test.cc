// SnapshotSlot (server/snapshot_slot.h): a parameter held at one version for a checkpoint while
// its steps go on. Take returns exactly the state the store had at the armed version (compared
// bit for bit with a Snapshot taken then), whether the next step copied it first, the writer
// copied it, or steps before the version were still to be applied when Take was called.
#include "server/snapshot_slot.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "server/parameter_store.h"
#include "server/wire.h"
#include "tests/model_table_test_util.h"
#include "tests/reference.h"

namespace dion {
namespace {

constexpr char kParameter[] = "tall";  // Dion, 48 x 32 in EveryOptimizerTable

std::unique_ptr<ParameterStore> Store() {
  auto store = ParameterStore::Create(StoreOptions{}).value();
  EXPECT_TRUE(store->RegisterModel(testing::EveryOptimizerTable("slot")).value_or(false));
  EXPECT_TRUE(store->RegisterWorker("w0").ok());
  return store;
}

// The step from `version` to version + 1 with one rank-2 contribution.
Batch Step(const ParameterStore& store, int64_t version) {
  Contribution c;
  c.worker_id = "w0";
  c.sequence = static_cast<uint64_t>(version);
  c.parameter = kParameter;
  c.base_version = version;
  c.sample_count = 4;
  c.payload = LowRankFactors{testing::GaussianD(48, 2, 10 + version).cast<float>(),
                             testing::GaussianD(32, 2, 20 + version).cast<float>()};
  Batch batch;
  batch.parameter = kParameter;
  batch.version = version;
  batch.samples = 4;
  batch.workers = 1;
  batch.entries.push_back({store.Validate(std::move(c)).value(), 0, 1.0});
  return batch;
}

// What a compute thread does around one step (server/shard.cc, ApplyOne).
void ApplyStep(ParameterStore& store, SnapshotSlot& slot, int64_t version) {
  slot.BeforeStep(version);
  ASSERT_TRUE(store.ApplyBatch(Step(store, version)).ok());
  slot.AfterStep(version + 1);
}

// X and optimizer state, serialised (bit-exact).
std::string Bits(const ParameterSnapshot& s) {
  v1::ParameterValue proto;
  SnapshotToProto(s, &proto);
  return proto.SerializeAsString();
}

absl::Status Go() { return absl::OkStatus(); }

TEST(SnapshotSlot, TheNextStepCopiesTheArmedVersionFirst) {
  auto store = Store();
  SnapshotSlot slot(store.get(), kParameter);
  ApplyStep(*store, slot, 0);  // not armed: nothing held
  EXPECT_EQ(slot.copied_ahead_bytes(), 0);
  const std::string at_one = Bits(store->Snapshot(kParameter, true).value());
  slot.Arm(1);
  ApplyStep(*store, slot, 1);
  ApplyStep(*store, slot, 2);
  EXPECT_GT(slot.copied_ahead_bytes(), 0);
  absl::StatusOr<ParameterSnapshot> taken = slot.Take(Go);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->version, 1);
  EXPECT_TRUE(Bits(*taken) == at_one);
  EXPECT_EQ(store->Version(kParameter).value(), 3);
  EXPECT_EQ(slot.Take(Go).status().code(), absl::StatusCode::kFailedPrecondition)
      << "Take disarms";
}

TEST(SnapshotSlot, AParameterThatDidNotMoveIsCopiedByTake) {
  auto store = Store();
  SnapshotSlot slot(store.get(), kParameter);
  const std::string at_zero = Bits(store->Snapshot(kParameter, true).value());
  slot.Arm(0);
  absl::StatusOr<ParameterSnapshot> taken = slot.Take(Go);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_TRUE(Bits(*taken) == at_zero);
  EXPECT_EQ(slot.copied_ahead_bytes(), 0);
  ApplyStep(*store, slot, 0);  // disarmed: the step copies nothing
  EXPECT_EQ(slot.copied_ahead_bytes(), 0);
}

TEST(SnapshotSlot, TakeWaitsForTheStepsBeforeTheArmedVersion) {
  auto store = Store();
  SnapshotSlot slot(store.get(), kParameter);
  slot.Arm(2);  // two batches closed before the cut, not applied yet
  std::string at_two;
  std::thread compute([&] {
    absl::SleepFor(absl::Milliseconds(30));
    ApplyStep(*store, slot, 0);
    ApplyStep(*store, slot, 1);
    at_two = Bits(store->Snapshot(kParameter, true).value());
    ApplyStep(*store, slot, 2);  // after the cut: copies version 2 first
    ApplyStep(*store, slot, 3);
  });
  absl::StatusOr<ParameterSnapshot> taken = slot.Take(Go);
  compute.join();
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->version, 2);
  EXPECT_TRUE(Bits(*taken) == at_two);
}

TEST(SnapshotSlot, AFailedStepOrAStoppedWriterEndsTheWait) {
  auto store = Store();
  SnapshotSlot slot(store.get(), kParameter);
  slot.Arm(1);
  slot.StepFailed(0, absl::UnavailableError("the log is broken"));
  absl::StatusOr<ParameterSnapshot> failed = slot.Take(Go);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(failed.status().message(), "did not reach version 1"))
      << failed.status();

  slot.Arm(1);
  int asked = 0;
  const absl::Status stop = absl::DeadlineExceededError("shutdown deadline");
  absl::StatusOr<ParameterSnapshot> stopped = slot.Take([&] {
    return ++asked < 3 ? absl::OkStatus() : stop;
  });
  EXPECT_EQ(stopped.status(), stop);
  EXPECT_EQ(asked, 3);
  slot.Disarm();
  EXPECT_EQ(slot.Take(Go).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace dion
