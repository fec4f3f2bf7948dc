// The shard-to-shard reductions of row-split parameters over real gRPC on 127.0.0.1
// (docs/server.md, "Peers"): three shards in one process, each a ShardPeer server with its
// own ReduceHub, and one GrpcRowReducer per owner on its own thread. The sums are compared
// bit for bit with an independent reference (owner-order double sum rounded once); the
// failures (a missing owner, a shape mismatch, an oversized part, tokens) must reach every
// owner with the documented code, within the deadline. The token cases run through two
// DionServers with mutual TLS, as dion-server runs them.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/dion.h"
#include "common/rng.h"
#include "common/row_reduce.h"
#include "common/tls.h"
#include "server/dion_server.h"
#include "server/metrics.h"
#include "server/peer/grpc_row_reducer.h"
#include "server/peer/peer_channels.h"
#include "server/peer/peer_service.h"
#include "server/peer/reduce_hub.h"
#include "server/peer/reduce_wire.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

namespace fs = std::filesystem;
using ::dion::testing::MetricValue;
using ::dion::testing::TestServerOptions;

constexpr int kShards = 3;

// One owner's part: mostly N(0, 1) * 10^owner, plus columns where the owner order decides the
// double result (2^30, -2^30, 1e-20: in owner order 1e-20, summed in reverse 0).
Matrix MakePart(int rows, int cols, int owner, uint64_t seed) {
  std::mt19937_64 rng(seed * 131 + owner);
  std::normal_distribution<float> normal;
  Matrix part(rows, cols);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) part(i, j) = normal(rng) * std::pow(10.0f, owner);
    const float order_sensitive[3] = {1073741824.0f, -1073741824.0f, 1e-20f};
    part(i, 0) = order_sensitive[owner % 3];
  }
  return part;
}

// The reference: each element's parts added in owner order in double, rounded to float once.
Matrix ReferenceSum(const std::vector<Matrix>& parts) {
  Matrix sum(parts[0].rows(), parts[0].cols());
  for (int64_t e = 0; e < sum.size(); ++e) {
    double acc = parts[0].data()[e];
    for (size_t k = 1; k < parts.size(); ++k) acc += parts[k].data()[e];
    sum.data()[e] = static_cast<float>(acc);
  }
  return sum;
}

bool SameBits(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

// Runs fn(owner) on one thread per owner and joins them.
void OnOwnerThreads(int owners, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int k = 0; k < owners; ++k) threads.emplace_back(fn, k);
  for (std::thread& t : threads) t.join();
}

// Three shards in one process: each a gRPC server on 127.0.0.1:0 with a ReduceHub and the
// ShardPeer service, and channels to all three.
class PeerReduceTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(ReduceHubOptions{}); }

  void Start(const ReduceHubOptions& hub_options) {
    std::vector<std::string> addresses;
    for (int s = 0; s < kShards; ++s) {
      metrics_[s] = std::make_unique<ShardMetrics>();
      hubs_[s] = std::make_unique<ReduceHub>(hub_options);
      services_[s] = std::make_unique<ShardPeerService>(hubs_[s].get(), nullptr, nullptr,
                                                        metrics_[s].get(), absl::Seconds(10));
      grpc::ServerBuilder builder;
      int port = 0;
      builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
      builder.RegisterService(services_[s].get());
      servers_[s] = builder.BuildAndStart();
      ASSERT_NE(port, 0);
      addresses.push_back(absl::StrCat("127.0.0.1:", port));
    }
    PeerChannelOptions channel_options;
    channel_options.addresses = addresses;
    absl::StatusOr<std::unique_ptr<PeerChannels>> channels =
        PeerChannels::Create(channel_options);
    ASSERT_TRUE(channels.ok()) << channels.status();
    channels_ = *std::move(channels);
    // Connected before the tests' deadlines start (connecting is slow on a loaded machine).
    for (int s = 0; s < kShards; ++s) {
      ASSERT_TRUE(channels_->channel(s)->WaitForConnected(
          absl::ToChronoTime(absl::Now() + absl::Seconds(20))));
    }
  }

  void TearDown() override { Stop(); }

  void Stop() {
    for (int s = 0; s < kShards; ++s) {
      if (servers_[s] == nullptr) continue;
      hubs_[s]->Shutdown();
      servers_[s]->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
      servers_[s].reset();
      services_[s].reset();
      hubs_[s].reset();
    }
    channels_.reset();
  }

  PeerEnv Env(int shard) const {
    return PeerEnv{hubs_[shard].get(), channels_.get(), timeout_, metrics_[shard].get()};
  }

  // The reducer of owner `owner` of `parameter` at `step`, owned by shards `owner_shards`.
  GrpcRowReducer Reducer(const std::string& parameter, int64_t step,
                         const std::vector<int>& owner_shards, int owner) const {
    return GrpcRowReducer(parameter, step, owner_shards, owner, Env(owner_shards[owner]));
  }

  absl::Duration timeout_ = absl::Seconds(10);
  std::unique_ptr<ShardMetrics> metrics_[kShards];
  std::unique_ptr<ReduceHub> hubs_[kShards];
  std::unique_ptr<ShardPeerService> services_[kShards];
  std::unique_ptr<grpc::Server> servers_[kShards];
  std::unique_ptr<PeerChannels> channels_;
};

