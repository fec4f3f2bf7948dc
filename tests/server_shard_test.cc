// The shard below gRPC: a slow subscriber gets a full value instead of an unbounded queue, and
// a checkpoint taken by Shard::Checkpoint restores into a new Shard bit for bit (weights,
// optimizer state, versions, counters, dedup state).
#include "server/shard.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "common/rng.h"
#include "common/checksum.h"
#include "server/wire.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

ShardOptions TestShardOptions() {
  ShardOptions options = testing::TestServerOptions().shard;
  return options;
}

std::unique_ptr<Shard> RegisteredShard(const ShardOptions& options) {
  auto shard = Shard::Create(options).value();
  EXPECT_TRUE(shard->RegisterModel(ModelTableFromProto(testing::TestModelRequest()).value()).ok());
  EXPECT_TRUE(shard->RegisterWorker("w0").ok());
  return shard;
}

Contribution Factors(uint64_t sequence, const std::string& parameter, int64_t m, int64_t n,
                     int64_t base = 0) {
  Contribution c;
  c.worker_id = "w0";
  c.sequence = sequence;
  c.parameter = parameter;
  c.base_version = base;
  c.sample_count = 1;
  c.payload = testing::RandomFactors(m, n, 2, sequence * 31 + m);
  return c;
}

TEST(ShardTest, SlowSubscriberIsSentTheFullValueInsteadOfAGrowingQueue) {
  ShardOptions options = TestShardOptions();
  options.broadcaster.queue_capacity = 4;
  auto shard = RegisteredShard(options);
  // Holds version 0 already: no initial full value.
  auto subscription = shard->Subscribe({"w"}, {{"w", 0}}).value();
  for (int k = 0; k < 20; ++k) {
    ASSERT_EQ(shard->Push(Factors(k, "w", 32, 24)).value().result, PushOutcome::kAccepted);
  }
  shard->Drain();
  EXPECT_GE(subscription->lag_events(), 1);
  // The queue was dropped; what comes is the full value at the newest version.
  auto update = subscription->Next(absl::Seconds(5));
  ASSERT_TRUE(update.has_value());
  ASSERT_FALSE((*update)->is_low_rank());
  EXPECT_EQ((*update)->version, 20);
  const Matrix& value = std::get<Matrix>((*update)->content);
  EXPECT_EQ(WeightsChecksum(value), (*update)->checksum);
  EXPECT_EQ(value, shard->Snapshot("w", false).value().X);
  // Nothing older follows it.
  EXPECT_FALSE(subscription->Next(absl::Milliseconds(50)).has_value());
}

TEST(ShardTest, SubscriberKeepsUpWithLowRankStepsWhileItReads) {
  auto shard = RegisteredShard(TestShardOptions());
  auto subscription = shard->Subscribe({"v"}, {}).value();
  auto first = subscription->Next(absl::Seconds(5));
  ASSERT_TRUE(first.has_value());
  Matrix replica = std::get<Matrix>((*first)->content);
  for (int k = 0; k < 10; ++k) {
    ASSERT_TRUE(shard->Push(Factors(k, "v", 12, 20)).ok());
    auto update = subscription->Next(absl::Seconds(5));
    ASSERT_TRUE(update.has_value());
    ASSERT_TRUE((*update)->is_low_rank());
    EXPECT_EQ((*update)->version, k + 1);
    const LowRankStep& s = std::get<LowRankStep>((*update)->content);
    ApplyLowRankUpdate(replica, s.decay, s.scale, s.P, s.Q, s.transposed);
    EXPECT_EQ(WeightsChecksum(replica), (*update)->checksum);
  }
}

