// The worker client (worker/client/client.h) with a parameter split over two shards, against
// scripted fake shards (tests/fake_shard.h): the layout check, the follower-first commit order
// of a split contribution (a follower's refusal restores it without the leader ever seeing it;
// staged everywhere, the leader gets its block), and the replica assembled from the owners'
// row blocks (per-block steps, version = minimum, one block resynced from its owner alone).
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/checksum.h"
#include "common/dion.h"
#include "common/layout.h"
#include "common/rng.h"
#include "tests/fake_shard.h"
#include "tests/model_table_test_util.h"
#include "tests/reference.h"
#include "tests/wait_test_util.h"
#include "worker/client/client.h"

namespace dion {
namespace {

using testing::WaitUntil;

// "w", a Dion matrix split over the two shards (tall 12 x 8, or wide 8 x 12), and a bias.
ModelTable SplitTable(bool wide, int split_owners = 2) {
  ModelTable table;
  table.model_name = "split";
  ParameterDefinition w = testing::Definition(
      "w", wide ? std::vector<int64_t>{8, 12} : std::vector<int64_t>{12, 8},
      OptimizerKind::kDion, 1);
  w.spec.split_owners = split_owners;
  table.parameters = {w, testing::Definition("b", {8}, OptimizerKind::kAdamW, 2)};
  return table;
}

// Two fake shards serving `table`, the client's options for them, and who leads "w".
struct TwoShards {
  explicit TwoShards(const ModelTable& table, const ModelTable& served) {
    for (int s = 0; s < 2; ++s) {
      fakes.push_back(std::make_unique<testing::FakeShard>(served, s, 2));
      EXPECT_TRUE(fakes.back()->Start().ok());
    }
    const Layout layout = Layout::Compute(table.specs(), 2).value();
    leader = layout.ShardOf("w");
    options.shard_addresses = {fakes[0]->address(), fakes[1]->address()};
    options.worker_id = "w0";
    options.rpc_deadline = absl::Seconds(5);
    options.reconnect.initial_delay = absl::Milliseconds(20);
    options.reconnect.give_up_after = absl::Seconds(20);
    options.seed = 7;
  }
  explicit TwoShards(const ModelTable& table) : TwoShards(table, table) {}
  testing::FakeShard& lead() { return *fakes[leader]; }
  testing::FakeShard& follower() { return *fakes[1 - leader]; }
  // Connects and waits until both subscriptions are open.
  std::unique_ptr<Client> Connect(const ModelTable& table) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, options);
    EXPECT_TRUE(client.ok()) << client.status();
    if (!client.ok()) return nullptr;
    EXPECT_TRUE(WaitUntil([&] {
      return fakes[0]->open_subscriptions() == 1 && fakes[1]->open_subscriptions() == 1;
    }));
    return *std::move(client);
  }

  std::vector<std::unique_ptr<testing::FakeShard>> fakes;
  int leader = 0;
  ClientOptions options;
};

std::vector<Matrix> Gradients(const std::vector<ParamSpec>& specs, uint64_t seed) {
  std::vector<Matrix> out;
  Rng rng(seed);
  for (const ParamSpec& spec : specs) {
    Matrix G(spec.rows(), spec.cols());
    rng.FillNormal(G, 0.1);
    out.push_back(std::move(G));
  }
  return out;
}

int CountPushesOf(const testing::FakeShard& fake, const std::string& parameter) {
  int n = 0;
  for (const auto& r : fake.received()) n += r.parameter == parameter;
  return n;
}

TEST(WorkerSplit, RefusesAShardThatPlacesTheSplitParameterOtherwise) {
  const ModelTable table = SplitTable(false);
  TwoShards shards(table, /*served=*/SplitTable(false, /*split_owners=*/0));
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, shards.options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(client.status().message(), "places 'w'")) << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), "this client computes split over"))
      << client.status();
}