// Rounds of one step: (tag, rows, cols), like a Gram matrix, a sketch and R.
struct Round { const char* tag; int rows; int cols; };
constexpr Round kRounds[] = {{"gram", 8, 8}, {"sketch", 12, 8}, {"R", 40, 8}};

TEST_F(PeerReduceTest, SumIsTheOwnerOrderDoubleSumRoundedOnceWithTheSameBitsOnEveryOwner) {
  const std::vector<int> owner_shards = {0, 1, 2};
  Matrix got[3][kShards];
  OnOwnerThreads(3, [&](int owner) {
    GrpcRowReducer reducer = Reducer("w", 7, owner_shards, owner);
    for (int r = 0; r < 3; ++r) {
      Matrix part = MakePart(kRounds[r].rows, kRounds[r].cols, owner, r);
      ASSERT_TRUE(reducer.AllReduce(kRounds[r].tag, part).ok()) << owner;
      got[r][owner] = part;
    }
    EXPECT_EQ(reducer.next_round(), 3);
  });
  for (int r = 0; r < 3; ++r) {
    std::vector<Matrix> parts;
    for (int k = 0; k < 3; ++k) parts.push_back(MakePart(kRounds[r].rows, kRounds[r].cols, k, r));
    const Matrix reference = ReferenceSum(parts);
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(SameBits(got[r][k], reference)) << r << " " << k;
    // The reference discriminates: a float sum, or the reverse order, gives other bits.
    const Matrix float_sum = parts[0] + parts[1] + parts[2];
    const Matrix reverse = ReferenceSum({parts[2], parts[1], parts[0]});
    EXPECT_FALSE(SameBits(float_sum, reference));
    EXPECT_FALSE(SameBits(reverse, reference));
  }
  EXPECT_EQ(hubs_[0]->pending(), 0);
  EXPECT_GT(MetricValue(metrics_[1]->Serialize(), "dion_peer_sent_bytes_total"), 0);
  EXPECT_EQ(MetricValue(metrics_[2]->Serialize(),
                        "dion_peer_reduction_duration_seconds_count{tag=\"sketch\"}"),
            1);
}

