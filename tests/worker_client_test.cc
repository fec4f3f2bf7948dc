// The worker's client library (worker/client/client.h) against in-process shards on 127.0.0.1:
// replica in step with the shard, refused pushes restored with their age (nothing lost), stale
// ones dropped and counted, resync after a shard restarts from an older checkpoint, reconnect
// after an outage, giving up, bad input.
// Timing-dependent faults (a stream breaking while a push is taken, an update arriving during
// a resync, a shard that hangs) are scripted with a fake shard (tests/fake_shard.h).
#include "worker/client/client.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/dion.h"
#include "common/rng.h"
#include "common/wire.h"
#include "tests/fake_shard.h"
#include "tests/reference.h"
#include "tests/server_test_util.h"
#include "tests/wait_test_util.h"
#include "worker/client/gradient_accumulator.h"

namespace dion {
namespace {

using testing::TestModelRequest;
using testing::TestServerOptions;
using testing::WaitUntil;

ModelTable TestTable() { return ModelTableFromProto(TestModelRequest()).value(); }

ClientOptions TestClientOptions(std::vector<std::string> addresses, const std::string& id) {
  ClientOptions options;
  options.shard_addresses = std::move(addresses);
  options.worker_id = id;
  options.rpc_deadline = absl::Seconds(5);
  options.reconnect.initial_delay = absl::Milliseconds(20);
  options.reconnect.max_delay = absl::Milliseconds(200);
  options.reconnect.give_up_after = absl::Seconds(20);
  options.seed = 7;
  return options;
}

std::vector<Matrix> RandomGradients(const std::vector<ParamSpec>& specs, uint64_t seed) {
  Rng rng(seed);
  std::vector<Matrix> gradients;
  for (const ParamSpec& spec : specs) {
    Matrix G(spec.rows(), spec.cols());
    rng.FillNormal(G, 0.1);
    gradients.push_back(std::move(G));
  }
  return gradients;
}

std::unique_ptr<testing::FakeShard> StartFake(const ModelTable& table = TestTable()) {
  auto fake = std::make_unique<testing::FakeShard>(table);
  const absl::Status started = fake->Start();
  EXPECT_TRUE(started.ok()) << started;
  return started.ok() ? std::move(fake) : nullptr;
}

// Connect to the fake, then wait until the client's subscription is open there (so that
// broadcasts reach it).
absl::StatusOr<std::unique_ptr<Client>> ConnectToFake(
    testing::FakeShard& fake, const ClientOptions& options,
    const ModelTable& table = TestTable()) {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, options);
  if (client.ok() && !WaitUntil([&] { return fake.open_subscriptions() == 1; })) {
    return absl::DeadlineExceededError("the client never subscribed to the fake shard");
  }
  return client;
}

int IndexOf(const Client& client, const std::string& name) {
  for (int i = 0; i < static_cast<int>(client.specs().size()); ++i) {
    if (client.specs()[i].name == name) return i;
  }
  return -1;
}

std::unique_ptr<DionServer> StartServer(ServerOptions options) {
  absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// A server and the client "w0" connected to it; either is null (with the failure recorded)
// when it did not start. The client is destroyed before the server.
struct ServerAndClient {
  std::unique_ptr<DionServer> server;
  std::unique_ptr<Client> client;
};

ServerAndClient StartServerAndClient(ServerOptions options = TestServerOptions()) {
  ServerAndClient both;
  both.server = StartServer(std::move(options));
  if (both.server == nullptr) return both;
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(TestTable(), TestClientOptions({both.server->address()}, "w0"));
  EXPECT_TRUE(client.ok()) << client.status();
  if (client.ok()) both.client = *std::move(client);
  return both;
}

// WaitForVersionsAbove(versions, timeout) on its own thread. The constructor returns once the
// thread is (almost surely) asleep in the wait, so that whatever the test does next can only
// end the wait by waking it: a waiter nobody wakes returns at its timeout.
struct BackgroundWait {
  BackgroundWait(const Client& client, std::vector<int64_t> versions, absl::Duration timeout)
      : thread([this, &client, versions = std::move(versions), timeout] {
          const absl::Time start = absl::Now();
          entered.store(true);
          status = client.WaitForVersionsAbove(versions, timeout);
          took = absl::Now() - start;
        }) {
    while (!entered.load()) absl::SleepFor(absl::Milliseconds(1));
    absl::SleepFor(absl::Milliseconds(50));
  }
  ~BackgroundWait() { Join(); }
  void Join() {
    if (thread.joinable()) thread.join();
  }

  std::atomic<bool> entered{false};
  absl::Status status = absl::UnknownError("not run");  // valid after Join
  absl::Duration took;                                   // valid after Join
  std::thread thread;  // last: starts once the fields above exist
};

// Waits until the client's replica of every parameter has the server's version and bits.
::testing::AssertionResult ReplicaMatchesServer(Client& client, DionServer& server) {
  auto stub = testing::Connect(server.address());
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  std::string last;
  while (absl::Now() < deadline) {
    std::vector<Matrix> weights;
    client.CopyWeights(&weights);
    bool all = true;
    for (int i = 0; i < static_cast<int>(client.specs().size()); ++i) {
      const v1::ParameterValue value = testing::PullOne(*stub, client.specs()[i].name);
      if (client.version(i) != value.version() ||
          WeightsChecksum(weights[i]) != value.checksum()) {
        all = false;
        last = absl::StrCat(client.specs()[i].name, ": replica version ", client.version(i),
                            ", server version ", value.version());
      }
    }
    if (all) return ::testing::AssertionSuccess();
    absl::SleepFor(absl::Milliseconds(10));
  }
  return ::testing::AssertionFailure() << "replica never matched the server; " << last;
}

TEST(WorkerClient, ReplicaFollowsTheShardBitForBit) {
  auto [server, client] = StartServerAndClient();
  ASSERT_NE(client, nullptr);
  for (int step = 0; step < 12; ++step) {
    ASSERT_TRUE(client->Submit(RandomGradients(client->specs(), step), 16, 2.0).ok());
  }
  ASSERT_TRUE(client->Flush(absl::Seconds(20)).ok());
  EXPECT_TRUE(ReplicaMatchesServer(*client, *server));
  for (int i = 0; i < static_cast<int>(client->specs().size()); ++i) {
    EXPECT_GT(client->version(i), 0) << client->specs()[i].name << " never stepped";
  }
  const ClientStats stats = client->stats();
  EXPECT_EQ(stats.local_steps, 12);
  EXPECT_GT(stats.accepted, 0);
  EXPECT_GT(stats.dense_bytes, 0);
  EXPECT_EQ(stats.resyncs, 0);
  // The broadcast direction: at least every parameter's first full value, counted dense.
  int64_t first_values_dense = 0;
  for (const ParamSpec& spec : client->specs()) first_values_dense += 4 * spec.size();
  EXPECT_GT(stats.received_bytes, 0);
  EXPECT_GE(stats.received_dense_bytes, first_values_dense);
  client->Close();
  EXPECT_TRUE(server->Shutdown().ok());
}

// The adaptive push rank reads the uplink of the client's own gRPC connections (a gRPC socket
// dialed at an IPv4 address is a dual-stack IPv6 socket whose peer reads back v4-mapped): after
// a few windows of pushing, the rate it chose from is measured, and loopback has room for the
// start fraction, which is also the ceiling.
TEST(WorkerClient, AdaptivePushRankMeasuresTheUplinkOfItsGrpcConnections) {
  std::unique_ptr<DionServer> server = StartServer(TestServerOptions());
  ASSERT_NE(server, nullptr);
  ClientOptions options = TestClientOptions({server->address()}, "w0");
  options.auto_compression_rank = true;
  options.compression_rank_fraction = 0.25;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(TestTable(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Time until = absl::Now() + absl::Seconds(20);
  for (int step = 0; (*client)->stats().uplink_rate_bytes_per_second <= 0 && absl::Now() < until;
       ++step) {
    ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), step), 16, 2.0).ok());
    absl::SleepFor(absl::Milliseconds(5));
  }
  const ClientStats stats = (*client)->stats();
  EXPECT_TRUE(stats.adaptive_push_rank);
  EXPECT_GT(stats.uplink_rate_bytes_per_second, 1e6) << "no delivery rate read in 20 s";
  EXPECT_EQ(stats.push_rank_fraction, 0.25);
  (*client)->Close();
  EXPECT_TRUE(server->Shutdown().ok());
}

