// A subscriber that stops reading its Subscribe stream over real gRPC while many versions are
// produced: gRPC flow control blocks the server's writes, the subscription's queue stays within
// --broadcast_queue, and when the client reads again it gets the full current value (checksum
// equal to a Pull) instead of every missed version.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/rng.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

using testing::Connect;
using testing::PushAll;

constexpr int64_t kRows = 64, kCols = 64;  // 16 KiB per full value
constexpr int kQueue = 4;
constexpr int kVersions = 60;               // ~1 MiB of updates, far above the window below

// A channel that buffers little for an unread stream: the HTTP/2 stream window stays at
// 16 KiB (no BDP probing to grow it), so the server's writes block after a few updates.
std::unique_ptr<v1::ParameterServer::Stub> SmallWindowStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 10);
  return v1::ParameterServer::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

TEST(ServerSlowSubscriberTest, SubscriberThatStopsReadingGetsTheFullValueAndTheQueueStaysBounded) {
  ServerOptions options = testing::TestServerOptions();
  options.shard.broadcaster.queue_capacity = kQueue;
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  v1::RegisterModelRequest request;
  request.set_model_name("slow-subscriber");
  request.set_worker_id("w0");
  v1::ParameterSpec* p = request.add_parameters();
  p->set_name("emb");
  p->add_shape(kRows);
  p->add_shape(kCols);
  p->set_optimizer(v1::OPTIMIZER_KIND_ADAMW);  // every version is a full value
  {
    grpc::ClientContext context;
    v1::RegisterModelResponse response;
    ASSERT_TRUE(stub->RegisterModel(&context, request, &response).ok());
  }

  // Subscribed, then not read.
  auto subscriber = SmallWindowStub(server->address());
  grpc::ClientContext subscribe_context;
  testing::SetDeadline(subscribe_context, absl::Seconds(60));
  v1::SubscribeRequest subscribe;
  subscribe.add_parameters("emb");
  auto reader = subscriber->Subscribe(&subscribe_context, subscribe);

  Matrix G(kRows, kCols);
  Rng(3).FillNormal(G);
  int64_t max_queued = 0;
  {
    grpc::ClientContext context;
    testing::SetDeadline(context, absl::Seconds(60));
    auto stream = stub->Push(&context);
    for (int k = 0; k < kVersions; ++k) {
      Contribution c;
      c.worker_id = "w0";
      c.sequence = k;
      c.parameter = "emb";
      c.base_version = k;
      c.sample_count = 1;
      c.payload = G;
      v1::Contribution proto;
      ContributionToProto(c, &proto);
      ASSERT_TRUE(stream->Write(proto));
      v1::PushAck ack;
      ASSERT_TRUE(stream->Read(&ack));
      ASSERT_EQ(ack.result(), v1::PUSH_RESULT_ACCEPTED) << ack.message();
      // Each push closes a batch (target_workers = 1); the next one needs its step applied.
      const absl::Time until = testing::Deadline();
      while (server->shard().store().Version("emb").value() < k + 1 && absl::Now() < until) {
        absl::SleepFor(absl::Microseconds(200));
      }
      max_queued = std::max(max_queued, server->shard().broadcaster().queued_updates());
    }
    stream->WritesDone();
    ASSERT_TRUE(stream->Finish().ok());
  }
  EXPECT_LE(max_queued, kQueue) << "the subscription's queue grew beyond --broadcast_queue";
  EXPECT_GE(testing::MetricValue(server->metrics().Serialize(),
                                 "dion_subscriber_lag_events_total"), 1)
      << "the subscriber never lagged: were gRPC's buffers larger than the updates?";

  // Reading again: what arrives ends with the full value at the newest version, and it is far
  // fewer messages than versions produced.
  const v1::ParameterValue pulled = testing::PullOne(*stub, "emb");
  ASSERT_EQ(pulled.version(), kVersions);
  int messages = 0;
  int64_t last_version = -1;
  v1::VersionUpdate update;
  while (last_version < kVersions && reader->Read(&update)) {
    ++messages;
    ASSERT_TRUE(update.has_value());
    ASSERT_GT(update.version(), last_version) << "versions must strictly increase";
    last_version = update.version();
    const Matrix value = TensorToMatrix(update.value(), "value").value();
    EXPECT_EQ(WeightsChecksum(value), update.checksum());
  }
  EXPECT_EQ(last_version, kVersions);
  EXPECT_EQ(update.checksum(), pulled.checksum());
  EXPECT_EQ(TensorToMatrix(update.value(), "value").value(), testing::ValueOf(pulled));
  EXPECT_LT(messages, kVersions / 2) << "the missed versions should have been replaced";
  const std::string after = server->metrics().Serialize();
  EXPECT_GE(testing::MetricValue(after, "dion_broadcast_full_value_fallbacks_total"), 1)
      << "the last value should be a fallback for the dropped queue";
  EXPECT_EQ(testing::MetricValue(after, "dion_lagging_subscribers"), 0)
      << "the subscriber caught up";
  subscribe_context.TryCancel();
  reader->Finish();
}

}  // namespace
}  // namespace dion