// The Dion step of a wide matrix split over three shards (owner 0 on shard 2), summing over
// gRPC, equals the whole-matrix step to 1e-5 relative after 5 steps, and every owner holds
// the same Q bits: what the split step needs of this transport (docs/algorithm.md, "One
// matrix over many shards").
TEST_F(PeerReduceTest, SplitDionStepOverGrpcMatchesTheWholeStep) {
  const int64_t m = 48, n = 90;  // wide: the columns of X are split
  const int rank = 12;
  const std::vector<int> owner_shards = {2, 0, 1};
  DionConfig config;
  config.lr = 0.05;
  DionState whole_state = InitDionState(m, n, rank, 5);
  Matrix whole_X(m, n);
  Rng(6).FillNormal(whole_X, 0.1);
  std::vector<RowBlock> blocks;
  std::vector<DionState> states;
  std::vector<Matrix> Xs;
  for (int k = 0; k < kShards; ++k) {
    blocks.push_back(SplitRowBlock(n, kShards, k));
    states.push_back(InitDionRowState(m, n, blocks[k], rank, 5));
    Xs.push_back(whole_X.middleCols(blocks[k].begin, blocks[k].size()));
  }
  for (int64_t step = 1; step <= 5; ++step) {
    Matrix G(m, n);
    Rng(100 + static_cast<uint64_t>(step)).FillNormal(G);
    whole_state.M += G;
    ASSERT_TRUE(DionStepFromMomentum(whole_X, whole_state, config).applied);
    std::vector<absl::Status> statuses(kShards);
    OnOwnerThreads(kShards, [&](int k) {
      states[k].M += G.middleCols(blocks[k].begin, blocks[k].size());
      GrpcRowReducer reducer = Reducer("fc.weight", step, owner_shards, k);
      statuses[k] = DionRowStepFromMomentum(Xs[k], states[k], config, m, n, blocks[k], reducer)
                        .status();
    });
    for (int k = 0; k < kShards; ++k) ASSERT_TRUE(statuses[k].ok()) << statuses[k];
    for (int k = 1; k < kShards; ++k) EXPECT_TRUE(SameBits(states[k].Q, states[0].Q)) << k;
  }
  Matrix X(m, n);
  for (int k = 0; k < kShards; ++k) X.middleCols(blocks[k].begin, blocks[k].size()) = Xs[k];
  const double error = (X - whole_X).norm() / whole_X.norm();
  EXPECT_LE(error, 1e-5);
}

TEST_F(PeerReduceTest, TwoParametersAndTwoStepsAtOnceDoNotMix) {
  struct Group { std::string parameter; int64_t step; std::vector<int> owner_shards; };
  // "v" is led by shard 2, "w" by shard 0; both steps of each run at the same time.
  const std::vector<Group> groups = {
      {"w", 1, {0, 1, 2}}, {"w", 2, {0, 1, 2}}, {"v", 1, {2, 0, 1}}, {"v", 2, {2, 0, 1}}};
  Matrix got[4][3][2];
  OnOwnerThreads(12, [&](int thread) {
    const int g = thread / 3;
    const int owner = thread % 3;
    GrpcRowReducer reducer = Reducer(groups[g].parameter, groups[g].step,
                                     groups[g].owner_shards, owner);
    for (int r = 0; r < 2; ++r) {
      Matrix part = MakePart(6, 4, owner, 100 * g + r);
      ASSERT_TRUE(reducer.AllReduce("gram", part).ok());
      got[g][owner][r] = part;
    }
  });
  for (int g = 0; g < 4; ++g) {
    for (int r = 0; r < 2; ++r) {
      std::vector<Matrix> parts;
      for (int k = 0; k < 3; ++k) parts.push_back(MakePart(6, 4, k, 100 * g + r));
      for (int k = 0; k < 3; ++k) {
        EXPECT_TRUE(SameBits(got[g][k][r], ReferenceSum(parts))) << g << " " << k << " " << r;
      }
    }
  }
}

// Runs one reduction of `parameter`/`step` where `absent` never calls; returns each owner's
// status and how long its AllReduce took.
void ReduceWithoutOwner(const std::function<GrpcRowReducer(int)>& make, int absent, absl::Status* status, absl::Duration* took) {
  OnOwnerThreads(3, [&](int owner) {
    if (owner == absent) return;
    GrpcRowReducer reducer = make(owner);
    Matrix part = MakePart(4, 4, owner, 1);
    const absl::Time start = absl::Now();
    status[owner] = reducer.AllReduce("gram", part);
    took[owner] = absl::Now() - start;
  });
}