// WaitForVersionsAbove: wrong arity is refused, a version nobody advances runs into the
// deadline naming the parameter, and one step of every parameter wakes the waiter.
TEST(WorkerClient, WaitForVersionsAboveReturnsOnceEveryParameterStepped) {
  auto [server, client] = StartServerAndClient();
  ASSERT_NE(client, nullptr);
  Client& c = *client;
  const int n = static_cast<int>(c.specs().size());
  std::vector<int64_t> versions(n);
  for (int i = 0; i < n; ++i) versions[i] = c.version(i);

  EXPECT_TRUE(absl::IsInvalidArgument(
      c.WaitForVersionsAbove(absl::MakeConstSpan(versions).subspan(1), absl::Seconds(1))));
  const absl::Status idle = c.WaitForVersionsAbove(versions, absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsDeadlineExceeded(idle)) << idle;
  EXPECT_TRUE(absl::StrContains(idle.message(), c.specs()[0].name)) << idle;

  std::vector<int64_t> below = versions;
  for (int64_t& v : below) v -= 1;
  EXPECT_TRUE(c.WaitForVersionsAbove(below, absl::ZeroDuration()).ok());

  // The waiter blocks before the step is submitted: only the broadcasts can wake it. Its
  // timeout is long: a waiter nobody wakes would only see the new versions at its deadline
  // and return then, so returning well before it shows that the updates woke it.
  constexpr absl::Duration kTimeout = absl::Seconds(30);
  BackgroundWait waiter(c, versions, kTimeout);  // submit only once it is waiting
  const absl::Status submitted = c.Submit(RandomGradients(c.specs(), 1), 16, 2.0);
  const absl::Status flushed = c.Flush(absl::Seconds(20));
  waiter.Join();  // before any assertion can return
  ASSERT_TRUE(submitted.ok()) << submitted;
  ASSERT_TRUE(flushed.ok()) << flushed;
  EXPECT_TRUE(waiter.status.ok()) << waiter.status;
  EXPECT_LT(waiter.took, kTimeout / 2);
  for (int i = 0; i < n; ++i) EXPECT_GT(c.version(i), versions[i]) << c.specs()[i].name;
  c.Close();
  EXPECT_TRUE(server->Shutdown().ok());
}

// Close from another thread wakes a waiter at once (it would otherwise sleep until its
// deadline), and the client refuses work afterwards instead of accepting it into nothing.
TEST(WorkerClient, CloseWakesWaitersAndLaterCallsAreRefused) {
  auto [server, client] = StartServerAndClient();
  ASSERT_NE(client, nullptr);
  Client& c = *client;
  std::vector<int64_t> versions;
  for (int i = 0; i < static_cast<int>(c.specs().size()); ++i) versions.push_back(c.version(i));

  constexpr absl::Duration kTimeout = absl::Seconds(30);
  BackgroundWait waiter(c, versions, kTimeout);  // nothing is pushed: only Close can end it
  c.Close();
  waiter.Join();  // before any assertion can return
  EXPECT_TRUE(absl::IsFailedPrecondition(waiter.status)) << waiter.status;
  EXPECT_TRUE(absl::StrContains(waiter.status.message(), "closed")) << waiter.status;
  EXPECT_LT(waiter.took, kTimeout / 2);

  const absl::Status submitted = c.Submit(RandomGradients(c.specs(), 1), 16, 2.0);
  EXPECT_TRUE(absl::IsFailedPrecondition(submitted)) << submitted;
  const absl::Status flushed = c.Flush(kTimeout);
  EXPECT_TRUE(absl::IsFailedPrecondition(flushed)) << flushed;
  EXPECT_TRUE(c.status().ok()) << "closing is not a failure: " << c.status();
  c.Close();  // idempotent
  EXPECT_TRUE(server->Shutdown().ok());
}

// With max_staleness 0, pushes taken on the same base version go stale: they are dropped
// (their true age is above the bound, so re-sending would be refused again), counted, and
// everything else is applied or still in the residual.
TEST(WorkerClient, StalePushesAreDroppedAndCountedAndNothingElseIsLost) {
  ServerOptions options = TestServerOptions();
  options.shard.batcher.staleness.max_staleness = 0;  // anything computed on an old version
  std::unique_ptr<DionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  const ModelTable table = TestTable();
  const std::vector<ParamSpec> specs = table.specs();
  // Applied and dropped contributions, in sum units (payload * samples), per parameter.
  std::vector<MatrixD> settled;
  for (const ParamSpec& s : specs) settled.push_back(MatrixD::Zero(s.rows(), s.cols()));
  int64_t dropped_samples = 0;
  Mutex mu;
  ClientOptions client_options = TestClientOptions({server->address()}, "w0");
  client_options.max_in_flight = 3;  // several pushes on one base version: later ones go stale
  client_options.on_acknowledged = [&](const Contribution& c, PushFate fate) {
    if (fate == PushFate::kRestored) return;
    int i = 0;
    while (specs[i].name != c.parameter) ++i;
    const double s = static_cast<double>(c.sample_count);
    MatrixD sum = c.is_low_rank()
                      ? MatrixD(c.factors().P.cast<double>() *
                                c.factors().R.cast<double>().transpose() * s)
                      : MatrixD(c.gradient().cast<double>() * s);
    MutexLock lock(&mu);
    settled[i] += sum;
    if (fate == PushFate::kDroppedStale) dropped_samples += c.sample_count;
  };
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<MatrixD> total;
  for (const ParamSpec& s : specs) total.push_back(MatrixD::Zero(s.rows(), s.cols()));
  for (int step = 0; step < 30; ++step) {
    std::vector<Matrix> G = RandomGradients(specs, 100 + step);
    const int64_t samples = 8 + step % 3;
    for (size_t i = 0; i < specs.size(); ++i) {
      total[i] += G[i].cast<double>() * static_cast<double>(samples);
    }
    ASSERT_TRUE((*client)->Submit(G, samples, 1.0).ok());
  }
  ASSERT_TRUE((*client)->Flush(absl::Seconds(30)).ok());
  const ClientStats stats = (*client)->stats();
  EXPECT_GT(stats.stale_dropped, 0) << "max_staleness 0 should refuse some pushes";
  EXPECT_EQ(stats.refused, 0) << "a STALE push is dropped, not restored";
  (*client)->Close();  // no acknowledgement arrives after this
  // Outstanding() takes the accumulator's lock, which the observer holds while it takes `mu`:
  // read it before taking `mu`.
  std::vector<MatrixD> outstanding;
  for (size_t i = 0; i < specs.size(); ++i) {
    outstanding.push_back((*client)->Outstanding(i).cast<double>());
  }
  MutexLock lock(&mu);
  EXPECT_EQ(stats.stale_dropped_samples, dropped_samples);
  for (size_t i = 0; i < specs.size(); ++i) {
    const MatrixD accounted = settled[i] + outstanding[i];
    // float32 sums of ~30 steps of O(0.1 * 10) entries; 1e-5 relative leaves 10x margin.
    EXPECT_LT(testing::RelativeError(accounted, total[i]), 1e-5) << specs[i].name;
  }
  EXPECT_TRUE(server->Shutdown().ok());
}