// A follower that refuses (UNAVAILABLE: not staged): the leader never sees the contribution,
// and it is restored whole into the residual; once the follower stages, the leader gets it.
TEST(WorkerSplit, AFollowerRefusalRestoresWithoutReachingTheLeader) {
  const ModelTable table = SplitTable(false);
  TwoShards shards(table);
  std::atomic<bool> refuse{true};
  shards.follower().SetJudge([&](const v1::Contribution& c) {
    if (refuse) return testing::FakeShard::Ack(c, v1::PUSH_RESULT_REJECTED, 14, "restarting");
    return testing::FakeShard::Ack(c, v1::PUSH_RESULT_ACCEPTED);
  });
  std::atomic<int> restored{0}, applied{0};
  shards.options.on_acknowledged = [&](const Contribution& c, PushFate fate) {
    if (c.parameter != "w") return;
    if (fate == PushFate::kRestored) ++restored;
    if (fate == PushFate::kApplied) ++applied;
  };
  std::unique_ptr<Client> client = shards.Connect(table);
  ASSERT_NE(client, nullptr);
  const std::vector<Matrix> G = Gradients(client->specs(), 3);
  ASSERT_TRUE(client->Submit(G, /*samples=*/1, 0.5).ok());
  ASSERT_TRUE(WaitUntil([&] { return restored.load() == 1; }));
  EXPECT_EQ(CountPushesOf(shards.lead(), "w"), 0);
  EXPECT_EQ(CountPushesOf(shards.follower(), "w"), 1);
  // Residual + restored payload = the gradient (sum units, 1 sample), to float rounding.
  EXPECT_LT(testing::RelativeError(client->Outstanding(0).cast<double>(), G[0].cast<double>()),
            1e-5);
  EXPECT_EQ(client->stats().refused, 1);
  refuse = false;
  ASSERT_TRUE(client->Flush(absl::Seconds(10)).ok());
  EXPECT_EQ(CountPushesOf(shards.lead(), "w"), 1);
  EXPECT_EQ(applied.load(), 1);
}

TEST(WorkerSplit, AStaleFollowerDropsTheContributionWithoutTheLeader) {
  const ModelTable table = SplitTable(true);
  TwoShards shards(table);
  shards.follower().SetJudge([](const v1::Contribution& c) {
    return testing::FakeShard::Ack(c, c.parameter() == "w" ? v1::PUSH_RESULT_STALE
                                                           : v1::PUSH_RESULT_ACCEPTED);
  });
  std::unique_ptr<Client> client = shards.Connect(table);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Submit(Gradients(client->specs(), 4), 3, 0.5).ok());
  ASSERT_TRUE(client->Flush(absl::Seconds(10)).ok());
  EXPECT_EQ(client->stats().stale_dropped, 1);
  EXPECT_EQ(client->stats().stale_dropped_samples, 3);
  EXPECT_EQ(CountPushesOf(shards.lead(), "w"), 0);
}

// Every follower staged it (here: DUPLICATE, as after a retry): the leader gets its block, and
// only then; each owner's block is its rows of the tall side's factor of the contribution.
TEST(WorkerSplit, TheLeaderGetsItsBlockOnlyAfterTheFollowerStagedIt) {
  for (bool wide : {false, true}) {
    const ModelTable table = SplitTable(wide);
    TwoShards shards(table);
    const Layout layout = Layout::Compute(table.specs(), 2).value();
    const std::vector<RowOwner>& owners = layout.Find("w")->split;
    Mutex mu;
    std::map<int, v1::Contribution> blocks;  // by shard
    bool follower_answered = false, leader_too_early = false;
    shards.follower().SetJudge([&](const v1::Contribution& c) {
      MutexLock lock(&mu);
      if (c.parameter() == "w") {
        blocks[1 - shards.leader] = c;
        follower_answered = true;
      }
      return testing::FakeShard::Ack(c, v1::PUSH_RESULT_DUPLICATE);
    });
    shards.lead().SetJudge([&](const v1::Contribution& c) {
      MutexLock lock(&mu);
      if (c.parameter() == "w") {
        blocks[shards.leader] = c;
        leader_too_early = leader_too_early || !follower_answered;
      }
      return testing::FakeShard::Ack(c, v1::PUSH_RESULT_ACCEPTED);
    });
    Contribution whole;
    shards.options.on_acknowledged = [&](const Contribution& c, PushFate fate) {
      if (c.parameter == "w" && fate == PushFate::kApplied) whole = c;
    };
    std::unique_ptr<Client> client = shards.Connect(table);
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Submit(Gradients(client->specs(), 5), 2, 0.5).ok());
    ASSERT_TRUE(client->Flush(absl::Seconds(10)).ok());
    client->Close();
    MutexLock lock(&mu);
    EXPECT_FALSE(leader_too_early);
    ASSERT_EQ(blocks.size(), 2u);
    ASSERT_TRUE(whole.is_low_rank());
    for (const RowOwner& owner : owners) {
      const v1::Contribution& c = blocks[owner.shard];
      EXPECT_EQ(c.sequence(), whole.sequence);
      EXPECT_EQ(c.base_version(), whole.base_version);
      EXPECT_EQ(c.sample_count(), 2);
      const Matrix P = TensorToMatrix(c.factors().p(), {}, "P").value();
      const Matrix R = TensorToMatrix(c.factors().r(), {}, "R").value();
      const Matrix& cut = wide ? whole.factors().R : whole.factors().P;
      const Matrix& kept = wide ? whole.factors().P : whole.factors().R;
      EXPECT_EQ(wide ? R : P, Matrix(cut.middleRows(owner.rows.begin, owner.rows.size())));
      EXPECT_EQ(wide ? P : R, kept);
    }
  }
}