TEST_F(PeerReduceTest, MissingOwnerFailsEveryOtherOwnerByTheDeadlineNamingIt) {
  timeout_ = absl::Seconds(1);
  const std::vector<int> owner_shards = {0, 1, 2};
  for (int absent : {2, 0}) {  // a follower, then the leader itself
    const int64_t step = 10 + absent;
    absl::Status status[3];
    absl::Duration took[3];
    ReduceWithoutOwner([&](int k) { return Reducer("w", step, owner_shards, k); }, absent,
                       status, took);
    for (int k = 0; k < 3; ++k) {
      if (k == absent) continue;
      EXPECT_EQ(status[k].code(), absl::StatusCode::kDeadlineExceeded) << status[k];
      EXPECT_NE(status[k].message().find(absl::StrCat("no part from owner(s) ", absent)),
                std::string::npos)
          << status[k];
      EXPECT_LT(took[k], timeout_ + absl::Milliseconds(1500)) << k;
    }
    // The late owner cannot start the reduction again: ABORTED, saying why.
    GrpcRowReducer late = Reducer("w", step, owner_shards, absent);
    Matrix part = MakePart(4, 4, absent, 1);
    const absl::Status s = late.AllReduce("gram", part);
    EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
    EXPECT_NE(s.message().find("no part from owner(s)"), std::string::npos) << s;
  }
  EXPECT_GE(MetricValue(metrics_[1]->Serialize(),
                        "dion_peer_reduction_failures_total{reason=\"timeout\"}"),
            2);
  // The next step works.
  Matrix got[3];
  OnOwnerThreads(3, [&](int owner) {
    GrpcRowReducer reducer = Reducer("w", 20, owner_shards, owner);
    got[owner] = MakePart(4, 4, owner, 2);
    EXPECT_TRUE(reducer.AllReduce("gram", got[owner]).ok());
  });
  const Matrix reference =
      ReferenceSum({MakePart(4, 4, 0, 2), MakePart(4, 4, 1, 2), MakePart(4, 4, 2, 2)});
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(SameBits(got[k], reference)) << k;
}

TEST_F(PeerReduceTest, ShapeMismatchFailsTheReductionForEveryOwner) {
  const std::vector<int> owner_shards = {0, 1, 2};
  absl::Status status[3];
  OnOwnerThreads(3, [&](int owner) {
    GrpcRowReducer reducer = Reducer("w", 3, owner_shards, owner);
    if (owner == 1) {  // after the other two parts are in
      const ReduceKey key{"w", 3, 0};
      const absl::Time give_up = absl::Now() + absl::Seconds(5);
      while (hubs_[0]->parts_arrived(key) < 2 && absl::Now() < give_up) {
        absl::SleepFor(absl::Milliseconds(2));
      }
    }
    Matrix part = MakePart(4, owner == 1 ? 5 : 4, owner, 1);
    status[owner] = reducer.AllReduce("gram", part);
  });
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(status[k].code(), absl::StatusCode::kInvalidArgument) << status[k];
    EXPECT_NE(status[k].message().find("owner 1 sent a 4 x 5 part, expected a 4 x 4 part"),
              std::string::npos)
        << status[k];
  }
}

TEST_F(PeerReduceTest, OversizedPartIsResourceExhaustedAndFailsItsReduction) {
  Stop();
  Start(ReduceHubOptions{.max_part_bytes = 1024});
  const std::vector<int> owner_shards = {0, 1, 2};
  GrpcRowReducer follower = Reducer("w", 5, owner_shards, 1);
  Matrix big = MakePart(32, 32, 1, 1);  // 4 KiB
  const absl::Status s = follower.AllReduce("R", big);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("above this shard's limit of 1024 bytes"), std::string::npos) << s;
  // The leader learns at once instead of waiting for the deadline.
  GrpcRowReducer leader = Reducer("w", 5, owner_shards, 0);
  Matrix mine = MakePart(32, 32, 0, 1);
  EXPECT_EQ(leader.AllReduce("R", mine).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(hubs_[0]->pending(), 0);
}

TEST_F(PeerReduceTest, MalformedRequestIsInvalidArgument) {
  absl::StatusOr<v1::ShardPeer::StubInterface*> stub = channels_->Stub(0);
  ASSERT_TRUE(stub.ok());
  v1::ReduceRequest request;
  ReducePartToProto({"w", 1, 0}, "gram", 3, 3, MakePart(2, 2, 0, 1), &request);  // owner 3 of 3
  v1::ReduceResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  const grpc::Status s = (*stub)->Reduce(&context, request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("owner must be in [0, 3), got 3"), std::string::npos);
  EXPECT_EQ(hubs_[0]->pending(), 0);
}

