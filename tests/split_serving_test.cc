// Split parameters served by real shards over loopback gRPC (docs/protocol.md, "Split
// parameters"): workers push row blocks to the followers, then to the leader; the leader
// batches, the owners step together (ShardPeer.StepRows and Reduce). The assembled blocks are
// checked against a whole-matrix reference that applies the same batches with common/ directly
// (ApplyReferenceBatch: M += sum_i w_i P_i R_i^T in plain Eigen, then DionStepFromMomentum),
// to the tolerances of tests/dion_rows_test.cc: 1e-5 relative (Frobenius), X also 2e-5
// entry-wise relative to its largest entry. Most tests push hand-made blocks; one drives the
// shards with the worker client (worker/client) while a follower is lost mid-step.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/checksum.h"
#include "common/dion.h"
#include "common/layout.h"
#include "common/mutex.h"
#include "common/rng.h"
#include "common/wire.h"
#include "dion/v1/peer.grpc.pb.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "server/checkpoint/checkpoint_encoding.h"
#include "server/checkpoint/checkpoint_manifest.h"
#include "server/dion_server.h"
#include "server/parameter_store.h"
#include "tests/crash_test_util.h"
#include "tests/ports_test_util.h"
#include "tests/reference.h"
#include "tests/server_test_util.h"
#include "tests/wait_test_util.h"
#include "worker/client/client.h"

namespace dion {
namespace {

using testing::ApplyReferenceBatch;
using testing::Connect;
using testing::FactorsContribution;
using testing::GetStatus;
using testing::MaxRelativeError;
using testing::PushAll;
using testing::RandomFactors;
using testing::ReferenceEntry;
using testing::RelativeError;
using testing::ReservePorts;
using testing::SetDeadline;
using testing::TestServerOptions;

MatrixD ToDouble(const Matrix& a) { return a.cast<double>(); }

struct SplitCase {
  int64_t m, n;
  int shards;
  OrthoMethod method;
};

v1::OrthoMethod MethodProto(OrthoMethod method) {
  switch (method) {
    case OrthoMethod::kCqr: return v1::ORTHO_METHOD_CQR;
    case OrthoMethod::kCqr2: return v1::ORTHO_METHOD_CQR2;
    case OrthoMethod::kRcqr: return v1::ORTHO_METHOD_RCQR;
    case OrthoMethod::kQr: return v1::ORTHO_METHOD_QR;
    case OrthoMethod::kAuto: break;
  }
  return v1::ORTHO_METHOD_AUTO;
}

// One Dion matrix "w" (m x n, rank 8) split over `owners`, and an AdamW bias "b".
v1::RegisterModelRequest SplitModel(const std::string& worker, int64_t m, int64_t n, int owners,
                                    OrthoMethod method = OrthoMethod::kAuto) {
  v1::RegisterModelRequest request;
  request.set_model_name("split-test");
  request.set_worker_id(worker);
  v1::ParameterSpec* w = request.add_parameters();
  w->set_name("w");
  w->add_shape(m);
  w->add_shape(n);
  w->set_optimizer(v1::OPTIMIZER_KIND_DION);
  w->mutable_init()->set_kind(v1::INIT_KIND_KAIMING);
  w->set_seed(7);
  w->mutable_dion()->set_lr(0.05);
  w->mutable_dion()->set_rank_fraction(0.125);  // r = 8 of min(m, n) = 64
  w->mutable_dion()->set_rank_multiple_of(8);
  w->mutable_dion()->set_ortho_method(MethodProto(method));
  w->set_split_owners(owners);
  v1::ParameterSpec* b = request.add_parameters();
  b->set_name("b");
  b->add_shape(4);
  b->set_optimizer(v1::OPTIMIZER_KIND_ADAMW);
  return request;
}

// An empty directory `name`-<pid> under the test's temporary directory (the pid: two builds'
// runs at once must not share it), removed when this goes out of scope. Declared before a
// test's Cluster, it outlives the shards, whose checkpoints at shutdown would otherwise write
// it again after a removal at the end of the test.
struct FreshDir {
  explicit FreshDir(const std::string& name)
      : path(absl::StrCat(::testing::TempDir(), "/", name, "-", getpid())) {
    std::filesystem::remove_all(path);
  }
  ~FreshDir() { std::filesystem::remove_all(path); }
  FreshDir(const FreshDir&) = delete;
  FreshDir& operator=(const FreshDir&) = delete;
  const std::string path;
};

// Cluster options: shard i checkpoints into <dir>/shard-<i>.
std::function<void(ServerOptions&, int)> CheckpointsIn(const std::string& dir) {
  return [dir](ServerOptions& options, int shard) {
    options.shard.checkpoint_dir = absl::StrCat(dir, "/shard-", shard);
  };
}

// Shards 0..k-1 on reserved loopback ports, each knowing every other's address.
class Cluster {
 public:
  Cluster(int shards, const std::function<void(ServerOptions&, int)>& tweak = {}) {
    const std::vector<int> ports = ReservePorts(shards);
    std::vector<std::string> addresses;
    for (int port : ports) addresses.push_back(absl::StrCat("127.0.0.1:", port));
    for (int i = 0; i < shards; ++i) {
      ServerOptions& options = options_.emplace_back(TestServerOptions());
      options.listen = addresses[i];
      options.shard.store.shard_index = i;
      options.shard.store.num_shards = shards;
      options.shard.batcher.target_workers = 2;  // a batch per round of the two workers
      options.shard.batcher.adaptive = false;
      options.peer.addresses = addresses;
      options.peer.timeout = absl::Seconds(5);
      if (tweak) tweak(options, i);
    }
    Start();
  }
  // Stops every shard (each writes its last checkpoint when it has a directory), then starts
  // them again with the same options: each restores its newest checkpoint.
  // With `together`, every shard's Shutdown runs at once, on its own thread (as when a
  // whole deployment stops).
  void Restart(bool together = false) {
    std::vector<std::thread> threads;
    for (auto& server : servers_) {
      if (!together) {
        EXPECT_TRUE(server->Shutdown().ok());
        continue;
      }
      threads.emplace_back([&server] { EXPECT_TRUE(server->Shutdown().ok()); });
    }
    for (std::thread& t : threads) t.join();
    servers_.clear();
    stubs_.clear();
    Start();
  }
  // Stops shard `shard` alone (a graceful shutdown: its last checkpoint), then starts it again
  // on the same address: it restores that checkpoint.
  void Stop(int shard) {
    EXPECT_TRUE(servers_[shard]->Shutdown().ok());
    servers_[shard].reset();
  }
  void StartAgain(int shard) {
    absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(options_[shard]);
    ASSERT_TRUE(server.ok()) << server.status();
    stubs_[shard] = Connect((*server)->address());
    servers_[shard] = *std::move(server);
  }
  bool ok() const {
    return servers_.size() == options_.size() && stubs_.size() == options_.size();
  }
  v1::ParameterServer::Stub& stub(int shard) { return *stubs_[shard]; }
  DionServer& server(int shard) { return *servers_[shard]; }
  int size() const { return static_cast<int>(servers_.size()); }

