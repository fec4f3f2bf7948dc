// The /metrics endpoint of a running DionServer, scraped over loopback HTTP like Prometheus
// would: push counters by result, received bytes, steps and versions after a few pushes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/http_get.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

using testing::Connect;
using testing::HttpGetBody;
using testing::FactorsContribution;
using testing::PushAll;
using testing::RandomFactors;

double Get(const std::string& text, const std::string& key) {
  const double value = testing::MetricValue(text, key);
  if (std::isnan(value)) ADD_FAILURE() << "no series " << key;
  return value;
}

TEST(ServerMetricsEndpointTest, ScrapedCountersMatchWhatTheClientsDid) {
  ServerOptions options = testing::TestServerOptions();
  options.metrics_listen = "127.0.0.1:0";  // a free port, chosen by the kernel
  options.shard.batcher.staleness.max_staleness = 2;
  auto server = DionServer::Start(options).value();
  ASSERT_GT(server->metrics_port(), 0);
  auto stub = Connect(server->address());

  const v1::RegisterModelRequest registration = testing::TestModelRequest("w0");
  {
    grpc::ClientContext context;
    v1::RegisterModelResponse response;
    ASSERT_TRUE(stub->RegisterModel(&context, registration, &response).ok());
  }
  // 4 accepted (one step each: target_workers = 1), a duplicate, a stale one (tau 4 > 2) and
  // two rejected ones (an unknown parameter; a NaN in P, which is also counted apart).
  std::vector<v1::Contribution> pushes;
  for (int k = 0; k < 4; ++k) {
    pushes.push_back(FactorsContribution("w0", k, "w", k, 2, RandomFactors(32, 24, 2, k)));
  }
  std::vector<v1::PushAck> acks;
  for (const v1::Contribution& c : pushes) {
    acks.push_back(PushAll(*stub, {c})[0]);
    ASSERT_TRUE(testing::WaitForStatus(*stub, [&](const v1::StatusResponse& s) {
      return testing::FindParameter(s, "w")->version() == static_cast<int64_t>(c.sequence()) + 1;
    }));
  }
  pushes.push_back(pushes[1]);
  pushes.push_back(FactorsContribution("w0", 9, "w", 0, 1, RandomFactors(32, 24, 2, 9)));
  pushes.push_back(FactorsContribution("w0", 10, "nope", 0, 1, RandomFactors(32, 24, 2, 10)));
  LowRankFactors with_nan = RandomFactors(32, 24, 2, 11);
  with_nan.P(3, 1) = std::numeric_limits<float>::quiet_NaN();
  pushes.push_back(FactorsContribution("w0", 11, "w", 4, 1, with_nan));
  for (const v1::PushAck& ack : PushAll(*stub, {pushes.begin() + 4, pushes.end()})) {
    acks.push_back(ack);
  }
  ASSERT_EQ(acks.size(), 8u);
  EXPECT_EQ(acks[4].result(), v1::PUSH_RESULT_DUPLICATE);
  EXPECT_EQ(acks[5].result(), v1::PUSH_RESULT_STALE);
  EXPECT_EQ(acks[6].result(), v1::PUSH_RESULT_REJECTED);
  EXPECT_EQ(acks[7].result(), v1::PUSH_RESULT_REJECTED);
  EXPECT_EQ(acks[7].status_code(), static_cast<int32_t>(grpc::StatusCode::INVALID_ARGUMENT));

  const std::string body = HttpGetBody(server->metrics_port(), "/metrics");
  ASSERT_FALSE(body.empty()) << "no 200 response from /metrics";
  EXPECT_EQ(Get(body, "dion_pushes_total{result=\"accepted\"}"), 4);
  EXPECT_EQ(Get(body, "dion_pushes_total{result=\"duplicate\"}"), 1);
  EXPECT_EQ(Get(body, "dion_pushes_total{result=\"stale\"}"), 1);
  EXPECT_EQ(Get(body, "dion_pushes_total{result=\"rejected\"}"), 2);
  EXPECT_EQ(Get(body, "dion_nonfinite_pushes_total"), 1) << "only the NaN push";
  // Received bytes are the serialized requests that carry data: the registration and every
  // contribution, exactly.
  double sent = static_cast<double>(registration.ByteSizeLong());
  for (const v1::Contribution& c : pushes) sent += static_cast<double>(c.ByteSizeLong());
  EXPECT_EQ(Get(body, "dion_received_bytes_total"), sent);
  EXPECT_GT(Get(body, "dion_sent_bytes_total"), 0);
  EXPECT_EQ(Get(body, "dion_steps_total{kind=\"dion\"}"), 4);
  EXPECT_EQ(Get(body, "dion_steps_total{kind=\"adamw\"}"), 0);
  EXPECT_EQ(Get(body, "dion_parameter_version{kind=\"dion\"}"), 4);
  EXPECT_EQ(Get(body, "dion_batch_contributions_count"), 4);
  EXPECT_EQ(Get(body, "dion_failed_steps_total{kind=\"dion\"}"), 0);
  // Staleness is recorded for accepted and stale pushes: 0, 0, 0, 0 and 4.
  EXPECT_EQ(Get(body, "dion_push_staleness_count"), 5);
  EXPECT_EQ(Get(body, "dion_push_staleness_sum"), 4);
  EXPECT_EQ(Get(body, "dion_connected_workers"), 0) << "every push stream has ended";
}

}  // namespace
}  // namespace dion