// FlushAll, as a worker does before it exits: after it, nothing is left in the residuals, and
// what the shard applied is, to float rounding, the sum of every gradient submitted; the
// shard's sample count is the submitted samples plus one per residual-only push.
TEST(WorkerClient, FlushAllPushesTheResidualsSoTheShardAppliesEverything) {
  std::unique_ptr<DionServer> server = StartServer(TestServerOptions());
  ASSERT_NE(server, nullptr);
  const ModelTable table = TestTable();
  const std::vector<ParamSpec> specs = table.specs();
  std::vector<MatrixD> applied;
  for (const ParamSpec& s : specs) applied.push_back(MatrixD::Zero(s.rows(), s.cols()));
  std::vector<int64_t> applied_samples(specs.size(), 0);
  Mutex mu;
  ClientOptions client_options = TestClientOptions({server->address()}, "w0");
  client_options.on_acknowledged = [&](const Contribution& c, PushFate fate) {
    if (fate != PushFate::kApplied) return;
    int i = 0;
    while (specs[i].name != c.parameter) ++i;
    const double s = static_cast<double>(c.sample_count);
    MatrixD sum = c.is_low_rank()
                      ? MatrixD(c.factors().P.cast<double>() *
                                c.factors().R.cast<double>().transpose() * s)
                      : MatrixD(c.gradient().cast<double>() * s);
    MutexLock lock(&mu);
    applied[i] += sum;
    applied_samples[i] += c.sample_count;
  };
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<MatrixD> total;
  for (const ParamSpec& s : specs) total.push_back(MatrixD::Zero(s.rows(), s.cols()));
  int64_t total_samples = 0;
  for (int step = 0; step < 12; ++step) {
    std::vector<Matrix> G = RandomGradients(specs, 300 + step);
    const int64_t samples = 5 + step % 4;
    for (size_t i = 0; i < specs.size(); ++i) {
      total[i] += G[i].cast<double>() * static_cast<double>(samples);
    }
    total_samples += samples;
    ASSERT_TRUE((*client)->Submit(G, samples, 1.0).ok());
  }
  ASSERT_TRUE((*client)->Flush(absl::Seconds(20)).ok());
  const int w = IndexOf(**client, "w"), v = IndexOf(**client, "v");
  ASSERT_GT((*client)->Outstanding(w).norm(), 0.0f) << "rank-compressed pushes leave a residual";
  ASSERT_GT((*client)->Outstanding(v).norm(), 0.0f);

  FlushReport report;
  const absl::Status flushed = (*client)->FlushAll(absl::Seconds(20), &report);
  ASSERT_TRUE(flushed.ok()) << flushed;
  EXPECT_EQ(report.residuals, 2);  // "w" (tall) and "v" (wide)
  EXPECT_GT(report.residual_norm, 0.0);
  EXPECT_EQ(report.residual_only_pushes, 2);  // Flush had sent every step already
  EXPECT_EQ(report.pushes, 2);
  EXPECT_EQ(report.unacknowledged, 0);
  EXPECT_EQ(report.unsettled_samples, 0);
  EXPECT_EQ(report.unsettled_norm, 0.0);
  (*client)->Close();
  std::vector<MatrixD> outstanding;
  for (size_t i = 0; i < specs.size(); ++i) {
    outstanding.push_back((*client)->Outstanding(i).cast<double>());
  }
  MutexLock lock(&mu);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(outstanding[i].norm(), 0.0) << specs[i].name;
    // float32 sums of 12 steps; the full-rank push is exact up to R / S * S: 1e-5 relative.
    EXPECT_LT(testing::RelativeError(applied[i], total[i]), 1e-5) << specs[i].name;
  }
  EXPECT_EQ(applied_samples[IndexOf(**client, "b")], total_samples);
  EXPECT_EQ(applied_samples[w], total_samples + 1);
  EXPECT_EQ(applied_samples[v], total_samples + 1);
  // The shard's own count of applied samples agrees, once its batches have been applied.
  const auto shard_samples = [&](int i) {
    for (const ShardStatus::Parameter& p : server->shard().Status().parameters) {
      if (p.status.parameter == specs[i].name) return p.status.samples_applied;
    }
    return int64_t{-1};
  };
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_TRUE(WaitUntil([&] { return shard_samples(i) == applied_samples[i]; }))
        << specs[i].name << ": shard applied " << shard_samples(i) << " samples, the client "
        << "saw " << applied_samples[i] << " accepted";
  }
  EXPECT_TRUE(server->Shutdown().ok());
}

// A shard that stops answering: FlushAll gives up at its timeout and reports what is lost.
TEST(WorkerClient, FlushAllReportsWhatIsLostWhenTheShardDoesNotAnswer) {
  // State the judge uses is declared before the fake shard, so it outlives the server's
  // handlers, which may still be in the judge while the fake shuts down.
  std::atomic<bool> hang{false};
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  fake->SetJudge([&](const v1::Contribution& c) {
    const absl::Time until = absl::Now() + absl::Seconds(30);  // bounded: the fake shuts down
    while (hang.load() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(5));
    return testing::FakeShard::Ack(c, v1::PUSH_RESULT_ACCEPTED);
  });
  absl::StatusOr<std::unique_ptr<Client>> client =
      ConnectToFake(*fake, TestClientOptions({fake->address()}, "w0"));
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 1), 8, 1.0).ok());
  ASSERT_TRUE((*client)->Flush(absl::Seconds(20)).ok());
  const int w = IndexOf(**client, "w");
  const double residual = (*client)->Outstanding(w).norm();
  ASSERT_GT(residual, 0.0);
  hang.store(true);  // every push from now on goes unanswered
  FlushReport report;
  const absl::Status flushed = (*client)->FlushAll(absl::Milliseconds(500), &report);
  hang.store(false);
  EXPECT_TRUE(absl::IsDeadlineExceeded(flushed)) << flushed;
  EXPECT_EQ(report.residuals, 2);
  EXPECT_EQ(report.unacknowledged, 2);  // the residuals of "w" and "v", in flight
  EXPECT_EQ(report.unsettled_samples, 2);
  // At least the residual of "w" (float rounding of the full-rank payload: 1e-5 relative).
  EXPECT_GE(report.unsettled_norm, residual * (1 - 1e-5));
  (*client)->Close();
}

