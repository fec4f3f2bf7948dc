// Fault test (ctest label `fault`): 4 workers push into 2 real dion-server processes with the
// write-ahead log on (the default) and a 1 s checkpoint timer; shard 1 is killed with SIGKILL
// at random moments, 10 times, and restarted on the same directories and port. Each worker
// re-sends a contribution (same sequence) until it is acknowledged, as the client library does,
// and logs every ACCEPTED or DUPLICATE ack. At the end every acknowledged contribution is
// applied exactly once: each shard's contributions_applied and samples_applied equal the acked
// totals of the parameters it owns. Then shard 1 is killed once more and a fresh process replays
// its log: its weights and optimizer state equal the ones the killed process served.
//
// Bounded: about 10 x 0.5 s of kills plus restarts; the ctest timeout is 150 s.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/loopback_ports.h"
#include "tests/server_process.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

namespace fs = std::filesystem;
using testing::ServerProcess;

constexpr int kWorkers = 4;
constexpr int kKills = 10;

std::vector<std::string> ShardFlags(int index, const std::string& root, const std::string& listen,
                                    const std::string& peers) {
  std::vector<std::string> flags = {
      absl::StrCat("--listen=", listen), "--metrics_listen=",
      absl::StrCat("--shard_index=", index), "--num_shards=2",
      absl::StrCat("--checkpoint_dir=", root, "/shard", index), "--checkpoint_interval=1s",
      "--max_staleness=1000000", "--batch_deadline=20ms", "--shutdown_grace=1s",
      "--allow_optimizer_state_pull=true"};
  if (!peers.empty()) flags.push_back(absl::StrCat("--peer_addresses=", peers));
  return flags;
}

// One shard process and its fixed address (a restart listens on the same port).
struct Shard {
  int index = 0;
  std::string root;
  std::string address;
  std::string peers;  // --peer_addresses, or empty
  std::unique_ptr<ServerProcess> process;

  bool Start(const std::string& listen) {
    process = std::make_unique<ServerProcess>(DION_SERVER_BINARY,
                                              ShardFlags(index, root, listen, peers));
    address = process->WaitForAddress(absl::Seconds(30));
    return !address.empty();
  }
};

// What the workers had acknowledged: (worker, parameter, sequence) -> samples.
struct AckLog {
  absl::Mutex mu;
  std::map<std::tuple<std::string, std::string, uint64_t>, int64_t> acked ABSL_GUARDED_BY(mu);
  int64_t duplicates ABSL_GUARDED_BY(mu) = 0;
  int64_t retries ABSL_GUARDED_BY(mu) = 0;
};

v1::Contribution MakeContribution(const std::string& worker, const std::string& parameter,
                                  uint64_t sequence, int64_t base, int64_t samples) {
  if (parameter == "b") {
    Contribution c;
    c.worker_id = worker;
    c.sequence = sequence;
    c.parameter = parameter;
    c.base_version = base;
    c.sample_count = samples;
    Matrix G(1, 24);
    for (int64_t j = 0; j < 24; ++j) G(0, j) = 1e-3f * static_cast<float>((j + sequence) % 7);
    c.payload = G;
    v1::Contribution proto;
    ContributionToProto(c, &proto, {24});
    return proto;
  }
  const int64_t m = parameter == "w" ? 32 : 12, n = parameter == "w" ? 24 : 20;
  return testing::FactorsContribution(worker, sequence, parameter, base, samples,
                                      testing::RandomFactors(m, n, 2, sequence * 7 + m));
}

// Sends one contribution to `address` until it is acknowledged ACCEPTED or DUPLICATE, each
// attempt on a new channel and stream (the shard may be dead or restarting). Returns the ack,
// or an ack with PUSH_RESULT_UNSPECIFIED after `give_up`.
v1::PushAck PushUntilAcked(const std::string& address, const std::string& worker,
                           const v1::Contribution& contribution, absl::Time give_up,
                           AckLog& log,
                           const v1::RegisterModelRequest* model = nullptr) {
  v1::PushAck ack;
  for (int attempt = 0; absl::Now() < give_up; ++attempt) {
    if (attempt > 0) {
      absl::MutexLock lock(&log.mu);
      ++log.retries;
      absl::SleepFor(absl::Milliseconds(20));
    }
    auto stub = testing::Connect(address);
    {
      grpc::ClientContext context;
      testing::SetDeadline(context, absl::Seconds(5));
      v1::RegisterModelResponse response;
      const v1::RegisterModelRequest request =
          model != nullptr ? *model : testing::TestModelRequest(worker);
      if (!stub->RegisterModel(&context, request, &response).ok()) {
        continue;
      }
    }
    grpc::ClientContext context;
    testing::SetDeadline(context, absl::Seconds(5));
    auto stream = stub->Push(&context);
    if (!stream->Write(contribution) || !stream->Read(&ack)) {
      context.TryCancel();
      stream->Finish().IgnoreError();
      continue;
    }
    stream->WritesDone();
    stream->Finish().IgnoreError();
    if (ack.result() == v1::PUSH_RESULT_ACCEPTED || ack.result() == v1::PUSH_RESULT_DUPLICATE) {
      return ack;
    }
    // REJECTED while shutting down or restarting (UNAVAILABLE), or while a follower's stage
    // is full (RESOURCE_EXHAUSTED): retry; anything else is a bug.
    if (ack.status_code() != static_cast<int>(grpc::StatusCode::UNAVAILABLE) &&
        ack.status_code() != static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED)) {
      return ack;
    }
  }
  ack.set_result(v1::PUSH_RESULT_UNSPECIFIED);
  return ack;
}