void ExpectSameState(const ParameterSnapshot& a, const ParameterSnapshot& b) {
  EXPECT_EQ(a.version, b.version);
  EXPECT_EQ(a.checksum, b.checksum);
  EXPECT_EQ(a.contributions_applied, b.contributions_applied);
  EXPECT_EQ(a.X, b.X);
  v1::ParameterValue pa, pb;  // compares every state tensor bit for bit
  SnapshotToProto(a, &pa);
  SnapshotToProto(b, &pb);
  EXPECT_EQ(pa.dion().momentum().data(), pb.dion().momentum().data()) << "M";
  EXPECT_EQ(pa.dion().q().data(), pb.dion().q().data()) << "Q";
  EXPECT_EQ(pa.dion().step(), pb.dion().step());
  EXPECT_EQ(pa.adamw().m().data(), pb.adamw().m().data()) << "m";
  EXPECT_EQ(pa.adamw().v().data(), pb.adamw().v().data()) << "v";
  EXPECT_EQ(pa.adamw().step(), pb.adamw().step());
  EXPECT_TRUE(pa.SerializeAsString() == pb.SerializeAsString()) << "some state tensor differs";
}

TEST(ShardTest, CheckpointRestoresWeightsStateVersionsAndDedupBitForBit) {
  ShardOptions options = TestShardOptions();
  options.checkpoint_dir = absl::StrCat(::testing::TempDir(), "/shard-ckpt-", getpid());
  options.batcher.target_workers = 0;
  options.batcher.target_samples = 3;  // leaves an open batch for Checkpoint to flush
  std::vector<ParameterSnapshot> before;
  {
    auto shard = RegisteredShard(options);
    for (int k = 0; k < 7; ++k) ASSERT_TRUE(shard->Push(Factors(k, "w", 32, 24)).ok());
    for (int k = 0; k < 4; ++k) ASSERT_TRUE(shard->Push(Factors(k, "v", 12, 20)).ok());
    Contribution dense;
    dense.worker_id = "w0";
    dense.parameter = "b";
    dense.sample_count = 2;
    Matrix G(1, 24);
    Rng(5).FillNormal(G);
    dense.payload = G;
    ASSERT_TRUE(shard->Push(dense).ok());
    ASSERT_TRUE(shard->Checkpoint().ok());
    for (const std::string p : {"w", "v", "b"}) before.push_back(shard->Snapshot(p, true).value());
    EXPECT_EQ(before[0].version, 3);  // 7 contributions: two full batches and the flushed one
  }  // the shard object is gone (its Shutdown checkpoint holds the same state)
  auto restored = Shard::Create(options).value();
  ASSERT_TRUE(restored->store().model_registered());
  int i = 0;
  for (const std::string p : {"w", "v", "b"}) {
    SCOPED_TRACE(p);
    ExpectSameState(restored->Snapshot(p, true).value(), before[i++]);
  }
  // Dedup survived: sequence 3 of "w" was accepted before the checkpoint.
  EXPECT_EQ(restored->Push(Factors(3, "w", 32, 24, 3)).value().result, PushOutcome::kDuplicate);
  EXPECT_EQ(restored->Push(Factors(7, "w", 32, 24, 3)).value().result, PushOutcome::kAccepted);
  // And the steps go on from the restored version.
  restored->Drain();
  EXPECT_EQ(restored->Snapshot("w", false).value().version, 4);
}