TEST_F(PeerReduceTest, UnreachableLeaderIsUnavailableByTheDeadline) {
  PeerChannelOptions options;
  options.addresses = {"127.0.0.1:1", "127.0.0.1:1"};  // nothing listens on port 1
  absl::StatusOr<std::unique_ptr<PeerChannels>> nowhere = PeerChannels::Create(options);
  ASSERT_TRUE(nowhere.ok());
  GrpcRowReducer follower("w", 1, {0, 1}, 1,
                          PeerEnv{nullptr, nowhere->get(), absl::Milliseconds(300), nullptr});
  Matrix part = MakePart(2, 2, 1, 1);
  const absl::Time start = absl::Now();
  const absl::Status s = follower.AllReduce("gram", part);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("could not be reached within --peer_timeout"), std::string::npos);
  EXPECT_NE(s.message().find("led by shard 0 (127.0.0.1:1)"), std::string::npos) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST_F(PeerReduceTest, LeaderShutdownEndsWaitingReductionsUnavailable) {
  absl::Status status;
  std::thread follower([&] {
    GrpcRowReducer reducer = Reducer("w", 4, {0, 1, 2}, 1);
    Matrix part = MakePart(2, 2, 1, 1);
    status = reducer.AllReduce("gram", part);
  });
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (hubs_[0]->parts_arrived({"w", 4, 0}) < 1 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  hubs_[0]->Shutdown();
  follower.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("shutting down"), std::string::npos) << status;
}

TEST_F(PeerReduceTest, OneOwnerReturnsItsPartUnchangedWithoutAnyCall) {
  // No hub and no channels: any attempt to reduce would fail.
  GrpcRowReducer alone("w", 1, {1}, 0, PeerEnv{nullptr, nullptr, absl::Seconds(1), nullptr});
  const Matrix original = MakePart(5, 3, 0, 9);
  Matrix part = original;
  ASSERT_TRUE(alone.AllReduce("gram", part).ok());
  EXPECT_TRUE(SameBits(part, original));
  EXPECT_EQ(alone.owners(), 1);
}

// ---- Replays: a part sent again to a completed reduction of the latest step.

// Owners 0 and 1 of `parameter`'s `step` submit MakePart(…, seed) to `hub` on two threads;
// returns owner 1's sum (both must succeed).
Matrix ReduceTwo(ReduceHub& hub, const std::string& parameter, int64_t step, uint64_t seed) {
  Matrix sums[2];
  OnOwnerThreads(2, [&](int owner) {
    absl::StatusOr<std::shared_ptr<const Matrix>> sum = hub.Submit(
        ReducePart{{parameter, step, 0, 0}, "R", owner, 2, MakePart(6, 4, owner, seed)},
        absl::Now() + absl::Seconds(10));
    ASSERT_TRUE(sum.ok()) << sum.status();
    sums[owner] = **sum;
  });
  return sums[1];
}

absl::StatusOr<std::shared_ptr<const Matrix>> SubmitAgain(ReduceHub& hub,
                                                          const std::string& parameter,
                                                          int64_t step, Matrix value) {
  return hub.Submit(ReducePart{{parameter, step, 0, 0}, "R", 1, 2, std::move(value)},
                    absl::Now() + absl::Seconds(1));
}

TEST(ReduceHubReplay, TheSamePartAgainGetsTheSameSumUntilTheNextStepCompletes) {
  ReduceHub hub;
  const Matrix first = ReduceTwo(hub, "w", 1, 7);
  EXPECT_TRUE(SameBits(first, ReferenceSum({MakePart(6, 4, 0, 7), MakePart(6, 4, 1, 7)})));

  // Owner 1 sends its part of step 1 again (its answer was lost): the same sum.
  absl::StatusOr<std::shared_ptr<const Matrix>> again =
      SubmitAgain(hub, "w", 1, MakePart(6, 4, 1, 7));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(SameBits(**again, first));
  EXPECT_EQ(hub.replays(), 1);

  // Another part under that key is not one the sum holds: refused, as any late part.
  absl::StatusOr<std::shared_ptr<const Matrix>> other =
      SubmitAgain(hub, "w", 1, MakePart(6, 4, 1, 8));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition) << other.status();
  EXPECT_NE(other.status().message().find("already completed"), std::string::npos);

  // Another parameter's step keeps w's sums; w's next step drops them.
  ReduceTwo(hub, "v", 5, 9);
  EXPECT_TRUE(SubmitAgain(hub, "w", 1, MakePart(6, 4, 1, 7)).ok());
  ReduceTwo(hub, "w", 2, 10);
  absl::StatusOr<std::shared_ptr<const Matrix>> dropped =
      SubmitAgain(hub, "w", 1, MakePart(6, 4, 1, 7));
  EXPECT_EQ(dropped.status().code(), absl::StatusCode::kFailedPrecondition)
      << dropped.status();
  EXPECT_EQ(hub.replays(), 2);
}