// Pushes round-robin over the three parameters until `stop`; every contribution is retried
// until acknowledged. Returns false (with `error`) on an ack that is neither.
void RunWorker(int w, const std::vector<Shard*>& owner_of_w_v_b, std::atomic<bool>& stop,
               AckLog& log, std::string& error) {
  const std::string worker = absl::StrCat("w", w);
  const std::vector<std::string> parameters = {"w", "v", "b"};
  std::map<std::string, uint64_t> next_sequence;
  std::map<std::string, int64_t> version;
  std::mt19937 rng(w);
  for (int k = 0; !stop.load(); ++k) {
    const size_t p = k % parameters.size();
    const std::string& parameter = parameters[p];
    const uint64_t sequence = next_sequence[parameter]++;
    const int64_t samples = 1 + static_cast<int64_t>(rng() % 4);
    const v1::Contribution c =
        MakeContribution(worker, parameter, sequence, version[parameter], samples);
    const v1::PushAck ack = PushUntilAcked(owner_of_w_v_b[p]->address, worker, c,
                                           absl::Now() + absl::Seconds(60), log);
    if (ack.result() != v1::PUSH_RESULT_ACCEPTED && ack.result() != v1::PUSH_RESULT_DUPLICATE) {
      error = absl::StrCat(worker, " ", parameter, " ", sequence, ": ack ",
                           v1::PushResult_Name(ack.result()), " ", ack.message());
      return;
    }
    version[parameter] = ack.current_version();
    absl::MutexLock lock(&log.mu);
    log.acked[{worker, parameter, sequence}] = samples;
    if (ack.result() == v1::PUSH_RESULT_DUPLICATE) ++log.duplicates;
  }
}

// The parameter's value and optimizer state, serialised; "" if three attempts fail (the first
// call to a restarted process may meet the killed one's dead connection).
std::string StateBytes(const std::string& address, const std::string& parameter) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto stub = testing::Connect(address);
    grpc::ClientContext context;
    testing::SetDeadline(context, absl::Seconds(10));
    v1::PullRequest request;
    request.add_parameters(parameter);
    request.set_include_optimizer_state(true);
    auto reader = stub->Pull(&context, request);
    v1::ParameterValue value;
    const bool read = reader->Read(&value);
    if (reader->Finish().ok() && read) return value.SerializeAsString();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return "";
}

// Every acknowledged contribution is applied exactly once: each shard's contributions_applied
// and samples_applied equal the acked totals of its parameters, once the open batches' 20 ms
// deadline has passed.
void ExpectEveryAckAppliedOnce(AckLog& log, Shard (&shards)[2], int kills) {
  std::map<std::string, int64_t> contributions, samples;
  {
    absl::MutexLock lock(&log.mu);
    for (const auto& [key, n] : log.acked) {
      ++contributions[std::get<1>(key)];
      samples[std::get<1>(key)] += n;
    }
    std::printf("acked %zu contributions (%lld answered DUPLICATE), %lld retries over %d kills\n",
                log.acked.size(), static_cast<long long>(log.duplicates),
                static_cast<long long>(log.retries), kills);
  }
  ASSERT_GT(contributions["w"], 30);
  for (Shard& shard : shards) {
    auto stub = testing::Connect(shard.address);
    v1::StatusResponse status;
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    bool settled = false;
    while (!settled && absl::Now() < deadline) {
      status = testing::GetStatus(*stub);
      settled = true;
      for (const v1::ParameterStatus& p : status.parameters()) {
        settled &= p.contributions_applied() >= contributions[p.parameter()];
      }
      if (!settled) absl::SleepFor(absl::Milliseconds(50));
    }
    for (const v1::ParameterStatus& p : status.parameters()) {
      SCOPED_TRACE(p.parameter());
      EXPECT_EQ(p.contributions_applied(), contributions[p.parameter()]);
      EXPECT_EQ(p.samples_applied(), samples[p.parameter()]);
    }
  }
}