// The pushes of "b" the fake received, in order.
std::vector<testing::FakeShard::Received> PushesOf(const testing::FakeShard& fake,
                                                   const std::string& parameter) {
  std::vector<testing::FakeShard::Received> out;
  for (const testing::FakeShard::Received& r : fake.received()) {
    if (r.parameter == parameter) out.push_back(r);
  }
  return out;
}

// A push rejected as not applied (the shard is shutting down) keeps its age: after the replica
// moved on, the next push carries it with the new step and the oldest base version of the two,
// so the shard bounds and weights its real staleness.
TEST(WorkerClient, RestoredPushIsResentWithItsOriginalBaseVersion) {
  // State the judge uses is declared before the fake shard, so it outlives the server's
  // handlers, which may still be in the judge while the fake shuts down.
  std::atomic<bool> rejected{false};
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  fake->SetJudge([&](const v1::Contribution& c) {
    if (c.parameter() == "b" && !rejected.exchange(true)) {
      return testing::FakeShard::Ack(c, v1::PUSH_RESULT_REJECTED,
                                     static_cast<int>(absl::StatusCode::kUnavailable),
                                     "the shard is shutting down");
    }
    return testing::FakeShard::Ack(c, v1::PUSH_RESULT_ACCEPTED);
  });
  absl::StatusOr<std::unique_ptr<Client>> client =
      ConnectToFake(*fake, TestClientOptions({fake->address()}, "w0"));
  ASSERT_TRUE(client.ok()) << client.status();
  const int b = IndexOf(**client, "b");
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 1), 8, 1.0).ok());
  ASSERT_TRUE(WaitUntil([&] { return (*client)->stats().refused == 1; }));
  Matrix X5(1, 24);
  Rng(5).FillNormal(X5);
  fake->Broadcast(VersionUpdate{"b", 5, WeightsChecksum(X5), X5});
  ASSERT_TRUE(WaitUntil([&] { return (*client)->version(b) == 5; }));
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 2), 6, 1.0).ok());
  ASSERT_TRUE((*client)->Flush(absl::Seconds(20)).ok()) << (*client)->status();
  (*client)->Close();
  const std::vector<testing::FakeShard::Received> pushes = PushesOf(*fake, "b");
  ASSERT_EQ(pushes.size(), 2u);
  EXPECT_EQ(pushes[0].base_version, 0);
  EXPECT_EQ(pushes[0].sample_count, 8);
  EXPECT_EQ(pushes[1].base_version, 0) << "re-sent as fresh: its staleness would be hidden";
  EXPECT_EQ(pushes[1].sample_count, 8 + 6);
  EXPECT_NE(pushes[1].sequence, pushes[0].sequence);
}

// A STALE push is dropped and counted; it is not sent again, and what follows carries only the
// new steps.
TEST(WorkerClient, StalePushIsDroppedAndNotSentAgain) {
  std::atomic<bool> stale{false};
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  fake->SetJudge([&](const v1::Contribution& c) {
    if (c.parameter() == "b" && !stale.exchange(true)) {
      return testing::FakeShard::Ack(c, v1::PUSH_RESULT_STALE, 0, "tau 20 > max_staleness 16");
    }
    return testing::FakeShard::Ack(c, v1::PUSH_RESULT_ACCEPTED);
  });
  ClientOptions options = TestClientOptions({fake->address()}, "w0");
  std::atomic<int> dropped_b{0};
  options.on_acknowledged = [&](const Contribution& c, PushFate fate) {
    dropped_b += c.parameter == "b" && fate == PushFate::kDroppedStale;
  };
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectToFake(*fake, options);
  ASSERT_TRUE(client.ok()) << client.status();
  const int b = IndexOf(**client, "b");
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 1), 8, 1.0).ok());
  ASSERT_TRUE(WaitUntil([&] { return (*client)->stats().stale_dropped == 1; }));
  EXPECT_EQ((*client)->Outstanding(b).norm(), 0.0f);  // nothing of it kept
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 2), 6, 1.0).ok());
  ASSERT_TRUE((*client)->Flush(absl::Seconds(20)).ok()) << (*client)->status();
  const ClientStats stats = (*client)->stats();
  (*client)->Close();
  EXPECT_EQ(dropped_b.load(), 1);
  EXPECT_EQ(stats.stale_dropped_samples, 8);
  EXPECT_EQ(stats.refused, 0);
  const std::vector<testing::FakeShard::Received> pushes = PushesOf(*fake, "b");
  ASSERT_EQ(pushes.size(), 2u);
  EXPECT_EQ(pushes[1].sample_count, 6);
}

TEST(WorkerClient, ResyncsWhenTheShardRestartsFromAnOlderCheckpoint) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      absl::StrCat("worker_client_resync-", getpid());
  std::filesystem::remove_all(dir);
  ServerOptions options = TestServerOptions();
  options.shard.checkpoint_dir = dir.string();
  options.shard.checkpoint_keep_last = 10;
  std::unique_ptr<DionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  ClientOptions client_options = TestClientOptions({server->address()}, "w0");
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(TestTable(), client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::vector<ParamSpec>& specs = (*client)->specs();
  for (int step = 0; step < 4; ++step) {
    ASSERT_TRUE((*client)->Submit(RandomGradients(specs, step), 8, 1.0).ok());
  }
  ASSERT_TRUE((*client)->Flush(absl::Seconds(20)).ok());
  absl::StatusOr<std::string> older = server->shard().Checkpoint();
  ASSERT_TRUE(older.ok()) << older.status();
  for (int step = 4; step < 10; ++step) {
    ASSERT_TRUE((*client)->Submit(RandomGradients(specs, step), 8, 1.0).ok());
  }
  ASSERT_TRUE((*client)->Flush(absl::Seconds(20)).ok());
  ASSERT_TRUE(ReplicaMatchesServer(**client, *server));
  const int64_t newer_version = (*client)->version(0);
  const std::string listen = server->address();
  ASSERT_TRUE(server->Shutdown().ok());
  server.reset();
  // Keep only the older checkpoint: the restarted shard is behind the worker's replica.
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path() != std::filesystem::path(*older)) std::filesystem::remove_all(entry.path());
  }
  options.listen = listen;
  server = StartServer(options);
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(ReplicaMatchesServer(**client, *server));
  EXPECT_LT((*client)->version(0), newer_version);  // the replica went back with the shard
  EXPECT_GE((*client)->stats().resyncs, 1);
  EXPECT_GE((*client)->stats().reconnects, 1);
  // Training goes on against the restarted shard.
  ASSERT_TRUE((*client)->Submit(RandomGradients(specs, 50), 8, 1.0).ok());
  ASSERT_TRUE((*client)->Flush(absl::Seconds(20)).ok());
  EXPECT_TRUE(ReplicaMatchesServer(**client, *server));
  (*client)->Close();
  EXPECT_TRUE(server->Shutdown().ok());
  std::filesystem::remove_all(dir);
}