TEST(ReduceHubReplay, RetainedSumsOutliveTheFinishedReductionsMemory) {
  ReduceHubOptions options;
  options.finished_memory = 2;
  ReduceHub hub(options);
  const Matrix first = ReduceTwo(hub, "w", 1, 7);
  for (int p = 0; p < 4; ++p) ReduceTwo(hub, absl::StrCat("other", p), 1, 20 + p);
  absl::StatusOr<std::shared_ptr<const Matrix>> again =
      SubmitAgain(hub, "w", 1, MakePart(6, 4, 1, 7));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(SameBits(**again, first));
}

TEST(ReduceHubReplay, AFailedReductionIsNeverReplayed) {
  ReduceHub hub;
  // Owner 0 alone: the reduction fails at its deadline.
  absl::StatusOr<std::shared_ptr<const Matrix>> alone =
      hub.Submit(ReducePart{{"w", 1, 0, 0}, "R", 0, 2, MakePart(6, 4, 0, 7)},
                 absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(alone.status().code(), absl::StatusCode::kDeadlineExceeded) << alone.status();
  absl::StatusOr<std::shared_ptr<const Matrix>> late =
      hub.Submit(ReducePart{{"w", 1, 0, 0}, "R", 0, 2, MakePart(6, 4, 0, 7)},
                 absl::Now() + absl::Seconds(1));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kAborted) << late.status();
  EXPECT_EQ(hub.replays(), 0);
}

// ---- Tokens and mutual TLS through DionServer: shard 0 leads, shard 1 follows.

constexpr char kAdminToken[] = "admin-token-0123456789abcdef";
constexpr char kWorkerToken[] = "worker-token-0123456789abcdef";
constexpr char kPeerToken[] = "peer-token-0123456789abcdef";

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

void RunCommand(const std::string& command) {
  ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
}

class PeerSecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "/peer-", getpid()));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_);
    const std::string d = *dir_;
    const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    RunCommand(absl::StrCat("openssl req -x509 ", ec, " -keyout ", d, "/ca.key -out ", d,
                     "/ca.crt -days 2 -subj /CN=ca -addext basicConstraints=critical,CA:TRUE",
                     " -addext keyUsage=critical,keyCertSign,cRLSign"));
    // One certificate for both shards, for serving and for calling each other.
    WriteFile(d + "/shard.ext", "subjectAltName=IP:127.0.0.1\n"
                                "extendedKeyUsage=serverAuth,clientAuth\n");
    RunCommand(absl::StrCat("openssl req ", ec, " -keyout ", d, "/shard.key -out ", d,
                     "/shard.csr -subj /CN=shard"));
    RunCommand(absl::StrCat("openssl x509 -req -in ", d, "/shard.csr -CA ", d, "/ca.crt -CAkey ", d,
                     "/ca.key -CAcreateserial -out ", d, "/shard.crt -days 2 -extfile ", d,
                     "/shard.ext"));
    WriteFile(d + "/tokens.txt", absl::StrCat(kAdminToken, " admin ops\n", kWorkerToken,
                                              " worker trainers\n", kPeerToken, " peer shards\n"));
    for (const char* token : {kWorkerToken, kPeerToken}) {
      WriteFile(absl::StrCat(d, "/", std::string(token).substr(0, 4), ".token"),
                absl::StrCat(token, "\n"));
    }
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static std::string F(const std::string& name) { return *dir_ + "/" + name; }

  static ServerOptions ShardOptions(int index, const std::string& token_file) {
    ServerOptions options = TestServerOptions();
    options.shard.store.shard_index = index;
    options.shard.store.num_shards = 2;
    options.tls.cert_file = F("shard.crt");
    options.tls.key_file = F("shard.key");
    options.tls.client_ca_file = F("ca.crt");  // mutual TLS; also the peers' trust
    options.auth_tokens_file = F("tokens.txt");
    options.peer.token_file = token_file;
    options.peer.timeout = absl::Seconds(3);
    return options;
  }

  void SetUp() override {
    absl::StatusOr<std::unique_ptr<DionServer>> leader =
        DionServer::Start(ShardOptions(0, F("peer.token")));
    ASSERT_TRUE(leader.ok()) << leader.status();
    leader_ = *std::move(leader);
  }

  // A follower shard sending `token_file` (none: a shard without tokens of its own).
  std::unique_ptr<DionServer> Follower(const std::string& token_file) {
    ServerOptions options = ShardOptions(1, token_file);
    if (token_file.empty()) options.auth_tokens_file.clear();
    options.peer.addresses = {leader_->address(), "127.0.0.1:1"};  // its own is never dialed
    absl::StatusOr<std::unique_ptr<DionServer>> follower = DionServer::Start(options);
    EXPECT_TRUE(follower.ok()) << follower.status();
    return follower.ok() ? *std::move(follower) : nullptr;
  }

  static std::string* dir_;
  std::unique_ptr<DionServer> leader_;
};
std::string* PeerSecurityTest::dir_ = nullptr;