  // RegisterModel on every shard; the layout shard 0 answered.
  v1::Layout Register(const v1::RegisterModelRequest& request) {
    v1::Layout layout;
    for (int s = 0; s < size(); ++s) {
      grpc::ClientContext context;
      SetDeadline(context);
      v1::RegisterModelResponse response;
      const grpc::Status status = stub(s).RegisterModel(&context, request, &response);
      EXPECT_TRUE(status.ok()) << "shard " << s << ": " << status.error_message();
      if (s == 0) layout = response.layout();
    }
    return layout;
  }

 private:
  void Start() {
    for (const ServerOptions& options : options_) {
      absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(options);
      EXPECT_TRUE(server.ok()) << server.status();
      if (!server.ok()) return;
      stubs_.push_back(Connect((*server)->address()));
      servers_.push_back(*std::move(server));
    }
  }

  std::vector<ServerOptions> options_;
  std::vector<std::unique_ptr<DionServer>> servers_;
  std::vector<std::unique_ptr<v1::ParameterServer::Stub>> stubs_;
};

const v1::Layout::Placement& PlacementOf(const v1::Layout& layout, const std::string& name) {
  for (const v1::Layout::Placement& p : layout.placements()) {
    if (p.parameter() == name) return p;
  }
  ADD_FAILURE() << name << " not in the layout";
  return layout.placements(0);
}

// Owner `owner`'s contribution: its rows of the tall side's factor, the other factor whole.
LowRankFactors BlockOf(const LowRankFactors& f, int64_t m, int64_t n,
                       const v1::Layout::RowOwner& owner) {
  const int64_t begin = owner.row_begin(), rows = owner.row_end() - owner.row_begin();
  if (m >= n) return {f.P.middleRows(begin, rows), f.R};
  return {f.P, f.R.middleRows(begin, rows)};
}

// The commit order of docs/protocol.md: every follower first, the leader once all staged.
// Returns the leader's ack.
v1::PushAck SplitPush(Cluster& cluster, const v1::Layout::Placement& placement,
                      const std::string& worker, uint64_t sequence, int64_t base,
                      const LowRankFactors& f, int64_t m, int64_t n) {
  for (int i = placement.row_owners_size() - 1; i >= 0; --i) {
    const v1::Layout::RowOwner& owner = placement.row_owners(i);
    const std::vector<v1::PushAck> acks =
        PushAll(cluster.stub(owner.shard()),
                {FactorsContribution(worker, sequence, "w", base, 8, BlockOf(f, m, n, owner))});
    EXPECT_EQ(acks.size(), 1u);
    if (acks.empty()) return {};
    if (i == 0) return acks[0];
    EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED) << "owner " << i << ": "
                                                          << acks[0].message();
  }
  return {};
}

int64_t VersionOf(Cluster& cluster, int shard, const std::string& name) {
  const v1::StatusResponse status = GetStatus(cluster.stub(shard));
  const v1::ParameterStatus* p = testing::FindParameter(status, name);
  return p == nullptr ? -1 : p->version();
}

bool WaitForVersion(Cluster& cluster, const v1::Layout::Placement& placement, int64_t version,
                    absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + timeout;
  for (const v1::Layout::RowOwner& owner : placement.row_owners()) {
    while (VersionOf(cluster, owner.shard(), "w") < version) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(2));
    }
  }
  return true;
}

// The whole matrix from every owner's pulled block; checks each block's rows and checksum.
Matrix Assemble(Cluster& cluster, const v1::Layout::Placement& placement, int64_t m, int64_t n,
                int64_t version) {
  Matrix X(m, n);
  for (const v1::Layout::RowOwner& owner : placement.row_owners()) {
    const v1::ParameterValue value = testing::PullOne(cluster.stub(owner.shard()), "w");
    EXPECT_EQ(value.version(), version) << "shard " << owner.shard();
    EXPECT_EQ(value.row_begin(), owner.row_begin());
    EXPECT_EQ(value.row_end(), owner.row_end());
    const Matrix block = testing::ValueOf(value);
    EXPECT_EQ(WeightsChecksum(block), value.checksum()) << "shard " << owner.shard();
    const int64_t rows = owner.row_end() - owner.row_begin();
    if (m >= n) {
      X.middleRows(owner.row_begin(), rows) = block;
    } else {
      X.middleCols(owner.row_begin(), rows) = block;
    }
  }
  return X;
}

// What the shards should hold: the same batches applied to the whole matrix.
struct WholeReference {
  WholeReference(const v1::RegisterModelRequest& request) {
    spec = ModelTableFromProto(request).value().parameters[0].spec;
    X = InitialValue(spec);
    state = InitDionState(spec.rows(), spec.cols(), spec.rank(), DionStateSeed(spec));
  }
  void Step(const LowRankFactors& a, const LowRankFactors& b) {
    ApplyReferenceBatch({{a, 0.5}, {b, 0.5}}, spec.dion, X, state);
  }
  ParamSpec spec;
  Matrix X;
  DionState state;
};

LowRankFactors RoundFactors(const SplitCase& c, int round, int worker) {
  return RandomFactors(c.m, c.n, 4, 1000 * round + worker);
}

// Workers w0 and w1 on every shard of `cluster`, a split "w" of case `c` registered by both,
// and the whole-matrix reference of the batches they push.
struct SplitRun {
  SplitRun(Cluster& cluster, const SplitCase& c)
      : cluster(cluster),
        c(c),
        request(SplitModel("w0", c.m, c.n, c.shards, c.method)),
        placement(PlacementOf(cluster.Register(request), "w")),
        reference(request) {
    cluster.Register(SplitModel("w1", c.m, c.n, c.shards, c.method));
  }

  // Both workers push round r (base version r - 1, followers first); the reference takes the
  // same batch.
  ::testing::AssertionResult Push(int r) {
    const LowRankFactors a = RoundFactors(c, r, 0), b = RoundFactors(c, r, 1);
    for (const auto& [worker, f] : {std::pair{"w0", &a}, std::pair{"w1", &b}}) {
      const v1::PushAck ack = SplitPush(cluster, placement, worker, r, r - 1, *f, c.m, c.n);
      if (ack.result() != v1::PUSH_RESULT_ACCEPTED) {
        return ::testing::AssertionFailure()
               << worker << "'s push of round " << r << ": " << ack.message();
      }
    }
    reference.Step(a, b);
    return ::testing::AssertionSuccess();
  }
  // Push(r), then every owner reaches version r.
  ::testing::AssertionResult Round(int r) {
    if (::testing::AssertionResult pushed = Push(r); !pushed) return pushed;
    if (!WaitForVersion(cluster, placement, r)) {
      return ::testing::AssertionFailure() << "the owners did not reach version " << r;
    }
    return ::testing::AssertionSuccess();
  }
  // The relative error of the matrix assembled at `version` against the reference.
  double Error(int64_t version) {
    return RelativeError(ToDouble(Assemble(cluster, placement, c.m, c.n, version)),
                         ToDouble(reference.X));
  }
  // Every owner is at `version` and applied `contributions`.
  void ExpectEveryOwner(int64_t version, int64_t contributions) {
    for (const v1::Layout::RowOwner& owner : placement.row_owners()) {
      const v1::StatusResponse status = GetStatus(cluster.stub(owner.shard()));
      const v1::ParameterStatus* p = testing::FindParameter(status, "w");
      ASSERT_NE(p, nullptr) << "shard " << owner.shard();
      EXPECT_EQ(p->version(), version) << "shard " << owner.shard();
      EXPECT_EQ(p->contributions_applied(), contributions) << "shard " << owner.shard();
    }
  }