TEST(WorkerClient, ReconnectsAfterTheShardIsDownForAFewSeconds) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      absl::StrCat("worker_client_reconnect-", getpid());
  std::filesystem::remove_all(dir);
  ServerOptions options = TestServerOptions();
  options.shard.checkpoint_dir = dir.string();
  std::unique_ptr<DionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(TestTable(), TestClientOptions({server->address()}, "w0"));
  ASSERT_TRUE(client.ok()) << client.status();
  const std::vector<ParamSpec>& specs = (*client)->specs();
  ASSERT_TRUE((*client)->Submit(RandomGradients(specs, 1), 8, 1.0).ok());
  ASSERT_TRUE((*client)->Flush(absl::Seconds(20)).ok());
  options.listen = server->address();
  ASSERT_TRUE(server->Shutdown().ok());
  server.reset();
  // Local steps go on while the shard is down: they accumulate, nothing is lost.
  for (int step = 2; step < 6; ++step) {
    ASSERT_TRUE((*client)->Submit(RandomGradients(specs, step), 8, 1.0).ok());
    absl::SleepFor(absl::Milliseconds(500));
  }
  server = StartServer(options);
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE((*client)->Flush(absl::Seconds(30)).ok()) << (*client)->status();
  EXPECT_GE((*client)->stats().reconnects, 1);
  EXPECT_TRUE(ReplicaMatchesServer(**client, *server));
  (*client)->Close();
  EXPECT_TRUE(server->Shutdown().ok());
  std::filesystem::remove_all(dir);
}