// Through the real restore path (Shard::Create): the newest checkpoint (written by Shutdown)
// has a truncated tensor, so the shard starts from the previous one, with its weights, state,
// version and dedup state.
TEST(ShardTest, TruncatedNewestCheckpointIsSkippedAndThePreviousOneRestored) {
  ShardOptions options = TestShardOptions();
  options.checkpoint_dir = absl::StrCat(::testing::TempDir(), "/shard-truncated-", getpid());
  std::filesystem::remove_all(options.checkpoint_dir);
  std::string first;
  ParameterSnapshot at_first;
  {
    auto shard = RegisteredShard(options);
    for (int k = 0; k < 2; ++k) {
      ASSERT_TRUE(shard->Push(Factors(k, "w", 32, 24, k)).ok()) << k;
      shard->Drain();  // the next push is based on the version this step makes
    }
    first = shard->Checkpoint().value();
    at_first = shard->Snapshot("w", true).value();
    ASSERT_EQ(at_first.version, 2);
    for (int k = 2; k < 5; ++k) {
      ASSERT_TRUE(shard->Push(Factors(k, "w", 32, 24, k)).ok()) << k;
      shard->Drain();
    }
  }  // Shutdown writes the newest checkpoint, at version 5
  absl::StatusOr<std::vector<CheckpointInfo>> checkpoints =
      ListCheckpoints(options.checkpoint_dir);
  ASSERT_TRUE(checkpoints.ok()) << checkpoints.status();
  ASSERT_EQ(checkpoints->size(), 2u);
  const std::string newest = checkpoints->front().path;
  ASSERT_NE(newest, first);
  const std::string victim = newest + "/w.M.npy";
  ASSERT_TRUE(std::filesystem::exists(victim));
  std::filesystem::resize_file(victim, std::filesystem::file_size(victim) / 2);

  auto restored = Shard::Create(options).value();
  ExpectSameState(restored->Snapshot("w", true).value(), at_first);
  // The dedup state is the first checkpoint's: 1 was accepted before it, 3 only after.
  EXPECT_EQ(restored->Push(Factors(1, "w", 32, 24, 2)).value().result, PushOutcome::kDuplicate);
  EXPECT_EQ(restored->Push(Factors(3, "w", 32, 24, 2)).value().result, PushOutcome::kAccepted);
  restored->Drain();
  EXPECT_EQ(restored->Snapshot("w", false).value().version, 3);
  restored.reset();
  std::filesystem::remove_all(options.checkpoint_dir);
}

// With every checkpoint damaged the shard refuses to start (DATA_LOSS naming the directory and
// each checkpoint's fault) rather than start fresh from the initial weights, which would throw
// the training away without a word; the damaged checkpoints are left as they were.
TEST(ShardTest, EveryCheckpointDamagedRefusesToStartWithDataLoss) {
  ShardOptions options = TestShardOptions();
  options.checkpoint_dir = absl::StrCat(::testing::TempDir(), "/shard-all-damaged-", getpid());
  std::filesystem::remove_all(options.checkpoint_dir);
  {
    auto shard = RegisteredShard(options);
    ASSERT_TRUE(shard->Push(Factors(0, "w", 32, 24, 0)).ok());
    shard->Drain();
    ASSERT_TRUE(shard->Checkpoint().ok());
  }  // Shutdown writes a second checkpoint
  absl::StatusOr<std::vector<CheckpointInfo>> checkpoints =
      ListCheckpoints(options.checkpoint_dir);
  ASSERT_TRUE(checkpoints.ok()) << checkpoints.status();
  ASSERT_EQ(checkpoints->size(), 2u);
  std::vector<std::string> victims;
  for (const CheckpointInfo& info : *checkpoints) {
    victims.push_back(info.path + "/w.M.npy");
    ASSERT_TRUE(std::filesystem::exists(victims.back()));
    std::filesystem::resize_file(victims.back(), std::filesystem::file_size(victims.back()) / 2);
  }
  std::vector<uintmax_t> sizes;
  for (const std::string& v : victims) sizes.push_back(std::filesystem::file_size(v));

  absl::StatusOr<std::unique_ptr<Shard>> restored = Shard::Create(options);
  ASSERT_FALSE(restored.ok());
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss) << restored.status();
  EXPECT_TRUE(absl::StrContains(restored.status().message(), options.checkpoint_dir))
      << restored.status();
  for (const CheckpointInfo& info : *checkpoints) {
    EXPECT_TRUE(absl::StrContains(restored.status().message(), info.path)) << restored.status();
  }
  absl::StatusOr<std::vector<CheckpointInfo>> after = ListCheckpoints(options.checkpoint_dir);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->size(), 2u) << "nothing new written, nothing deleted";
  for (size_t i = 0; i < victims.size(); ++i) {
    EXPECT_EQ(std::filesystem::file_size(victims[i]), sizes[i]) << victims[i];
  }
  std::filesystem::remove_all(options.checkpoint_dir);
}