  Cluster& cluster;
  const SplitCase c;
  const v1::RegisterModelRequest request;
  const v1::Layout::Placement placement;
  WholeReference reference;
};

class SplitServing : public ::testing::TestWithParam<SplitCase> {};

// Two workers push 20 rounds; each round is one batch of both, applied by every owner. After 1
// and 20 steps the assembled blocks equal the whole-matrix reference, every owner reached the
// same version, and each applied every contribution once.
TEST_P(SplitServing, OwnersStepTogetherLikeTheWholeMatrix) {
  const SplitCase c = GetParam();
  Cluster cluster(c.shards);
  ASSERT_TRUE(cluster.ok());
  SplitRun run(cluster, c);
  ASSERT_EQ(run.placement.row_owners_size(), c.shards);
  for (int round = 1; round <= 20; ++round) {
    ASSERT_TRUE(run.Round(round));
    if (round != 1 && round != 20) continue;
    const Matrix X = Assemble(cluster, run.placement, c.m, c.n, round);
    EXPECT_LE(RelativeError(ToDouble(X), ToDouble(run.reference.X)), 1e-5) << "after " << round;
    EXPECT_LE(MaxRelativeError(ToDouble(X), ToDouble(run.reference.X)), 2e-5)
        << "after " << round;
  }
  run.ExpectEveryOwner(20, 40);
  for (const v1::Layout::RowOwner& owner : run.placement.row_owners()) {
    EXPECT_EQ(cluster.server(owner.shard()).shard().StagedContributions("w"), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    SplitShapes, SplitServing,
    ::testing::Values(SplitCase{96, 64, 3, OrthoMethod::kAuto},
                      SplitCase{64, 96, 3, OrthoMethod::kAuto},
                      SplitCase{96, 64, 2, OrthoMethod::kCqr2},
                      SplitCase{64, 96, 2, OrthoMethod::kRcqr}),
    [](const ::testing::TestParamInfo<SplitCase>& info) {
      return absl::StrCat(info.param.m, "x", info.param.n, "Over", info.param.shards,
                          OrthoMethodName(info.param.method));
    });

// A follower that takes no part in a step (its StepRows fails, as if the command were lost):
// nothing is applied on any owner, the leader retries the same batch, and once the follower
// answers again every acknowledged contribution is applied exactly once.
TEST(SplitServingFaults, LostFollowerStepIsRetriedAndAppliedOnce) {
  std::atomic<bool> fail{false};
  Cluster cluster(3, [&](ServerOptions& options, int shard) {
    options.peer.timeout = absl::Milliseconds(300);
    if (shard == 2) {
      options.shard.step_rows_fault = [&](const StepRowsCommand&) {
        return fail.load() ? absl::UnavailableError("injected: the command did not arrive")
                           : absl::OkStatus();
      };
    }
  });
  ASSERT_TRUE(cluster.ok());
  SplitRun run(cluster, {96, 64, 3, OrthoMethod::kAuto});
  for (int round = 1; round <= 6; ++round) {
    fail = round == 3;
    ASSERT_TRUE(run.Push(round));
    if (round == 3) {
      // The batch is closed on the leader but cannot be applied: it fails and is retried
      // (at least twice, within 30 s), and nobody moves past 2 meanwhile.
      const absl::Time deadline = absl::Now() + absl::Seconds(30);
      while (testing::MetricValue(cluster.server(0).metrics().Serialize(),
                                  "dion_split_step_failures_total") < 2 &&
             absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(20));
      }
      EXPECT_GE(testing::MetricValue(cluster.server(0).metrics().Serialize(),
                                     "dion_split_step_failures_total"),
                2);
      for (int s = 0; s < 3; ++s) EXPECT_EQ(VersionOf(cluster, s, "w"), 2) << "shard " << s;
      fail = false;
    }
    ASSERT_TRUE(WaitForVersion(cluster, run.placement, round)) << "round " << round;
  }
  EXPECT_LE(run.Error(6), 1e-5);
  run.ExpectEveryOwner(6, 12);
}

// Each owner checkpoints its rows and restores them: after a restart of every shard the
// blocks, versions and the next steps are those of an uninterrupted run.
TEST(SplitServingCheckpoints, OwnersRestoreTheirRowsAndTrainOn) {
  const FreshDir fresh("split_serving_checkpoints");
  const std::string& dir = fresh.path;
  Cluster cluster(2, CheckpointsIn(dir));
  ASSERT_TRUE(cluster.ok());
  const SplitCase c{64, 96, 2, OrthoMethod::kAuto};
  SplitRun run(cluster, c);
  for (int r = 1; r <= 3; ++r) ASSERT_TRUE(run.Round(r));
  const Matrix before = Assemble(cluster, run.placement, c.m, c.n, 3);
  cluster.Restart();
  ASSERT_TRUE(cluster.ok());
  EXPECT_EQ(Assemble(cluster, run.placement, c.m, c.n, 3), before);
  for (int r = 4; r <= 5; ++r) ASSERT_TRUE(run.Round(r));
  EXPECT_LE(run.Error(5), 1e-5);
}

// Bad input changes nothing and says what was expected.
TEST(SplitServingBadInput, WrongBlockRowsAreRefusedWithTheExpectedRange) {
  Cluster cluster(3);
  ASSERT_TRUE(cluster.ok());
  const v1::Layout::Placement placement =
      PlacementOf(cluster.Register(SplitModel("w0", 96, 64, 3)), "w");
  const v1::Layout::RowOwner& follower = placement.row_owners(1);  // rows [32, 64)
  const LowRankFactors whole = RandomFactors(96, 64, 4, 1);
  for (int shard : {static_cast<int>(follower.shard()), static_cast<int>(placement.shard())}) {
    const std::vector<v1::PushAck> acks =
        PushAll(cluster.stub(shard), {FactorsContribution("w0", 1, "w", 0, 8, whole)});
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_REJECTED);
    EXPECT_EQ(acks[0].status_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(acks[0].message().find("must have 32 rows"), std::string::npos)
        << acks[0].message();
  }
  // R must stay whole (64 rows) on every owner.
  LowRankFactors short_r = BlockOf(whole, 96, 64, follower);
  short_r.R = short_r.R.topRows(32).eval();
  const std::vector<v1::PushAck> acks = PushAll(
      cluster.stub(follower.shard()), {FactorsContribution("w0", 1, "w", 0, 8, short_r)});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].status_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(acks[0].message().find("R stays whole with 64 rows"), std::string::npos)
      << acks[0].message();
  EXPECT_EQ(cluster.server(follower.shard()).shard().StagedContributions("w"), 0);
  EXPECT_EQ(VersionOf(cluster, placement.shard(), "w"), 0);
}