TEST(WorkerClient, GivesUpWithAClearErrorWhenAShardStaysDown) {
  std::unique_ptr<DionServer> server = StartServer(TestServerOptions());
  ASSERT_NE(server, nullptr);
  ClientOptions options = TestClientOptions({server->address()}, "w0");
  options.reconnect.give_up_after = absl::Seconds(1);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(TestTable(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(server->Shutdown().ok());
  server.reset();
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  absl::Status status;
  while (absl::Now() < deadline) {
    status = (*client)->Submit(RandomGradients((*client)->specs(), 3), 8, 1.0);
    if (!status.ok()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("shard 0"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find(options.shard_addresses[0]), absl::string_view::npos);
}

// A contribution over the shard's message limit fails the same way on every re-send: the client
// gives up at once with the cause, instead of retrying until give_up_after and blaming an outage.
TEST(WorkerClient, APushOverTheShardsMessageLimitFailsAtOnceNamingTheLimit) {
  ServerOptions server_options = TestServerOptions();
  server_options.max_message_bytes = 4096;
  std::unique_ptr<DionServer> server = StartServer(server_options);
  ASSERT_NE(server, nullptr);
  // Factors of a 256 x 256 matrix at rank 64 take 128 KiB; the registration stays small.
  v1::RegisterModelRequest request = TestModelRequest();
  testing::AddDionMatrix(request, "big", 256, 256, /*seed=*/4);
  const ModelTable table = ModelTableFromProto(request).value();
  ClientOptions options = TestClientOptions({server->address()}, "w0");
  options.reconnect.give_up_after = absl::Seconds(120);
  // The initial pull of the 256 x 256 matrix took over 5 s under TSan; not what is tested.
  options.rpc_deadline = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, options);
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Time start = absl::Now();
  absl::Status status;
  while (absl::Now() - start < absl::Seconds(20)) {
    status = (*client)->Submit(RandomGradients((*client)->specs(), 3), 8, 1.0);
    if (!status.ok()) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_NE(status.message().find("max_message_bytes"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("shard 0"), absl::string_view::npos) << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

// Pushed factors never cost more than the dense gradient: (m + n) r <= m n. Values by hand.
// The view-based calls a binding uses (Submit over ConstMatrixRef, CopyWeightsInto) behave as
// the Matrix ones: the same replica bits, and a wrong view shape refused before anything is
// written.
TEST(WorkerClient, CopyWeightsIntoViewsWritesTheReplicaAndRefusesWrongShapes) {
  ServerAndClient both = StartServerAndClient();
  ASSERT_NE(both.client, nullptr);
  Client& client = *both.client;
  const std::vector<ParamSpec>& specs = client.specs();
  const std::vector<Matrix> G = RandomGradients(specs, 3);
  std::vector<ConstMatrixRef> views(G.begin(), G.end());
  ASSERT_TRUE(client.Submit(absl::MakeConstSpan(views), 8, 1.0).ok());
  ASSERT_TRUE(client.Flush(absl::Seconds(20)).ok());
  std::vector<int64_t> zeros(specs.size(), 0);
  ASSERT_TRUE(client.WaitForVersionsAbove(zeros, absl::Seconds(20)).ok());
  ASSERT_TRUE(ReplicaMatchesServer(client, *both.server));
  std::vector<Matrix> expected;
  const int64_t versions = client.CopyWeights(&expected);
  std::vector<Matrix> buffers;
  for (const ParamSpec& s : specs) buffers.push_back(Matrix::Constant(s.rows(), s.cols(), 7));
  std::vector<MatrixRef> out(buffers.begin(), buffers.end());
  absl::StatusOr<int64_t> copied = client.CopyWeightsInto(absl::MakeSpan(out));
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ(*copied, versions);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_TRUE(buffers[i] == expected[i]) << specs[i].name;
  }
  std::vector<Matrix> untouched = buffers;
  for (Matrix& b : untouched) b.setConstant(7);
  Matrix wrong = Matrix::Constant(specs.back().rows() + 1, specs.back().cols(), 7);
  std::vector<MatrixRef> bad(untouched.begin(), untouched.end() - 1);
  bad.emplace_back(wrong);  // the last view has the wrong shape
  absl::StatusOr<int64_t> refused = client.CopyWeightsInto(absl::MakeSpan(bad));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), specs.back().name))
      << refused.status();
  EXPECT_TRUE((untouched[0].array() == 7).all()) << "nothing is written before the check";
  client.Close();
  EXPECT_TRUE(both.server->Shutdown().ok());
}

TEST(WorkerClient, CompressionRankIsTheFractionCappedAtTheDenseBreakEven) {
  const auto spec = [](int64_t m, int64_t n) {
    ParamSpec s;
    s.name = "w";
    s.shape = {m, n};
    s.optimizer = OptimizerKind::kDion;
    return s;
  };
  EXPECT_EQ(CompressionRank(spec(256, 784), 0.25), 64);
  EXPECT_EQ(CompressionRank(spec(256, 784), 0.0625), 16);
  EXPECT_EQ(CompressionRank(spec(256, 784), 1.0), 192);  // 1040 * 192 = 199680 <= 200704
  EXPECT_EQ(CompressionRank(spec(128, 256), 1.0), 85);   // 384 * 85 = 32640 <= 32768
  EXPECT_EQ(CompressionRank(spec(128, 256), 0.5), 64);
  EXPECT_EQ(CompressionRank(spec(64, 64), 0.001), 1);
  EXPECT_EQ(CompressionRank(spec(1, 1), 1.0), 1);
}

TEST(WorkerClient, SubmitRefusesBadInputAndChangesNothing) {
  auto [server, client] = StartServerAndClient();
  ASSERT_NE(client, nullptr);
  Client& c = *client;
  std::vector<Matrix> G = RandomGradients(c.specs(), 1);
  std::vector<Matrix> too_few(G.begin(), G.end() - 1);
  EXPECT_EQ(c.Submit(too_few, 8, 1.0).code(), absl::StatusCode::kInvalidArgument);
  std::vector<Matrix> nan = G;
  nan.back()(0, 0) = std::numeric_limits<float>::infinity();
  EXPECT_EQ(c.Submit(nan, 8, 1.0).code(), absl::StatusCode::kInvalidArgument);
  std::vector<Matrix> wrong = G;
  wrong[0] = Matrix::Zero(wrong[0].cols(), wrong[0].rows());
  EXPECT_EQ(c.Submit(wrong, 8, 1.0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Submit(G, 0, 1.0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.stats().pushes, 0);
  for (size_t i = 0; i < c.specs().size(); ++i) EXPECT_EQ(c.Outstanding(i).norm(), 0.0f);
  c.Close();
  EXPECT_TRUE(server->Shutdown().ok());
}

TEST(WorkerClient, ConnectRefusesShardsListedOutOfOrder) {
  std::vector<std::unique_ptr<DionServer>> servers;
  for (int s = 0; s < 2; ++s) {
    ServerOptions options = TestServerOptions();
    options.shard.store.shard_index = s;
    options.shard.store.num_shards = 2;
    servers.push_back(StartServer(options));
    ASSERT_NE(servers.back(), nullptr);
  }
  absl::StatusOr<std::unique_ptr<Client>> swapped = Client::Connect(
      TestTable(), TestClientOptions({servers[1]->address(), servers[0]->address()}, "w0"));
  EXPECT_EQ(swapped.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(swapped.status().message().find("shard-index order"), absl::string_view::npos)
      << swapped.status();
  absl::StatusOr<std::unique_ptr<Client>> ordered = Client::Connect(
      TestTable(), TestClientOptions({servers[0]->address(), servers[1]->address()}, "w0"));
  ASSERT_TRUE(ordered.ok()) << ordered.status();
  ASSERT_TRUE((*ordered)->Submit(RandomGradients((*ordered)->specs(), 1), 8, 1.0).ok());
  EXPECT_TRUE((*ordered)->Flush(absl::Seconds(20)).ok());
  (*ordered)->Close();
  for (auto& server : servers) EXPECT_TRUE(server->Shutdown().ok());
}

TEST(WorkerClient, FlushCompletesWhenADionGradientIsZero) {
  auto [server, client] = StartServerAndClient();
  ASSERT_NE(client, nullptr);
  // A layer whose gradient is exactly zero for a step (dead units, a frozen input): the
  // compressor captures nothing, yet the step's samples must go out, or Flush never ends.
  std::vector<Matrix> G = RandomGradients(client->specs(), 1);
  G[IndexOf(*client, "w")].setZero();
  ASSERT_TRUE(client->Submit(G, 8, 1.0).ok());
  EXPECT_TRUE(client->Flush(absl::Seconds(10)).ok()) << client->status();
  EXPECT_TRUE(ReplicaMatchesServer(*client, *server));
  client->Close();
  EXPECT_TRUE(server->Shutdown().ok());
}

TEST(WorkerClient, ConnectRefusesMoreInFlightPushesThanTheDedupWindowAllows) {
  ClientOptions options = TestClientOptions({"127.0.0.1:1"}, "w0");
  options.max_in_flight = static_cast<int>(kMaxUnacknowledgedSpan) + 1;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(TestTable(), options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(client.status().message().find("max_in_flight"), absl::string_view::npos);
}

// A contribution queued while the link re-opens its Push stream must not be queued a second
// time by the re-send of everything in flight: two copies on one stream could be answered
// "refused" (restored into the residual) and then ACCEPTED, applying that gradient twice.
// The window is between the link clearing its queue and the re-send taking the parameter's
// lock; a Dion matrix keeps the training thread inside Take (compression) much of the time,
// so a re-open lands in it often: without the generation check, 31-44 of 100 re-opens wrote
// a sequence twice (Release, 3 runs).
TEST(WorkerClient, NeverSendsASequenceTwiceOnOnePushStream) {
  ModelTable table;
  table.model_name = "resend";
  ParamSpec big;
  big.name = "big";
  big.shape = {128, 128};
  big.optimizer = OptimizerKind::kDion;
  ParamSpec bias;
  bias.name = "bias";
  bias.shape = {8};
  bias.optimizer = OptimizerKind::kAdamW;
  table.parameters = {{big, {}}, {bias, {}}};
  std::unique_ptr<testing::FakeShard> fake = StartFake(table);
  ASSERT_NE(fake, nullptr);
  fake->BreakPushStreamsAfter(4);  // every stream breaks with its fourth push unanswered
  ClientOptions options = TestClientOptions({fake->address()}, "w0");
  options.reconnect.initial_delay = absl::ZeroDuration();  // re-open at once, many times
  options.reconnect.give_up_after = absl::Seconds(120);
  options.rpc_deadline = absl::Seconds(30);
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectToFake(*fake, options, table);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::vector<Matrix> G = RandomGradients((*client)->specs(), 1);
  // 100 re-opens take about a second in Release; under ThreadSanitizer a push takes ~100 ms
  // (uninstrumented gRPC), so there the time bound ends the loop.
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (fake->push_streams() < 100 && absl::Now() < deadline) {
    ASSERT_TRUE((*client)->Submit(G, 4, 1.0).ok()) << (*client)->status();
  }
  fake->BreakPushStreamsAfter(0);
  EXPECT_TRUE((*client)->Flush(absl::Seconds(20)).ok()) << (*client)->status();
  (*client)->Close();
  EXPECT_GE(fake->push_streams(), 3);  // the re-open path ran (100 times in Release)
  std::map<int, std::set<std::pair<std::string, uint64_t>>> per_stream;
  int repeats = 0;
  for (const testing::FakeShard::Received& r : fake->received()) {
    repeats += !per_stream[r.stream].insert({r.parameter, r.sequence}).second;
  }
  EXPECT_EQ(repeats, 0) << "sequences written twice on one stream, over "
                        << fake->push_streams() << " streams";
}

TEST(WorkerClient, AnswerOlderThanTheDedupWindowIsFatalAndNotRestored) {
  // State the judge uses is declared before the fake shard, so it outlives the server's
  // handlers, which may still be in the judge while the fake shuts down.
  std::atomic<bool> answered{false};
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  fake->SetJudge([&](const v1::Contribution& c) {
    if (c.parameter() == "b" && !answered.exchange(true)) {
      return testing::FakeShard::Ack(
          c, v1::PUSH_RESULT_REJECTED, static_cast<int>(absl::StatusCode::kDataLoss),
          "parameter 'b': sequence 5 of worker 'w0' is older than the dedup window (floor 9, "
          "window 4096): it was NOT applied now, and the shard cannot tell whether it was "
          "applied before");
    }
    return testing::FakeShard::Ack(c, v1::PUSH_RESULT_ACCEPTED);
  });
  ClientOptions options = TestClientOptions({fake->address()}, "w0");
  int restored = 0;
  options.on_acknowledged = [&](const Contribution& c, PushFate fate) {
    restored += c.parameter == "b" && fate == PushFate::kRestored;
  };
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectToFake(*fake, options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 1), 8, 1.0).ok());
  ASSERT_TRUE(WaitUntil([&] { return !(*client)->status().ok(); }))
      << "the unknown-fate answer did not stop the client";
  const absl::Status status = (*client)->status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_NE(status.message().find("dedup window"), absl::string_view::npos) << status;
  (*client)->Close();
  // Dropped, not restored: restoring could apply it twice.
  EXPECT_EQ(restored, 0);
  EXPECT_EQ((*client)->Outstanding(IndexOf(**client, "b")).norm(), 0.0f);
  EXPECT_EQ(fake->pulls(), 1);  // Connect's pull; no resync either
}

// A resync started from an acknowledgement (base_version from the future: the shard went back)
// runs on the ack thread while the subscriber keeps applying updates. A pull answered before
// an update that the subscriber applied meanwhile must not take the replica back.
TEST(WorkerClient, ResyncDoesNotUndoAnUpdateThatArrivedDuringItsPull) {
  // State the judge uses is declared before the fake shard, so it outlives the server's
  // handlers, which may still be in the judge while the fake shuts down.
  std::atomic<bool> rejected{false};
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  fake->SetJudge([&](const v1::Contribution& c) {
    if (c.parameter() == "b" && !rejected.exchange(true)) {
      return testing::FakeShard::Ack(c, v1::PUSH_RESULT_REJECTED,
                                     static_cast<int>(absl::StatusCode::kOutOfRange),
                                     "parameter 'b': base_version 0 is outside [0, 0]");
    }
    return testing::FakeShard::Ack(c, v1::PUSH_RESULT_ACCEPTED);
  });
  ClientOptions options = TestClientOptions({fake->address()}, "w0");
  std::atomic<int> accepted_b{0};
  options.on_acknowledged = [&](const Contribution& c, PushFate fate) {
    if (c.parameter == "b" && fate == PushFate::kApplied) ++accepted_b;
  };
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectToFake(*fake, options);
  ASSERT_TRUE(client.ok()) << client.status();
  const int b = IndexOf(**client, "b");
  fake->HoldPulls(true);
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 1), 8, 1.0).ok());
  ASSERT_TRUE(WaitUntil([&] { return fake->pulls() == 2; })) << "no resync pull";
  // While the resync's pull waits, version 1 of "b" arrives on the subscription.
  Matrix X1(1, 24);
  Rng(5).FillNormal(X1);
  fake->Broadcast(VersionUpdate{"b", 1, WeightsChecksum(X1), X1});
  ASSERT_TRUE(WaitUntil([&] { return (*client)->version(b) == 1; }));
  fake->HoldPulls(false);  // the pull answers with version 0: it was taken before
  // Flush re-sends the restored push; its acknowledgement is read by the thread that runs the
  // resync, so once it is in, the resync has returned.
  ASSERT_TRUE((*client)->Flush(absl::Seconds(20)).ok()) << (*client)->status();
  EXPECT_EQ(accepted_b.load(), 1);
  EXPECT_EQ((*client)->version(b), 1) << "the resync took the replica back";
  std::vector<Matrix> weights;
  (*client)->CopyWeights(&weights);
  EXPECT_EQ(WeightsChecksum(weights[b]), WeightsChecksum(X1));
  (*client)->Close();
}

// A seeded rank-2 step of the 32 x 24 parameter "w", and the value it gives from X0.
LowRankStep RandomStepOfW(const Matrix& X0, Matrix* X1) {
  LowRankStep step{0.99f, 0.05f, Matrix(32, 2), Matrix(24, 2), false};
  Rng(3).FillNormal(step.P);
  Rng(4).FillNormal(step.Q);
  *X1 = X0;
  ApplyLowRankUpdate(*X1, step.decay, step.scale, step.P, step.Q, step.transposed);
  return step;
}

// CopyWeights(&w, k) hands out every replica extrapolated k versions along its last step (the
// trainer's lookahead); a parameter that has not moved since its first value is handed out as is.
TEST(WorkerClient, CopyWeightsExtrapolatesEachReplicaAlongItsLastStep) {
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  ClientOptions options = TestClientOptions({fake->address()}, "w0");
  options.track_last_step = true;
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectToFake(*fake, options);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->tracks_last_step());
  const int w = IndexOf(**client, "w");
  std::vector<Matrix> before;
  (*client)->CopyWeights(&before);
  Matrix X1;
  const LowRankStep step = RandomStepOfW(before[w], &X1);
  fake->Broadcast(VersionUpdate{"w", 1, WeightsChecksum(X1), step});
  ASSERT_TRUE(WaitUntil([&] { return (*client)->version(w) == 1; }));
  std::vector<Matrix> ahead;
  (*client)->CopyWeights(&ahead, 3);
  ASSERT_EQ(ahead.size(), before.size());
  const MatrixD expected = X1.cast<double>() + 3 * (X1.cast<double>() - before[w].cast<double>());
  EXPECT_LT(testing::RelativeError(ahead[w].cast<double>(), expected), 1e-6);
  for (size_t i = 0; i < ahead.size(); ++i) {
    if (static_cast<int>(i) == w) continue;
    EXPECT_EQ(WeightsChecksum(ahead[i]), WeightsChecksum(before[i])) << "parameter " << i;
  }
  std::vector<Matrix> now;
  (*client)->CopyWeights(&now);  // no lookahead: the replica itself
  EXPECT_EQ(WeightsChecksum(now[w]), WeightsChecksum(X1));
  (*client)->Close();
}