TEST(WalFault, EveryAcknowledgedContributionIsAppliedExactlyOnceAcrossTenKills) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/wal-fault-", getpid());
  fs::remove_all(root);
  Shard shards[2];
  for (int i = 0; i < 2; ++i) {
    shards[i].index = i;
    shards[i].root = root;
    ASSERT_TRUE(shards[i].Start("127.0.0.1:0")) << shards[i].process->log();
  }
  // Who owns what: the layout every process computes from the table.
  v1::RegisterModelResponse layout;
  {
    auto stub = testing::Connect(shards[0].address);
    grpc::ClientContext context;
    testing::SetDeadline(context);
    ASSERT_TRUE(stub->RegisterModel(&context, testing::TestModelRequest("w0"), &layout).ok());
  }
  std::map<std::string, int> owner;
  for (const v1::Layout::Placement& p : layout.layout().placements()) owner[p.parameter()] = p.shard();
  ASSERT_EQ(owner.size(), 3u);
  std::vector<Shard*> owners = {&shards[owner["w"]], &shards[owner["v"]], &shards[owner["b"]]};

  AckLog log;
  std::atomic<bool> stop{false};
  std::vector<std::string> errors(kWorkers);
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] { RunWorker(w, owners, stop, log, errors[w]); });
  }
  std::mt19937 rng(20261206);
  for (int kill = 0; kill < kKills; ++kill) {
    absl::SleepFor(absl::Milliseconds(200 + rng() % 500));
    shards[1].process->Signal(SIGKILL);
    EXPECT_FALSE(shards[1].process->WaitForExit(absl::Seconds(10)).has_value())
        << "killed by a signal, not exited";
    const std::string address = shards[1].address;
    ASSERT_TRUE(shards[1].Start(address)) << "restart " << kill << ":\n"
                                          << shards[1].process->log();
    ASSERT_EQ(shards[1].address, address);
  }
  absl::SleepFor(absl::Milliseconds(300));
  stop = true;
  for (std::thread& t : workers) t.join();
  for (const std::string& e : errors) EXPECT_EQ(e, "");

  ExpectEveryAckAppliedOnce(log, shards, kKills);

  // A fresh process replaying shard 1's log serves exactly what the killed one served.
  auto stub = testing::Connect(shards[1].address);
  const v1::StatusResponse status = testing::GetStatus(*stub);
  std::map<std::string, std::string> before;
  for (const v1::ParameterStatus& p : status.parameters()) {
    before[p.parameter()] = StateBytes(shards[1].address, p.parameter());
    ASSERT_NE(before[p.parameter()], "") << p.parameter();
  }
  shards[1].process->Signal(SIGKILL);
  shards[1].process->WaitForExit(absl::Seconds(10));
  ASSERT_TRUE(shards[1].Start(shards[1].address)) << shards[1].process->log();
  for (const auto& [parameter, bytes] : before) {
    EXPECT_TRUE(StateBytes(shards[1].address, parameter) == bytes)
        << parameter << " differs after replay";
  }
  for (Shard& shard : shards) {
    shard.process->Signal(SIGTERM);
    EXPECT_EQ(shard.process->WaitForExit(absl::Seconds(30)), 0) << shard.process->log();
  }
  fs::remove_all(root);
}

// ---- One Dion matrix split over both shards; either owner is killed (docs/server.md,
// "Split parameters": a leader and a follower survive a crash).

constexpr int kSplitWorkers = 3;
constexpr int64_t kSplitRows = 48, kSplitCols = 32;

v1::RegisterModelRequest SplitModel(const std::string& worker) {
  v1::RegisterModelRequest request;
  request.set_model_name("split-fault");
  request.set_worker_id(worker);
  v1::ParameterSpec* w = request.add_parameters();
  w->set_name("w");
  w->add_shape(kSplitRows);
  w->add_shape(kSplitCols);
  w->set_optimizer(v1::OPTIMIZER_KIND_DION);
  w->set_seed(3);
  w->mutable_dion()->set_lr(0.02);
  w->mutable_dion()->set_rank_fraction(0.25);
  w->set_split_owners(2);
  return request;
}