TEST(SplitServingBadInput, RowBlockPushToANonOwnerIsFailedPrecondition) {
  Cluster cluster(3);
  ASSERT_TRUE(cluster.ok());
  const v1::Layout::Placement placement =
      PlacementOf(cluster.Register(SplitModel("w0", 96, 64, 2)), "w");
  ASSERT_EQ(placement.row_owners_size(), 2);
  const int leader = placement.row_owners(0).shard(), follower = placement.row_owners(1).shard();
  const int outsider = 3 - leader - follower;
  std::vector<v1::StatusResponse> before;
  for (int s = 0; s < 3; ++s) before.push_back(GetStatus(cluster.stub(s)));
  const std::vector<v1::PushAck> acks = PushAll(
      cluster.stub(outsider),
      {FactorsContribution("w0", 1, "w", 0, 8,
                           BlockOf(RandomFactors(96, 64, 4, 1), 96, 64, placement.row_owners(1)))});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_REJECTED);
  EXPECT_EQ(acks[0].status_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // The worker is told where the rows are, so a misconfigured address list can be fixed from
  // the message alone.
  EXPECT_NE(acks[0].message().find(absl::StrCat("'w' is split over shards ", leader, ", ",
                                                follower, " (in row order), this is shard ",
                                                outsider, ", which owns none of its rows")),
            std::string::npos)
      << acks[0].message();
  // Nothing changed anywhere: no shard staged, counted as accepted or applied anything; the
  // outsider counts the push as rejected, nothing more.
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(cluster.server(s).shard().StagedContributions("w"), 0) << "shard " << s;
    const v1::StatusResponse after = GetStatus(cluster.stub(s));
    ASSERT_EQ(after.parameters_size(), before[s].parameters_size()) << "shard " << s;
    for (int i = 0; i < after.parameters_size(); ++i) {
      const v1::ParameterStatus& was = before[s].parameters(i);
      const v1::ParameterStatus& now = after.parameters(i);
      EXPECT_EQ(now.version(), was.version()) << "shard " << s << " " << now.parameter();
      EXPECT_EQ(now.steps(), was.steps()) << "shard " << s << " " << now.parameter();
      EXPECT_EQ(now.contributions_applied(), was.contributions_applied())
          << "shard " << s << " " << now.parameter();
    }
    EXPECT_EQ(after.pushes().accepted(), 0) << "shard " << s;
    EXPECT_EQ(after.pushes().duplicate(), 0) << "shard " << s;
    EXPECT_EQ(after.pushes().rejected(), s == outsider ? 1 : 0) << "shard " << s;
  }
  EXPECT_EQ(testing::FindParameter(GetStatus(cluster.stub(outsider)), "w"), nullptr);
  EXPECT_EQ(VersionOf(cluster, leader, "w"), 0);
  EXPECT_EQ(VersionOf(cluster, follower, "w"), 0);
}

TEST(SplitServingBadInput, SplitOverMoreOwnersThanRowsIsInvalidArgument) {
  Cluster cluster(3);
  ASSERT_TRUE(cluster.ok());
  grpc::ClientContext context;
  SetDeadline(context);
  v1::RegisterModelResponse response;
  const grpc::Status s =
      cluster.stub(0).RegisterModel(&context, SplitModel("w0", 2, 2, 3), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  // The shape and the shard count the table asked for: what to change is in the message.
  EXPECT_NE(s.error_message().find("'w' (2 x 2) cannot be split over 3 shards"),
            std::string::npos)
      << s.error_message();
  EXPECT_NE(s.error_message().find("its tall side has 2 rows"), std::string::npos)
      << s.error_message();
  EXPECT_FALSE(GetStatus(cluster.stub(0)).model_registered());
}

TEST(SplitServingBadInput, HouseholderQrOnASplitParameterIsInvalidArgument) {
  Cluster cluster(2);
  ASSERT_TRUE(cluster.ok());
  grpc::ClientContext context;
  SetDeadline(context);
  v1::RegisterModelResponse response;
  const grpc::Status s = cluster.stub(0).RegisterModel(
      &context, SplitModel("w0", 96, 64, 2, OrthoMethod::kQr), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("'w' is split"), std::string::npos) << s.error_message();
  EXPECT_FALSE(GetStatus(cluster.stub(0)).model_registered());
}

TEST(SplitServingBadInput, ShardWithoutPeerAddressesRefusesTheTable) {
  ServerOptions options = TestServerOptions();
  options.shard.store.num_shards = 2;
  absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = Connect((*server)->address());
  grpc::ClientContext context;
  SetDeadline(context);
  v1::RegisterModelResponse response;
  const grpc::Status s = stub->RegisterModel(&context, SplitModel("w0", 96, 64, 2), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("--peer_addresses"), std::string::npos) << s.error_message();
  EXPECT_FALSE(GetStatus(*stub).model_registered());
}

// StepRows is the leader's command to a follower: the leader itself, a stale version, a
// batch naming a contribution the follower never staged and malformed sums are refused,
// nothing applied; a query answers the follower's version and changes nothing.
TEST(SplitServingBadInput, StepRowsRefusesWhatAFollowerCannotApply) {
  Cluster cluster(2);
  ASSERT_TRUE(cluster.ok());
  const v1::Layout::Placement placement =
      PlacementOf(cluster.Register(SplitModel("w0", 96, 64, 2)), "w");
  v1::StepRowsResponse response;
  const auto step_rows = [&](int shard, int64_t version, bool twice = false,
                             std::function<void(v1::StepRowsRequest&)> edit = nullptr) {
    auto stub = v1::ShardPeer::NewStub(grpc::CreateChannel(cluster.server(shard).address(),
                                                           grpc::InsecureChannelCredentials()));
    v1::StepRowsRequest request;
    request.set_parameter("w");
    request.set_version(version);
    request.set_lr_scale(1);
    v1::StepMember* m = request.add_members();
    m->set_worker_id("w0");
    m->set_sequence(9);
    m->set_weight(twice ? 0.5 : 1);
    if (twice) *request.add_members() = *m;
    if (edit) edit(request);
    grpc::ClientContext context;
    SetDeadline(context);
    response.Clear();
    return stub->StepRows(&context, request, &response);
  };
  const auto add_sum = [](v1::StepRowsRequest& request, const std::string& tag) {
    v1::StepSum* sum = request.add_sums();
    sum->set_tag(tag);
    MatrixToTensor(Matrix::Ones(2, 2), sum->mutable_value());
  };
  const int leader = placement.row_owners(0).shard(), follower = placement.row_owners(1).shard();
  grpc::Status s = step_rows(leader, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("leads"), std::string::npos) << s.error_message();
  s = step_rows(follower, 5);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("at version 0"), std::string::npos) << s.error_message();
  s = step_rows(follower, 1, /*twice=*/true);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("named twice"), std::string::npos) << s.error_message();
  s = step_rows(follower, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();
  EXPECT_NE(s.error_message().find("sequence 9 of worker 'w0'"), std::string::npos)
      << s.error_message();
  // A restarted leader's forms: a query, and a step with the sums given.
  s = step_rows(follower, 1, false, [](v1::StepRowsRequest& r) { r.set_query(true); });
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.version(), 0);  // the step not taken, so no sums
  EXPECT_EQ(response.sums_size(), 0);
  s = step_rows(follower, 5, false, [](v1::StepRowsRequest& r) { r.set_query(true); });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("at version 0"), std::string::npos) << s.error_message();
  s = step_rows(follower, 1, false, [&](v1::StepRowsRequest& r) {
    r.set_query(true);
    add_sum(r, "gram");
  });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("a query carries no sums"), std::string::npos)
      << s.error_message();
  s = step_rows(follower, 1, false, [&](v1::StepRowsRequest& r) { add_sum(r, ""); });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("sum 0 has no tag"), std::string::npos) << s.error_message();
  s = step_rows(follower, 1, false, [&](v1::StepRowsRequest& r) {
    add_sum(r, "gram");
    r.mutable_sums(0)->mutable_value()->mutable_data()->pop_back();
  });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("needs 16 bytes of data, got 15"), std::string::npos)
      << s.error_message();
  EXPECT_EQ(VersionOf(cluster, follower, "w"), 0);
}