// After a checksum mismatch whose resync pull fails, the replica holds a version number but
// not its bits. It must not announce that version when it resubscribes, or the shard never
// sends the full value that repairs it.
TEST(WorkerClient, ReplicaOutOfSyncAfterAFailedResyncIsRepairedByResubscribing) {
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  absl::StatusOr<std::unique_ptr<Client>> client =
      ConnectToFake(*fake, TestClientOptions({fake->address()}, "w0"));
  ASSERT_TRUE(client.ok()) << client.status();
  const int w = IndexOf(**client, "w");
  std::vector<Matrix> weights;
  (*client)->CopyWeights(&weights);
  const Matrix X0 = weights[w];
  // The shard's version 1 differs slightly from what its broadcast step gives on this copy.
  Matrix stepped;
  const LowRankStep step = RandomStepOfW(X0, &stepped);
  Matrix X1 = stepped;
  X1(0, 0) += 1e-3f;
  fake->SetValue("w", 1, X1);
  fake->FailPulls(1);
  fake->Broadcast(VersionUpdate{"w", 1, WeightsChecksum(X1), step});
  ASSERT_TRUE(WaitUntil([&] { return fake->pulls() == 2; })) << "no resync after the mismatch";
  fake->BreakSubscriptions();
  const bool repaired = WaitUntil(
      [&] {
        (*client)->CopyWeights(&weights);
        return (*client)->version(w) == 1 && WeightsChecksum(weights[w]) == WeightsChecksum(X1);
      },
      absl::Seconds(10));
  EXPECT_TRUE(repaired) << "replica of 'w' never got the shard's bits of version 1";
  const auto haves = fake->subscribe_haves();
  ASSERT_GE(haves.size(), 2u);
  for (const v1::ParameterVersion& held : haves[1]) {
    EXPECT_NE(held.parameter(), "w") << "resubscribed claiming version " << held.version();
  }
  (*client)->Close();
}