// Each contribution goes to the follower first, then to the leader (the commit order of
// docs/protocol.md), each retried until acknowledged; acked = the leader's ack.
void RunSplitWorker(int w, const v1::Layout::Placement& placement, Shard (&shards)[2],
                    std::atomic<bool>& stop, AckLog& log, std::string& error) {
  const std::string worker = absl::StrCat("w", w);
  const v1::RegisterModelRequest model = SplitModel(worker);
  int64_t version = 0;
  for (uint64_t sequence = 1; !stop.load(); ++sequence) {
    const LowRankFactors f =
        testing::RandomFactors(kSplitRows, kSplitCols, 4, 1000 * w + sequence);
    const int64_t samples = 1 + static_cast<int64_t>(sequence % 3);
    v1::PushAck ack;
    for (int owner : {1, 0}) {
      const v1::Layout::RowOwner& rows = placement.row_owners(owner);
      const LowRankFactors block{
          f.P.middleRows(rows.row_begin(), rows.row_end() - rows.row_begin()), f.R};
      ack = PushUntilAcked(
          shards[rows.shard()].address, worker,
          testing::FactorsContribution(worker, sequence, "w", version, samples, block),
          absl::Now() + absl::Seconds(60), log, &model);
      if (ack.result() != v1::PUSH_RESULT_ACCEPTED && ack.result() != v1::PUSH_RESULT_DUPLICATE) {
        error = absl::StrCat(worker, " ", sequence, " to owner ", owner, ": ack ",
                             v1::PushResult_Name(ack.result()), " ", ack.message());
        return;
      }
    }
    version = ack.current_version();
    absl::MutexLock lock(&log.mu);
    log.acked[{worker, "w", sequence}] = samples;
    if (ack.result() == v1::PUSH_RESULT_DUPLICATE) ++log.duplicates;
  }
}

// 3 workers push into a 48 x 32 Dion matrix split over 2 dion-server processes (peered on
// fixed loopback ports); 8 times one owner, leader or follower at random, is killed with
// SIGKILL at a random moment and restarted on its port. At the end both owners applied every
// contribution the leader acknowledged exactly once and are at the same version.
TEST(WalFault, SplitParameterAppliesEveryAcknowledgedContributionOnceAcrossKillsOfEitherOwner) {
  const std::string root = absl::StrCat(::testing::TempDir(), "/wal-fault-split-", getpid());
  fs::remove_all(root);
  absl::StatusOr<std::vector<int>> ports = ReserveLoopbackPorts(2);
  ASSERT_TRUE(ports.ok()) << ports.status();
  const std::string peers =
      absl::StrCat("127.0.0.1:", (*ports)[0], ",127.0.0.1:", (*ports)[1]);
  Shard shards[2];
  for (int i = 0; i < 2; ++i) {
    shards[i].index = i;
    shards[i].root = root;
    shards[i].peers = peers;
    ASSERT_TRUE(shards[i].Start(absl::StrCat("127.0.0.1:", (*ports)[i])))
        << shards[i].process->log();
  }
  v1::Layout::Placement placement;
  for (Shard& shard : shards) {  // each owner registers the table before any push
    auto stub = testing::Connect(shard.address);
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::RegisterModelResponse response;
    ASSERT_TRUE(stub->RegisterModel(&context, SplitModel("w0"), &response).ok());
    placement = response.layout().placements(0);
  }
  ASSERT_EQ(placement.row_owners_size(), 2);

  AckLog log;
  std::atomic<bool> stop{false};
  std::vector<std::string> errors(kSplitWorkers);
  std::vector<std::thread> workers;
  for (int w = 0; w < kSplitWorkers; ++w) {
    workers.emplace_back([&, w] { RunSplitWorker(w, placement, shards, stop, log, errors[w]); });
  }
  std::mt19937 rng(20261207);
  int leader_kills = 0;
  for (int kill = 0; kill < 8; ++kill) {
    absl::SleepFor(absl::Milliseconds(300 + rng() % 500));
    const int owner = static_cast<int>(rng() % 2);
    leader_kills += owner == 0;
    Shard& victim = shards[placement.row_owners(owner).shard()];
    victim.process->Signal(SIGKILL);
    EXPECT_FALSE(victim.process->WaitForExit(absl::Seconds(10)).has_value());
    const std::string address = victim.address;
    if (!victim.Start(address)) {  // the workers are stopped before the test ends
      ADD_FAILURE() << "restart " << kill << ":\n" << victim.process->log();
      break;
    }
  }
  absl::SleepFor(absl::Milliseconds(500));
  stop = true;
  for (std::thread& t : workers) t.join();
  for (const std::string& e : errors) EXPECT_EQ(e, "");
  if (HasFailure()) return;
  std::printf("%d of 8 kills hit the leader\n", leader_kills);
  EXPECT_GE(leader_kills, 1) << "the kills must include the leader (fixed seed)";

  ExpectEveryAckAppliedOnce(log, shards, 8);
  int64_t versions[2] = {-1, -2};
  for (int i = 0; i < 2; ++i) {
    auto stub = testing::Connect(shards[i].address);
    const v1::StatusResponse status = testing::GetStatus(*stub);
    for (const v1::ParameterStatus& p : status.parameters()) {
      if (p.parameter() == "w") versions[i] = p.version();
    }
  }
  EXPECT_EQ(versions[0], versions[1]);
  for (Shard& shard : shards) {
    shard.process->Signal(SIGTERM);
    EXPECT_EQ(shard.process->WaitForExit(absl::Seconds(30)), 0) << shard.process->log();
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace dion