// The leader completes a step while a follower's answer to its last reduction is lost (the
// follower fails the step after every owner's part was summed): the leader has applied the
// step, so it asks that follower again with the same command, and the follower takes the
// step from the sums the leader's hub kept. Every owner then stays in step: each applies
// every contribution once, and the assembled matrix equals the reference.
TEST(SplitServingFaults, FollowerWhoseLastSumWasLostCatchesUpFromTheRetainedSums) {
  std::atomic<int> lost{0};
  Cluster cluster(3, [&](ServerOptions& options, int shard) {
    // The step's last reduction is the orthogonality error (measured before any update).
    options.shard.store.measure_ortho_error = true;
    if (shard != 2) return;
    options.peer.reduced_fault = [&](const ReduceKey& key, absl::string_view tag) {
      if (key.step == 3 && tag == "ortho_error" && lost.fetch_add(1) == 0) {
        return absl::DeadlineExceededError("injected: the leader's answer was lost");
      }
      return absl::OkStatus();
    };
  });
  ASSERT_TRUE(cluster.ok());
  SplitRun run(cluster, {96, 64, 3, OrthoMethod::kAuto});
  for (int round = 1; round <= 6; ++round) ASSERT_TRUE(run.Round(round));
  EXPECT_GE(lost.load(), 2);  // the lost answer, and the last round of the step taken again
  EXPECT_GE(cluster.server(0).peer_env().hub->replays(), 1);
  EXPECT_LE(run.Error(6), 1e-5);
  run.ExpectEveryOwner(6, 12);
}

// A batch the leader accepted but had not closed when every owner was asked to stop (the
// deployment stops at once): each shard first applies what it accepted, the split step with
// its followers, who still answer during their own drain; the last checkpoints then hold the
// step, and after the restart every owner is at that version with the reference's value.
TEST(SplitServingShutdown, PendingStepIsAppliedWhenEveryOwnerStopsTogether) {
  const FreshDir fresh("split_serving_shutdown");
  const std::string& dir = fresh.path;
  Cluster cluster(3, CheckpointsIn(dir));
  ASSERT_TRUE(cluster.ok());
  const SplitCase c{96, 64, 3, OrthoMethod::kAuto};
  SplitRun run(cluster, c);
  ASSERT_TRUE(run.Round(1));
  // Only w0 pushes round 2: its batch waits for a second worker (no deadline).
  const LowRankFactors lone = RoundFactors(c, 2, 0);
  ASSERT_EQ(SplitPush(cluster, run.placement, "w0", 2, 1, lone, c.m, c.n).result(),
            v1::PUSH_RESULT_ACCEPTED);
  ApplyReferenceBatch({{lone, 1.0}}, run.reference.spec.dion, run.reference.X,
                      run.reference.state);
  absl::SleepFor(absl::Milliseconds(100));
  for (int s = 0; s < 3; ++s) ASSERT_EQ(VersionOf(cluster, s, "w"), 1) << "shard " << s;

  cluster.Restart(/*together=*/true);
  ASSERT_TRUE(cluster.ok());
  for (int s = 0; s < 3; ++s) EXPECT_EQ(VersionOf(cluster, s, "w"), 2) << "shard " << s;
  EXPECT_LE(run.Error(2), 1e-5);
}

// A follower shard stops (gracefully) and returns. Meanwhile a worker's push cannot be
// committed (the stopped owner refuses its block, so the worker does not push to the leader);
// the block the other follower staged is answered DUPLICATE when the worker sends the
// contribution again after the return. The returned follower restores its rows at the version
// it stopped at, and training goes on to the reference's values.
TEST(SplitServingFaults, StoppedFollowerReturnsAndTrainingGoesOn) {
  const FreshDir fresh("split_serving_follower_returns");
  const std::string& dir = fresh.path;
  Cluster cluster(3, CheckpointsIn(dir));
  ASSERT_TRUE(cluster.ok());
  const SplitCase c{96, 64, 3, OrthoMethod::kAuto};
  SplitRun run(cluster, c);
  const v1::Layout::Placement& placement = run.placement;
  ASSERT_TRUE(run.Round(1));
  const v1::Layout::RowOwner& staying = placement.row_owners(1);
  const v1::Layout::RowOwner& stopping = placement.row_owners(2);
  cluster.Stop(stopping.shard());

  const LowRankFactors a2 = RoundFactors(c, 2, 0);
  const auto block_for = [&](const v1::Layout::RowOwner& owner) {
    return FactorsContribution("w0", 2, "w", 1, 8, BlockOf(a2, c.m, c.n, owner));
  };
  std::vector<v1::PushAck> acks = PushAll(cluster.stub(staying.shard()), {block_for(staying)});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED) << acks[0].message();
  // (The stopped shard's stub is not called: its server is gone; the worker would see
  // UNAVAILABLE and keep the contribution.)

  cluster.StartAgain(stopping.shard());
  EXPECT_EQ(VersionOf(cluster, stopping.shard(), "w"), 1);
  acks = PushAll(cluster.stub(staying.shard()), {block_for(staying)});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_DUPLICATE) << acks[0].message();
  acks = PushAll(cluster.stub(stopping.shard()), {block_for(stopping)});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED) << acks[0].message();
  const v1::Layout::RowOwner& leader = placement.row_owners(0);
  acks = PushAll(cluster.stub(leader.shard()), {block_for(leader)});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED) << acks[0].message();
  const LowRankFactors b2 = RoundFactors(c, 2, 1);
  ASSERT_EQ(SplitPush(cluster, placement, "w1", 2, 1, b2, c.m, c.n).result(),
            v1::PUSH_RESULT_ACCEPTED);
  run.reference.Step(a2, b2);
  ASSERT_TRUE(WaitForVersion(cluster, placement, 2));
  for (int r = 3; r <= 4; ++r) ASSERT_TRUE(run.Round(r));
  EXPECT_LE(run.Error(4), 1e-5);
  for (int i = 1; i < 3; ++i) {
    const int shard = placement.row_owners(i).shard();
    EXPECT_EQ(cluster.server(shard).shard().StagedContributions("w"), 0) << "shard " << shard;
  }
}