TEST(WorkerClient, CloseDoesNotWaitForAHungRegistration) {
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  ClientOptions options = TestClientOptions({fake->address()}, "w0");
  options.rpc_deadline = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectToFake(*fake, options);
  ASSERT_TRUE(client.ok()) << client.status();
  const int at_connect = fake->registrations();
  fake->HoldRegistrations(true);
  fake->BreakSubscriptions();  // the link re-registers before resubscribing, and hangs there
  ASSERT_TRUE(WaitUntil([&] { return fake->registrations() > at_connect; }));
  const absl::Time start = absl::Now();
  (*client)->Close();
  // Without cancelling the call Close waits for the 60 s deadline; with it, milliseconds
  // (5 s leaves room for a loaded machine and sanitizers).
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(WorkerClient, ReopensAPushStreamWhoseAcknowledgementsStop) {
  // State the judge uses is declared before the fake shard, so it outlives the server's
  // handlers, which may still be in the judge while the fake shuts down.
  std::atomic<bool> hang{true};
  Mutex mu;
  std::set<std::pair<std::string, uint64_t>> accepted;
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  fake->SetJudge([&](const v1::Contribution& c) {
    // A shard that stopped answering (bounded, so the fake can shut down).
    const absl::Time until = absl::Now() + absl::Seconds(30);
    while (hang.load() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(5));
    MutexLock lock(&mu);
    const bool fresh = accepted.insert({c.parameter(), c.sequence()}).second;
    return testing::FakeShard::Ack(
        c, fresh ? v1::PUSH_RESULT_ACCEPTED : v1::PUSH_RESULT_DUPLICATE);
  });
  ClientOptions options = TestClientOptions({fake->address()}, "w0");
  options.ack_timeout = absl::Seconds(2);  // a push round trip under TSan can take ~1 s
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectToFake(*fake, options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 1), 8, 1.0).ok());
  const bool reopened = WaitUntil([&] { return fake->push_streams() >= 2; }, absl::Seconds(15));
  hang.store(false);
  ASSERT_TRUE(reopened) << "the stream without acknowledgements was never re-opened";
  EXPECT_TRUE((*client)->Flush(absl::Seconds(20)).ok()) << (*client)->status();
  const ClientStats stats = (*client)->stats();
  EXPECT_GE(stats.reconnects, 1);
  // Every contribution reached the shard under its first sequence (a DUPLICATE answer to the
  // re-send was not restored and sent again under a new one), and none was refused.
  EXPECT_EQ(stats.refused, 0);
  (*client)->Close();
  MutexLock lock(&mu);
  EXPECT_EQ(static_cast<int64_t>(accepted.size()), stats.pushes);
}

TEST(WorkerClient, GivesUpOnAShardThatRegistersButBreaksEveryPushStream) {
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  fake->BreakPushStreamsAfter(1);
  ClientOptions options = TestClientOptions({fake->address()}, "w0");
  options.reconnect.give_up_after = absl::Seconds(3);  // also Connect's budget: not too tight
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectToFake(*fake, options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::Status status;
  const bool gave_up = WaitUntil([&] {
    status = (*client)->Submit(RandomGradients((*client)->specs(), 2), 8, 1.0);
    return !status.ok();
  });
  ASSERT_TRUE(gave_up);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("shard 0"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("Push stream"), absl::string_view::npos) << status;
  (*client)->Close();
}

TEST(WorkerClient, RefusedPushWaitsForTheNextStepInsteadOfLoopingAtNetworkSpeed) {
  // State the judge uses is declared before the fake shard, so it outlives the server's
  // handlers, which may still be in the judge while the fake shuts down.
  std::atomic<bool> refuse{true};
  std::unique_ptr<testing::FakeShard> fake = StartFake();
  ASSERT_NE(fake, nullptr);
  fake->SetJudge([&](const v1::Contribution& c) {
    // "b" is refused as not applied while the shard shuts down (for as long as the test says).
    if (c.parameter() == "b" && refuse.load()) {
      return testing::FakeShard::Ack(c, v1::PUSH_RESULT_REJECTED,
                                     static_cast<int>(absl::StatusCode::kUnavailable),
                                     "the shard is shutting down");
    }
    return testing::FakeShard::Ack(c, v1::PUSH_RESULT_ACCEPTED);
  });
  absl::StatusOr<std::unique_ptr<Client>> client =
      ConnectToFake(*fake, TestClientOptions({fake->address()}, "w0"));
  ASSERT_TRUE(client.ok()) << client.status();
  const auto pushes_of_b = [&] { return PushesOf(*fake, "b").size(); };
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 1), 8, 1.0).ok());
  ASSERT_TRUE(WaitUntil([&] { return (*client)->stats().refused >= 1; }));
  absl::SleepFor(absl::Milliseconds(300));
  // One push per local step: re-sending from the refusal itself would have sent hundreds.
  EXPECT_EQ(pushes_of_b(), 1u);
  ASSERT_TRUE((*client)->Submit(RandomGradients((*client)->specs(), 2), 8, 1.0).ok());
  ASSERT_TRUE(WaitUntil([&] { return (*client)->stats().refused >= 2; }));
  EXPECT_EQ(pushes_of_b(), 2u);
  refuse.store(false);
  EXPECT_TRUE((*client)->Flush(absl::Seconds(20)).ok()) << (*client)->status();
  EXPECT_EQ(pushes_of_b(), 3u);  // both steps' samples in the one push Flush took
  EXPECT_EQ(PushesOf(*fake, "b").back().sample_count, 16);
  (*client)->Close();
}

}  // namespace
}  // namespace dion