// The step of the whole parameter from X at `version` - 1: its P, Q and the result.
struct WholeStep {
  LowRankStep step;
  Matrix after;
};
WholeStep MakeStep(const Matrix& X, bool wide, uint64_t seed) {
  const int64_t tall = wide ? X.cols() : X.rows(), short_side = wide ? X.rows() : X.cols();
  Matrix P(tall, 2), Q(short_side, 2);
  Rng(seed).FillNormal(P);
  Rng(seed + 1).FillNormal(Q);
  WholeStep out{LowRankStep{0.99f, 0.05f, P, Q, wide}, X};
  ApplyLowRankUpdate(out.after, 0.99f, 0.05f, P, Q, wide);
  return out;
}
// What the owner of `rows` broadcasts for `whole` (its P rows, its block's checksum).
VersionUpdate BlockUpdate(const WholeStep& whole, int64_t version, RowBlock rows, bool wide) {
  LowRankStep step = whole.step;
  step.P = whole.step.P.middleRows(rows.begin, rows.size());
  const Matrix block = wide ? Matrix(whole.after.middleCols(rows.begin, rows.size()))
                            : Matrix(whole.after.middleRows(rows.begin, rows.size()));
  VersionUpdate update{"w", version, WeightsChecksum(block), step};
  update.rows = rows;
  return update;
}

// The replica applies each owner's block step; its version is the minimum over the blocks; a
// block whose checksum does not match is pulled from its owner alone.
TEST(WorkerSplit, AssemblesTheReplicaFromTheOwnersBlocks) {
  for (bool wide : {false, true}) {
    const ModelTable table = SplitTable(wide);
    TwoShards shards(table);
    const Layout layout = Layout::Compute(table.specs(), 2).value();
    const std::vector<RowOwner>& owners = layout.Find("w")->split;
    std::unique_ptr<Client> client = shards.Connect(table);
    ASSERT_NE(client, nullptr);
    std::vector<Matrix> weights;
    client->CopyWeights(&weights);
    EXPECT_EQ(WeightsChecksum(weights[0]), WeightsChecksum(InitialValue(table.specs()[0])));
    const WholeStep one = MakeStep(weights[0], wide, 11);
    // The leader's block first: the replica is not at version 1 until the follower's is.
    const RowOwner& lead = owners[0];
    const RowOwner& follow = owners[1];
    const int64_t received = client->stats().received_bytes;
    shards.fakes[lead.shard]->Broadcast(BlockUpdate(one, 1, lead.rows, wide));
    ASSERT_TRUE(WaitUntil([&] { return client->stats().received_bytes > received; }));
    EXPECT_EQ(client->version(0), 0);
    shards.fakes[follow.shard]->Broadcast(BlockUpdate(one, 1, follow.rows, wide));
    ASSERT_TRUE(client->WaitForVersionsAbove({0, -1}, absl::Seconds(10)).ok());
    client->CopyWeights(&weights);
    EXPECT_EQ(WeightsChecksum(weights[0]), WeightsChecksum(one.after)) << "wide " << wide;
    // Step 2 with a wrong checksum from the follower: its block alone is pulled from it.
    const WholeStep two = MakeStep(one.after, wide, 21);
    shards.fakes[follow.shard]->SetValue("w", 2, two.after);
    const int lead_pulls = shards.fakes[lead.shard]->pulls();
    const int follow_pulls = shards.fakes[follow.shard]->pulls();
    // A step that does not reproduce the block its checksum names (the replica's copy is
    // wrong until the pull replaces it).
    VersionUpdate wrong = BlockUpdate(two, 2, follow.rows, wide);
    std::get<LowRankStep>(wrong.content).P(0, 0) += 1.0f;
    shards.fakes[follow.shard]->Broadcast(wrong);
    shards.fakes[lead.shard]->Broadcast(BlockUpdate(two, 2, lead.rows, wide));
    ASSERT_TRUE(client->WaitForVersionsAbove({1, -1}, absl::Seconds(10)).ok());
    ASSERT_TRUE(WaitUntil([&] {
      std::vector<Matrix> now;
      client->CopyWeights(&now);
      return WeightsChecksum(now[0]) == WeightsChecksum(two.after);
    })) << "wide " << wide;
    ASSERT_TRUE(WaitUntil([&] { return client->stats().resyncs == 1; }));
    EXPECT_EQ(shards.fakes[follow.shard]->pulls(), follow_pulls + 1);
    EXPECT_EQ(shards.fakes[lead.shard]->pulls(), lead_pulls);
    EXPECT_EQ(client->stats().resyncs, 1);
  }
}

}  // namespace
}  // namespace dion