// The worker client (worker/client, what dion-worker trains with) pushing one sample per local
// step into a split "w" while a follower is lost in the middle of a step: the leader has
// accepted and closed the batch (acknowledged to the worker) and holds it at the step's start,
// before asking any follower, until that follower has stopped. While it is away the step
// fails and is retried: no owner applies anything. The stopping follower refuses the blocks
// pushed during its drain, and the worker restores them into its residual, the error feedback;
// blocks it cannot reach are kept in flight. The follower returns on its port (its checkpoint
// and write-ahead log give back the blocks staged for the held batch), the leader's retry
// takes the step on every owner, and training goes on: every owner ends at one version, having
// applied each contribution the worker saw acknowledged exactly once, and the matrix equals
// the whole-matrix reference of those contributions, one batch each in acknowledgement order.
TEST(SplitServingFaults, WorkerClientLosesAFollowerMidStepAndEveryAcknowledgedPushIsAppliedOnce) {
  constexpr int64_t kHeld = 4;  // the step the leader holds while its follower stops
  const SplitCase c{96, 64, 3, OrthoMethod::kAuto};
  const FreshDir fresh("split_serving_lost_mid_step");
  const std::string& dir = fresh.path;
  absl::Notification entered, release;
  std::atomic<bool> held{false};
  Cluster cluster(3, [&](ServerOptions& options, int shard) {
    options.shard.checkpoint_dir = absl::StrCat(dir, "/shard-", shard);
    // The staged blocks of the held batch outlive the follower's stop only through its log
    // (docs/server.md, "Split parameters": a checkpoint does not hold them).
    options.shard.wal_dir = absl::StrCat(dir, "/wal-", shard);
    options.shard.batcher.target_workers = 1;  // each contribution is a batch: one version each
    // A step missing an owner fails at its first reduction's deadline.
    options.peer.timeout = absl::Milliseconds(300);
    options.shard.split_retry_max = absl::Milliseconds(200);
    // The stopping follower drains for half of this (the held batch's blocks never leave it),
    // then waits out the rest for the worker's open Push stream; it refuses pushes throughout.
    // 1.5 s: a push of the loop below must reach it within that, under TSan on 2 loaded cores.
    options.shutdown_grace = absl::Milliseconds(1500);
    options.shard.leader_step_hook = [&](int64_t step, bool answered) {
      if (step != kHeld || answered || held.exchange(true)) return;
      entered.Notify();
      release.WaitForNotificationWithTimeout(absl::Seconds(30));
    };
  });
  ASSERT_TRUE(cluster.ok());
  // Before the cluster stops: a held leader would wait out its 30 s in the hook.
  absl::Cleanup release_leader = [&] {
    if (!release.HasBeenNotified()) release.Notify();
  };
  v1::RegisterModelRequest request = SplitModel("w0", c.m, c.n, c.shards);
  request.mutable_parameters()->RemoveLast();  // "w" alone: every push is one of its blocks
  const v1::Layout::Placement placement = PlacementOf(cluster.Register(request), "w");
  ASSERT_EQ(placement.row_owners_size(), 3);
  const int leader = placement.row_owners(0).shard();
  const int staying = placement.row_owners(1).shard();
  const int lost = placement.row_owners(2).shard();

  Mutex mu;
  std::vector<Contribution> acknowledged;  // applied, in the leader's acknowledgement order
  int64_t restored = 0;
  ClientOptions options;
  for (int s = 0; s < 3; ++s) options.shard_addresses.push_back(cluster.server(s).address());
  options.worker_id = "w0";
  options.max_in_flight = 1;  // one contribution out at a time: the leader's batches in order
  options.rpc_deadline = absl::Seconds(5);
  options.reconnect.initial_delay = absl::Milliseconds(20);
  options.reconnect.max_delay = absl::Milliseconds(200);
  options.reconnect.give_up_after = absl::Seconds(30);
  options.seed = 7;
  options.on_acknowledged = [&](const Contribution& contribution, PushFate fate) {
    MutexLock lock(&mu);
    if (fate == PushFate::kApplied) acknowledged.push_back(contribution);
    if (fate == PushFate::kRestored) ++restored;
  };
  const auto counts = [&] {
    MutexLock lock(&mu);
    return std::pair<int64_t, int64_t>(static_cast<int64_t>(acknowledged.size()), restored);
  };
  absl::StatusOr<std::unique_ptr<Client>> connected =
      Client::Connect(ModelTableFromProto(request).value(), options);
  ASSERT_TRUE(connected.ok()) << connected.status();
  Client& client = **connected;

  // A local step of one sample with a fresh gradient; `gradients` sums them.
  MatrixD gradients = MatrixD::Zero(c.m, c.n);
  int local_steps = 0;
  const auto submit = [&] {
    Matrix G(c.m, c.n);
    Rng(100 + ++local_steps).FillNormal(G, 0.1);
    gradients += G.cast<double>();
    return client.Submit(std::vector<Matrix>{G}, /*samples=*/1, /*loss=*/0);
  };
  // Error feedback loses nothing: what was acknowledged as applied (payload times samples: the
  // accumulator's sum units) plus what the worker still holds is every gradient it was given.
  // Only meaningful with nothing in flight. (Outstanding takes the accumulator's lock, which
  // on_acknowledged holds while taking `mu`: never both here.)
  const auto feedback_error = [&] {
    MatrixD sent = client.Outstanding(0).cast<double>();
    MutexLock lock(&mu);
    for (const Contribution& a : acknowledged) {
      sent += (a.factors().P * a.factors().R.transpose()).cast<double>() * a.sample_count;
    }
    return RelativeError(sent, gradients);
  };
  const auto owner_status = [&](int shard) {
    const v1::StatusResponse status = GetStatus(cluster.stub(shard));
    const v1::ParameterStatus* p = testing::FindParameter(status, "w");
    return p == nullptr ? v1::ParameterStatus() : *p;
  };

  for (int64_t k = 1; k < kHeld; ++k) {
    ASSERT_TRUE(submit().ok());
    ASSERT_TRUE(client.Flush(absl::Seconds(10)).ok());
    ASSERT_TRUE(WaitForVersion(cluster, placement, k)) << "step " << k;
  }
  // Step kHeld: acknowledged by the leader, then held there at the step's start.
  ASSERT_TRUE(submit().ok());
  ASSERT_TRUE(client.Flush(absl::Seconds(10)).ok());
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(counts().first, kHeld);

  // The follower stops (on its own thread: its drain waits for the held batch's blocks). The
  // worker's next contributions reach it draining: the first it refuses ends the loop. One
  // pushed just before the drain began is staged everywhere and acknowledged instead, for a
  // batch queued behind the held one.
  std::thread stopper([&] { cluster.Stop(lost); });
  bool refused = false;
  for (int attempt = 0; attempt < 20 && !refused; ++attempt) {
    const auto [acked_before, restored_before] = counts();
    if (!submit().ok()) break;
    if (!testing::WaitUntil([&] {
          const auto [acked_now, restored_now] = counts();
          return acked_now > acked_before || restored_now > restored_before;
        })) {
      break;
    }
    refused = counts().second > restored_before;
  }
  stopper.join();
  ASSERT_TRUE(refused) << "no push reached the follower while it drained";
  // The client counts the refusal in its stats after the callback returned.
  EXPECT_TRUE(testing::WaitUntil([&] { return client.stats().refused == counts().second; }))
      << client.stats().refused << " refused, " << counts().second << " restored";
  EXPECT_GE(client.stats().refused, 1);
  // The refused contribution is back in the residual (nothing is in flight: one at a time).
  EXPECT_LE(feedback_error(), 1e-5);
  const int64_t acked_before_return = counts().first;

  // The leader asks its followers now: the lost one is gone, so the step's first reduction
  // times out on the leader and the staying follower, before either changed its rows, and
  // nobody moves past the last completed step. (The attempt as a whole ends only when the
  // command to the lost follower does: it waits for its connection, 8 peer timeouts at most.)
  release.Notify();
  ASSERT_TRUE(testing::WaitUntil([&] {
    return testing::MetricValue(cluster.server(leader).metrics().Serialize(),
                                "dion_peer_reduction_failures_total{reason=\"timeout\"}") >= 1;
  }));
  // The worker's next contribution cannot be committed: the lost owner is unreachable, so it
  // stays in flight (the client retries it) and the leader never sees it.
  ASSERT_TRUE(submit().ok());
  EXPECT_EQ(client.Flush(absl::Milliseconds(100)).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(counts().first, acked_before_return);
  for (int shard : {leader, staying}) {
    const v1::ParameterStatus p = owner_status(shard);
    EXPECT_EQ(p.version(), kHeld - 1) << "shard " << shard;
    EXPECT_EQ(p.contributions_applied(), kHeld - 1) << "shard " << shard;
  }

  // The follower returns on its port with the held batch's blocks. The failed attempt's command
  // may still reach it (refused: its reduction failed); the leader's retry takes the step, the
  // worker's retried push goes through, and training goes on.
  cluster.StartAgain(lost);
  ASSERT_TRUE(client.Flush(absl::Seconds(20)).ok());
  for (int k = 0; k < 3; ++k) {
    ASSERT_TRUE(submit().ok());
    ASSERT_TRUE(client.Flush(absl::Seconds(10)).ok());
  }
  const int64_t acked = counts().first;
  EXPECT_GT(acked, acked_before_return);
  // One version per acknowledged contribution, on every owner, each applied exactly once.
  ASSERT_TRUE(WaitForVersion(cluster, placement, acked));
  // The held step was attempted without the lost follower and failed before it succeeded.
  EXPECT_GE(testing::MetricValue(cluster.server(leader).metrics().Serialize(),
                                 "dion_split_step_failures_total"),
            1);
  for (int shard : {leader, staying, lost}) {
    const v1::ParameterStatus p = owner_status(shard);
    EXPECT_EQ(p.version(), acked) << "shard " << shard;
    EXPECT_EQ(p.contributions_applied(), acked) << "shard " << shard;
  }
  EXPECT_EQ(cluster.server(lost).shard().StagedContributions("w"), 0);
  EXPECT_LE(feedback_error(), 1e-5);
  // The assembled matrix is the reference's after exactly the acknowledged contributions.
  WholeReference reference(request);
  {
    MutexLock lock(&mu);
    for (const Contribution& a : acknowledged) {
      ApplyReferenceBatch({{a.factors(), 1.0}}, reference.spec.dion, reference.X,
                          reference.state);
    }
  }
  EXPECT_LE(RelativeError(ToDouble(Assemble(cluster, placement, c.m, c.n, acked)),
                          ToDouble(reference.X)),
            1e-5);
  client.Close();
}

// ---------------------------------------------------------------------------------------------
// Another split over a checkpoint (docs/server.md, "Start" and "Split parameters"). A shard
// restores the table its checkpoint holds and lays it out again; the rows it then owns must be
// the rows the checkpoint holds.

// The placement of "w" in the layout `stub`'s shard serves (GetLayout).
v1::Layout::Placement LayoutOfW(v1::ParameterServer::Stub& stub) {
  const v1::GetLayoutResponse response = testing::GetLayout(stub);
  if (response.layout().placements_size() == 0) return {};  // the failure is reported
  return PlacementOf(response.layout(), "w");
}

// Shards restarted over checkpoints of "w" split over 2 of 3 shards restore that table. A
// worker offering it split over 3, or whole, is refused FAILED_PRECONDITION naming both
// split_owners, and nothing changes: the layout, every owner's rows and version, and the
// next step are those of the split over 2.
TEST(SplitServingLayoutChange, AnotherSplitOfferedOverARestoredOneIsRefusedAndNothingChanges) {
  const FreshDir fresh("split_serving_split_offered");
  const std::string& dir = fresh.path;
  Cluster cluster(3, CheckpointsIn(dir));
  ASSERT_TRUE(cluster.ok());
  const SplitCase c{96, 64, 2, OrthoMethod::kAuto};
  SplitRun run(cluster, c);
  ASSERT_EQ(run.placement.row_owners_size(), 2);
  for (int r = 1; r <= 2; ++r) ASSERT_TRUE(run.Round(r));
  const Matrix before = Assemble(cluster, run.placement, c.m, c.n, 2);
  cluster.Restart();
  ASSERT_TRUE(cluster.ok());

  for (int owners : {3, 0}) {
    for (int s = 0; s < cluster.size(); ++s) {
      grpc::ClientContext context;
      SetDeadline(context);
      v1::RegisterModelResponse response;
      const grpc::Status status = cluster.stub(s).RegisterModel(
          &context, SplitModel("w0", c.m, c.n, owners), &response);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
          << "shard " << s << ", " << owners << " owners: " << status.error_message();
      EXPECT_NE(status.error_message().find(absl::StrCat(
                    "parameter 'w' field split_owners is 2 in the registered table but ",
                    owners, " in this request")),
                std::string::npos)
          << status.error_message();
    }
  }
  for (int s = 0; s < cluster.size(); ++s) {
    EXPECT_EQ(LayoutOfW(cluster.stub(s)).SerializeAsString(), run.placement.SerializeAsString())
        << "shard " << s;
  }
  EXPECT_EQ(Assemble(cluster, run.placement, c.m, c.n, 2), before);
  run.ExpectEveryOwner(2, 4);
  ASSERT_TRUE(run.Round(3));
  EXPECT_LE(run.Error(3), 1e-5);
}

// Rewrites the model table of checkpoint directory `checkpoint` with `edit`, and its manifest
// entry to match: the checkpoint stays valid, its table now lays "w" out otherwise than the
// rows it holds (as a table edited by hand, or laid out by another rule, would).
void RewriteTable(const std::string& checkpoint, const std::function<void(std::string&)>& edit) {
  const std::string table_path = absl::StrCat(checkpoint, "/", kModelTableFile);
  const std::string manifest_path = absl::StrCat(checkpoint, "/", kManifestFileName);
  std::string table = testing::ReadFile(table_path);
  edit(table);
  absl::StatusOr<CheckpointManifest> manifest =
      ParseManifest(testing::ReadFile(manifest_path), manifest_path);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  for (ManifestFile& file : manifest->files) {
    if (file.name != kModelTableFile) continue;
    file.bytes = static_cast<int64_t>(table.size());
    file.fnv1a64 = Fnv1a64::Of(table);
  }
  testing::WriteFile(table_path, table);
  testing::WriteFile(manifest_path, SerializeManifest(*manifest));
  ASSERT_TRUE(ValidateCheckpoint(checkpoint).ok());
}

// A shard whose checkpoint holds rows of "w" split over 2 while the checkpoint's table now
// lays "w" out over 3 owners (the follower: rows [48, 96) held, [32, 64) laid out) or whole
// (the leader: rows [0, 48) held, all 96 laid out) does not start: FAILED_PRECONDITION naming
// both ranges. Nothing is served and nothing on disk changes: with the table put back, the
// shard starts at the version and bits it stopped at.
TEST(SplitServingLayoutChange, ACheckpointHoldingRowsOfAnotherLayoutIsRefusedAtStart) {
  const FreshDir fresh("split_serving_rows_of_another_layout");
  const std::string& dir = fresh.path;
  Cluster cluster(3, CheckpointsIn(dir));
  ASSERT_TRUE(cluster.ok());
  SplitRun run(cluster, {96, 64, 2, OrthoMethod::kAuto});
  // The rule of common/layout.h: the blocks of "w" go to shards 0 and 1, "b" to shard 2.
  ASSERT_EQ(run.placement.row_owners_size(), 2);
  ASSERT_EQ(run.placement.row_owners(0).shard(), 0u);
  ASSERT_EQ(run.placement.row_owners(1).shard(), 1u);
  ASSERT_TRUE(run.Round(1));
  std::vector<v1::ParameterValue> before;
  for (int s = 0; s < 2; ++s) before.push_back(testing::PullOne(cluster.stub(s), "w"));
  for (int s = 0; s < 3; ++s) cluster.Stop(s);  // each writes its last checkpoint

  struct Case {
    int shard;
    std::function<void(std::string&)> edit;
    std::string held, laid_out;
  };
  const std::vector<Case> cases = {
      {1,
       [](std::string& table) {
         ASSERT_NE(table.find("split_owners: 2"), std::string::npos) << table;
         table.replace(table.find("split_owners: 2"), 15, "split_owners: 3");
       },
       "the checkpoint holds rows [48, 96) of its tall side of 96 rows",
       "this shard owns rows [32, 64) of its tall side of 96 rows (split over 3 shards)"},
      {0,
       [](std::string& table) {
         ASSERT_NE(table.find("split_owners: 2"), std::string::npos) << table;
         table.erase(table.find("split_owners: 2"), 15);
       },
       "the checkpoint holds rows [0, 48) of its tall side of 96 rows",
       "this shard holds all 96 rows of its tall side (the whole parameter)"},
  };
  const std::vector<std::string> peers = {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"};
  for (const Case& k : cases) {
    SCOPED_TRACE(absl::StrCat("shard ", k.shard));
    const std::string root = absl::StrCat(dir, "/shard-", k.shard);
    absl::StatusOr<std::vector<CheckpointInfo>> checkpoints = ListCheckpoints(root);
    ASSERT_TRUE(checkpoints.ok() && !checkpoints->empty()) << checkpoints.status();
    const std::string newest = checkpoints->front().path;
    const std::string table = testing::ReadFile(absl::StrCat(newest, "/", kModelTableFile));
    const std::string manifest = testing::ReadFile(absl::StrCat(newest, "/", kManifestFileName));
    RewriteTable(newest, k.edit);

    ServerOptions options = TestServerOptions();
    options.shard.store.shard_index = k.shard;
    options.shard.store.num_shards = 3;
    options.shard.checkpoint_dir = root;
    options.peer.addresses = peers;  // never called: nothing steps
    absl::StatusOr<std::unique_ptr<DionServer>> refused = DionServer::Start(options);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
    for (const std::string& part : {std::string("cannot restore parameter 'w'"), k.held,
                                    k.laid_out}) {
      EXPECT_NE(refused.status().message().find(part), std::string::npos) << refused.status();
    }
    EXPECT_EQ(ListCheckpoints(root)->size(), checkpoints->size());

    testing::WriteFile(absl::StrCat(newest, "/", kModelTableFile), table);
    testing::WriteFile(absl::StrCat(newest, "/", kManifestFileName), manifest);
    absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    auto stub = Connect((*server)->address());
    const v1::ParameterValue after = testing::PullOne(*stub, "w");
    EXPECT_EQ(after.version(), 1);
    EXPECT_EQ(after.row_begin(), before[k.shard].row_begin());
    EXPECT_EQ(after.row_end(), before[k.shard].row_end());
    EXPECT_EQ(after.value().data(), before[k.shard].value().data());
    EXPECT_EQ(after.checksum(), before[k.shard].checksum());
    stub.reset();
    EXPECT_TRUE((*server)->Shutdown().ok());
  }
}

}  // namespace
}  // namespace dion