// The forced dedup floor is part of the checkpoint: a restored shard still refuses (instead of
// calling DUPLICATE) a sequence the floor was forced past.
TEST(ShardTest, ForcedDedupFloorSurvivesACheckpoint) {
  ShardOptions options = TestShardOptions();
  options.batcher.dedup_window = 8;
  options.checkpoint_dir = absl::StrCat(::testing::TempDir(), "/shard-forced-", getpid());
  std::filesystem::remove_all(options.checkpoint_dir);
  {
    auto shard = RegisteredShard(options);
    ASSERT_TRUE(shard->Push(Factors(0, "w", 32, 24)).ok());
    ASSERT_TRUE(shard->Push(Factors(20, "w", 32, 24)).ok());  // floor forced to 13
    EXPECT_EQ(shard->Push(Factors(3, "w", 32, 24)).status().code(),
              absl::StatusCode::kDataLoss);
  }
  auto restored = Shard::Create(options).value();
  absl::StatusOr<PushReply> old = restored->Push(Factors(3, "w", 32, 24));
  EXPECT_EQ(old.status().code(), absl::StatusCode::kDataLoss) << old.status();
  EXPECT_EQ(restored->Push(Factors(20, "w", 32, 24)).value().result, PushOutcome::kDuplicate);
  EXPECT_EQ(restored->Push(Factors(14, "w", 32, 24)).value().result, PushOutcome::kAccepted);
  restored.reset();
  std::filesystem::remove_all(options.checkpoint_dir);
}

TEST(ShardTest, PushesAfterShutdownBeganAreRefusedUnavailable) {
  auto shard = RegisteredShard(TestShardOptions());
  shard->BeginShutdown();
  absl::StatusOr<PushReply> reply = shard->Push(Factors(1, "w", 32, 24));
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(shard->Shutdown().ok());
  EXPECT_EQ(shard->Status().pushes.rejected, 1);
}