TEST_F(PeerSecurityTest, FollowerNeedsARoleThatMayReduce) {
  struct Case { std::string token_file; absl::StatusCode code; };
  const Case cases[] = {{"", absl::StatusCode::kUnauthenticated},
                        {F("work.token"), absl::StatusCode::kPermissionDenied}};
  for (const Case& c : cases) {
    std::unique_ptr<DionServer> follower = Follower(c.token_file);
    ASSERT_NE(follower, nullptr);
    GrpcRowReducer reducer("w", 1, {0, 1}, 1, follower->peer_env());
    Matrix part = MakePart(3, 3, 1, 1);
    const absl::Status s = reducer.AllReduce("gram", part);
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_NE(s.message().find("ShardPeer.Reduce"), std::string::npos) << s;
  }
  EXPECT_EQ(leader_->peer_env().hub->pending(), 0);  // refused before the hub
}

TEST_F(PeerSecurityTest, PeerTokenReducesOverMutualTls) {
  std::unique_ptr<DionServer> follower = Follower(F("peer.token"));
  ASSERT_NE(follower, nullptr);
  Matrix got[2];
  OnOwnerThreads(2, [&](int owner) {
    GrpcRowReducer reducer("w", 1, {0, 1}, owner,
                           owner == 0 ? leader_->peer_env() : follower->peer_env());
    got[owner] = MakePart(3, 3, owner, 1);
    const absl::Status s = reducer.AllReduce("gram", got[owner]);
    EXPECT_TRUE(s.ok()) << s;
  });
  const Matrix reference = ReferenceSum({MakePart(3, 3, 0, 1), MakePart(3, 3, 1, 1)});
  EXPECT_TRUE(SameBits(got[0], reference));
  EXPECT_TRUE(SameBits(got[1], reference));
}

TEST_F(PeerSecurityTest, PeerTokenMayCallNothingOfParameterServer) {
  TlsClientConfig tls;
  tls.ca_file = F("ca.crt");
  tls.cert_file = F("shard.crt");
  tls.key_file = F("shard.key");
  tls.token_file = F("peer.token");
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(tls);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  auto stub = v1::ParameterServer::NewStub(grpc::CreateChannel(leader_->address(), *credentials));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::StatusResponse response;
  const grpc::Status s = stub->Status(&context, v1::StatusRequest(), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_NE(s.error_message().find("role peer"), std::string::npos) << s.error_message();
}

TEST_F(PeerSecurityTest, ShardWithTokensRefusesToStartPeersWithoutAPeerToken) {
  ServerOptions options = ShardOptions(1, "");
  options.peer.addresses = {leader_->address(), "127.0.0.1:1"};
  const absl::Status s = DionServer::Start(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("peer_token_file"), std::string::npos) << s;
}

}  // namespace
}  // namespace dion
