// Exactly-once application under concurrency, counted by the server itself: 8 concurrent
// Push streams x 200 pushes, where every (worker, sequence) is sent by two streams at once.
// Also run under ThreadSanitizer (ctest -L integration in the TSan build).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "tests/server_test_util.h"

namespace dion {
namespace {

using testing::Connect;
using testing::GetStatus;

TEST(ServerConcurrencyTest, EightStreamsOfRacingRetriesApplyEachContributionExactlyOnce) {
  ServerOptions options = testing::TestServerOptions();
  options.shard.batcher.target_workers = 0;
  options.shard.batcher.target_samples = 8;
  options.shard.batcher.deadline = absl::Milliseconds(10);
  options.shard.broadcaster.queue_capacity = 4;  // the subscriber below lags on purpose
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  constexpr int kWorkers = 4, kStreamsPerWorker = 2, kPushes = 200;
  for (int w = 0; w < kWorkers; ++w) testing::Register(*stub, absl::StrCat("worker", w));
  testing::Replica replica(*stub, {"w", "b"});

  std::atomic<int64_t> accepted{0}, duplicate{0}, other{0};
  std::vector<std::thread> streams;
  for (int s = 0; s < kWorkers * kStreamsPerWorker; ++s) {
    streams.emplace_back([&, s] {
      const int worker = s / kStreamsPerWorker;
      auto client = Connect(server->address());
      grpc::ClientContext context;
      testing::SetDeadline(context, absl::Seconds(150));
      auto stream = client->Push(&context);
      // Write everything, then read: keeps many contributions in flight per stream.
      std::thread writer([&] {
        for (int k = 0; k < kPushes; ++k) {
          // Alternate a Dion and an AdamW parameter; both streams of a worker send the same.
          v1::Contribution c;
          if (k % 2 == 0) {
            c = testing::FactorsContribution(absl::StrCat("worker", worker), k, "w", 0, 1,
                                             testing::RandomFactors(32, 24, 2, worker * 1000 + k));
          } else {
            Contribution dense;
            dense.worker_id = absl::StrCat("worker", worker);
            dense.sequence = k;
            dense.parameter = "b";
            dense.sample_count = 1;
            Matrix G(1, 24);
            Rng(worker * 1000 + k).FillNormal(G);
            dense.payload = G;
            ContributionToProto(dense, &c, std::vector<int64_t>{24});
          }
          if (!stream->Write(c)) break;
        }
        stream->WritesDone();
      });
      v1::PushAck ack;
      while (stream->Read(&ack)) {
        if (ack.result() == v1::PUSH_RESULT_ACCEPTED) {
          ++accepted;
        } else if (ack.result() == v1::PUSH_RESULT_DUPLICATE) {
          ++duplicate;
        } else {
          ++other;
          ADD_FAILURE() << ack.message();
        }
      }
      writer.join();
      EXPECT_TRUE(stream->Finish().ok());
    });
  }
  for (std::thread& t : streams) t.join();

  EXPECT_EQ(accepted.load(), kWorkers * kPushes);  // each (worker, sequence) once
  EXPECT_EQ(duplicate.load(), kWorkers * kPushes);
  EXPECT_EQ(other.load(), 0);
  server->shard().Drain();
  const v1::StatusResponse status = GetStatus(*stub);
  int64_t applied = 0;
  for (const v1::ParameterStatus& p : status.parameters()) {
    applied += p.contributions_applied();
    EXPECT_EQ(p.contributions_applied(), p.pushes().accepted()) << p.parameter();
  }
  EXPECT_EQ(status.pushes().accepted(), kWorkers * kPushes);
  EXPECT_EQ(status.pushes().duplicate(), kWorkers * kPushes);
  EXPECT_EQ(applied, status.pushes().accepted());
  EXPECT_EQ(server->shard().Status().failed_steps, 0);

  // The (lagging) subscriber ends equal to the server: full values filled its gaps.
  const int64_t w_version = testing::FindParameter(status, "w")->version();
  const int64_t b_version = testing::FindParameter(status, "b")->version();
  ASSERT_TRUE(replica.WaitFor("w", w_version));
  ASSERT_TRUE(replica.WaitFor("b", b_version));
  EXPECT_EQ(replica.mismatches(), 0);
  EXPECT_EQ(replica.gaps(), 0);
  EXPECT_EQ(WeightsChecksum(replica.value("w")), testing::PullOne(*stub, "w").checksum());
  EXPECT_EQ(WeightsChecksum(replica.value("b")), testing::PullOne(*stub, "b").checksum());
}

}  // namespace
}  // namespace dion