// A contribution re-sent after shutdown began (its acknowledgement was lost) is already in:
// it must be answered DUPLICATE, not refused, or the client restores it and it is applied twice.
// A new sequence is still refused.
TEST(ShardTest, AResentAcceptedPushIsADuplicateEvenWhileShuttingDown) {
  auto shard = RegisteredShard(TestShardOptions());
  ASSERT_EQ(shard->Push(Factors(1, "w", 32, 24)).value().result, PushOutcome::kAccepted);
  shard->Drain();
  shard->BeginShutdown();
  absl::StatusOr<PushReply> again = shard->Push(Factors(1, "w", 32, 24));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->result, PushOutcome::kDuplicate);
  EXPECT_EQ(again->applied_version, 1);
  EXPECT_EQ(shard->Push(Factors(2, "w", 32, 24)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(shard->Shutdown().ok());
  EXPECT_EQ(shard->Status().pushes.duplicate, 1);
  EXPECT_EQ(shard->Status().pushes.rejected, 1);
  EXPECT_EQ(shard->Snapshot("w", false).value().version, 1);
}

// Workers that push faster than the steps run. Every push closes a batch here (one worker per
// batch), and a step of the 256 x 256 Dion matrix takes milliseconds against microseconds for
// a push of rank-2 factors, so without a bound the closed batches pile up (nearly one per
// push). With max_pending_batches = 2 a push waits while two are waiting: the backlog never
// exceeds 2 plus one per concurrent pusher (each can pass the check before the others
// enqueue), and every contribution is still applied, in order.
TEST(ShardTest, PushesWaitWhileTheirParametersBacklogIsFullAndNothingIsLost) {
  constexpr int kPushers = 4, kPushesEach = 15, kMaxPending = 2;
  ShardOptions options = TestShardOptions();
  options.compute_threads = 1;
  options.max_pending_batches = kMaxPending;
  auto shard = Shard::Create(options).value();
  v1::RegisterModelRequest request = testing::TestModelRequest();
  testing::AddDionMatrix(request, "big", 256, 256, /*seed=*/4);
  ASSERT_TRUE(shard->RegisterModel(ModelTableFromProto(request).value()).ok());
  for (int t = 0; t < kPushers; ++t) ASSERT_TRUE(shard->RegisterWorker(absl::StrCat("w", t)).ok());

  std::vector<std::thread> pushers;
  for (int t = 0; t < kPushers; ++t) {
    pushers.emplace_back([&, t] {
      for (int k = 0; k < kPushesEach; ++k) {
        Contribution c = Factors(k, "big", 256, 256);
        c.worker_id = absl::StrCat("w", t);
        absl::StatusOr<PushReply> reply = shard->Push(std::move(c));
        EXPECT_TRUE(reply.ok() && reply->result == PushOutcome::kAccepted)
            << (reply.ok() ? "not accepted" : reply.status().ToString());
      }
    });
  }
  for (std::thread& t : pushers) t.join();
  shard->Drain();

  const ShardStatus status = shard->Status();
  EXPECT_GT(status.backpressure_waits, 0);
  // A push waits only while kMaxPending batches are waiting, so having waited means the
  // backlog reached the bound; it never got past the bound plus one per pusher.
  EXPECT_GE(status.max_pending_batches_seen, kMaxPending);
  EXPECT_LE(status.max_pending_batches_seen, kMaxPending + kPushers);
  EXPECT_EQ(status.pending_batches, 0);
  EXPECT_EQ(status.failed_steps, 0);
  auto big = std::find_if(status.parameters.begin(), status.parameters.end(),
                          [](const ShardStatus::Parameter& p) { return p.status.parameter == "big"; });
  ASSERT_NE(big, status.parameters.end());
  EXPECT_EQ(big->pushes.accepted, kPushers * kPushesEach);
  EXPECT_EQ(big->status.contributions_applied, kPushers * kPushesEach);
  EXPECT_EQ(big->status.version, kPushers * kPushesEach);
}

TEST(ShardTest, BeginShutdownReleasesAPushWaitingForRoomWithoutWaitingForTheBacklog) {
  ShardOptions options = TestShardOptions();
  options.compute_threads = 1;
  options.max_pending_batches = 1;
  auto shard = Shard::Create(options).value();
  v1::RegisterModelRequest request = testing::TestModelRequest();
  // Big enough that one step takes far longer than this test needs to set up the wait.
  testing::AddDionMatrix(request, "big", 1536, 1536, /*seed=*/5);
  ASSERT_TRUE(shard->RegisterModel(ModelTableFromProto(request).value()).ok());
  ASSERT_TRUE(shard->RegisterWorker("w0").ok());
  // Batch 1 goes to the compute thread, batch 2 fills the lane's one pending slot.
  for (int k = 0; k < 2; ++k) {
    ASSERT_EQ(shard->Push(Factors(k, "big", 1536, 1536)).value().result, PushOutcome::kAccepted);
  }
  // The second push may itself have waited, if it came before the compute thread took batch 1.
  const int64_t waits_before = shard->Status().backpressure_waits;
  absl::Status waiter_status;
  int64_t version_when_released = -1;
  std::thread waiter([&] {
    waiter_status = shard->Push(Factors(2, "big", 1536, 1536)).status();
    version_when_released = shard->store().Version("big").value_or(-1);
  });
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (shard->Status().backpressure_waits == waits_before && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  const int64_t waits = shard->Status().backpressure_waits;
  shard->BeginShutdown();
  waiter.join();  // before any assertion can return: a joinable thread would abort the test
  ASSERT_EQ(waits, waits_before + 1)
      << "the third push never waited: the first step finished too soon";
  EXPECT_EQ(waiter_status.code(), absl::StatusCode::kUnavailable) << waiter_status;
  // Released by the shutdown itself, not by the first step finishing.
  EXPECT_EQ(version_when_released, 0);
  // The two accepted batches are still applied.
  ASSERT_TRUE(shard->Shutdown().ok());
  EXPECT_EQ(shard->store().Version("big").value_or(-1), 2);
}

TEST(ShardTest, MaxPendingBatchesBelowOneIsRefusedNamingTheField) {
  ShardOptions options = TestShardOptions();
  options.max_pending_batches = 0;
  absl::StatusOr<std::unique_ptr<Shard>> shard = Shard::Create(options);
  EXPECT_EQ(shard.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(shard.status().message(), "max_pending_batches"))
      << shard.status();
}

}  // namespace
}  // namespace dion
