// End to end inside one process: two shards on 127.0.0.1, two workers training the MLP on the
// synthetic teacher task through the client library (worker/train/trainer.h), and the worker
// metrics they export; and a model with one parameter split over three shards, whose replicas
// must equal the blocks the shards serve.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/rng.h"
#include "tests/ports_test_util.h"
#include "tests/server_test_util.h"
#include "worker/client/client.h"
#include "worker/train/epoch_order.h"
#include "worker/train/mlp.h"
#include "worker/train/partition.h"
#include "worker/train/synthetic_task.h"
#include "worker/train/trainer.h"
#include "worker/client/worker_metrics.h"

namespace dion {
namespace {

using testing::MetricValue;

// Convergence is asserted as "reaches the target test loss within a budget of optimizer steps",
// not as "has loss below X after exactly N steps": how many samples and how much staleness go
// into each optimizer step depends on thread timing (adaptive accumulation, batch grouping), and
// on a loaded machine the loss after a fixed step count has a long tail (measured 0.62-1.15 at
// 300 steps). The step at which the target is first met is robust to that.
//
// Under ThreadSanitizer the run takes more steps to the same loss (target met at shard step
// 268-394, final loss 0.78-0.88 over 6 runs beside a build), most likely because compute is
// 5-10x slower against the batcher's 20 ms deadline, so batches hold fewer samples. That build
// runs this test for its threads, not its convergence; its budgets are wider but still fail a
// run that does not learn (initial loss ~3.1).
#if defined(__SANITIZE_THREAD__)
constexpr int64_t kMaxShardSteps = 1500;
constexpr double kFinalLossBound = 1.3;
#else
constexpr int64_t kMaxShardSteps = 600;
constexpr double kFinalLossBound = 1.0;
#endif
// Two shards on 127.0.0.1 that close a batch at 2 workers or after 20 ms.
absl::Status StartTwoShards(std::vector<std::unique_ptr<DionServer>>* servers,
                            std::vector<std::string>* addresses) {
  for (int s = 0; s < 2; ++s) {
    ServerOptions options = testing::TestServerOptions();
    options.shard.store.shard_index = s;
    options.shard.store.num_shards = 2;
    options.shard.batcher.target_workers = 2;
    options.shard.batcher.deadline = absl::Milliseconds(20);
    options.shard.batcher.staleness.max_staleness = 64;
    absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(options);
    if (!server.ok()) return server.status();
    addresses->push_back((*server)->address());
    servers->push_back(*std::move(server));
  }
  return absl::OkStatus();
}

// The 16-64-64-10 student MLP of the teacher task: Dion on the hidden matrices, AdamW on the rest.
ModelTable StudentTable() {
  MlpOptions mlp;
  mlp.layer_sizes = {16, 64, 64, 10};
  mlp.dion.lr = 0.02;
  mlp.dion.weight_decay = 0;
  mlp.adamw.lr = 0.01;
  mlp.adamw.weight_decay = 0;
  mlp.seed = 3;
  ModelTable table;
  table.model_name = "teacher-student";
  const std::vector<ParamSpec> specs = ParameterTable(mlp).value();
  for (const ParamSpec& spec : specs) table.parameters.push_back({spec, {}});
  return table;
}

TEST(WorkerTraining, TwoWorkersLearnTheTeacherTaskThroughTwoShards) {
  constexpr double kTargetLoss = 0.8;
  std::vector<std::unique_ptr<DionServer>> servers;
  std::vector<std::string> addresses;
  ASSERT_TRUE(StartTwoShards(&servers, &addresses).ok());
  TeacherOptions teacher;  // 16-32-10
  const Dataset train = MakeTeacherDataset(teacher, 16384, 11).value();
  const Dataset test = MakeTeacherDataset(teacher, 2048, 12).value();
  const ModelTable table = StudentTable();

  const auto partitions = PartitionAll(train.labels, train.num_classes, 2, {}).value();
  std::vector<WorkerMetrics> metrics(2);
  std::vector<std::unique_ptr<Client>> clients;
  for (int w = 0; w < 2; ++w) {
    ClientOptions options;
    options.shard_addresses = addresses;
    options.worker_id = absl::StrCat("worker-", w);
    options.seed = 1 + w;
    options.metrics = &metrics[w];
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, options);
    ASSERT_TRUE(client.ok()) << client.status();
    clients.push_back(*std::move(client));
  }
  // The budget is counted in optimizer steps on the shards, not in local steps: a local step of
  // this tiny model takes ~20 us, far below a loopback round trip, so how many local steps a
  // worker folds into one push depends on the machine (adaptive accumulation), while the
  // number of shard steps is what the optimizer sees. Worker 0 evaluates every 20 ms and stops
  // the run the first time the test loss is below the target.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> reached_at{-1};  // fc1.weight's version when the target was first met
  std::atomic<double> best_loss{1e9};
  std::thread monitor([&] {
    const absl::Time deadline = absl::Now() + absl::Seconds(45);
    while (!stop.load() && clients[0]->version(0) < kMaxShardSteps && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(2));
    }
    stop.store(true);
  });
  const std::function<void(const TrainerProgress&)> on_progress = [&](const TrainerProgress& p) {
    if (!p.evaluation.has_value() || p.final) return;
    if (p.evaluation->loss < best_loss.load()) best_loss.store(p.evaluation->loss);
    if (p.evaluation->loss < kTargetLoss && reached_at.load() < 0) {
      reached_at.store(clients[0]->version(0));
      stop.store(true);
    }
  };
  std::vector<absl::StatusOr<TrainerProgress>> results(2, absl::UnknownError("not run"));
  std::vector<std::thread> workers;
  for (int w = 0; w < 2; ++w) {
    workers.emplace_back([&, w] {
      TrainerOptions trainer;
      trainer.epochs = 1000;  // ended by `stop`
      trainer.batch_size = 32;
      trainer.evaluate = w == 0;
      trainer.eval_interval = absl::Milliseconds(20);
      trainer.progress_interval = absl::Milliseconds(20);
      trainer.seed = 10 + w;
      trainer.flush_timeout = absl::Seconds(20);
      const std::function<void(const TrainerProgress&)> none;
      results[w] = Train(*clients[w], Subset(train, partitions[w]), &test, trainer, &metrics[w],
                         w == 0 ? on_progress : none, &stop);
    });
  }
  for (std::thread& t : workers) t.join();
  monitor.join();
  for (auto& client : clients) client->Close();
  ASSERT_TRUE(results[0].ok()) << results[0].status();
  ASSERT_TRUE(results[1].ok()) << results[1].status();
  const TrainerProgress& r = *results[0];
  ASSERT_TRUE(r.evaluation.has_value());
  std::printf("target loss %.2f reached at step %lld (best %.4f); final test loss %.4f accuracy "
              "%.4f refused %lld pushes %lld\n",
              kTargetLoss, static_cast<long long>(reached_at.load()), best_loss.load(),
              r.evaluation->loss, r.evaluation->accuracy,
              static_cast<long long>(r.client.refused), static_cast<long long>(r.client.pushes));
  // Kaiming init starts at loss ~3.1 on this task. Two asynchronous workers measured loss
  // 0.62-1.15 after 300 shard steps of fc1.weight (Release, loaded machine); the target 0.8 was
  // first met at shard step 140-227 (20 runs, 14 of them with 6-8 test processes on 2 cores).
  // The budget, 600, leaves a margin of 2.6x for timing (see above for TSan).
  EXPECT_GT(reached_at.load(), 0) << "the test loss never went below " << kTargetLoss
                                  << " in " << kMaxShardSteps << " shard steps or 45 s (best "
                                  << best_loss.load() << ")";
  EXPECT_LE(reached_at.load(), kMaxShardSteps);
  // The final evaluation, after the last pushes, stays near the target (measured final loss
  // 0.77-0.84, accuracy 0.68-0.72): the run did not dip under it once and then diverge.
  EXPECT_LT(r.evaluation->loss, kFinalLossBound);
  EXPECT_GT(r.evaluation->accuracy, 0.6);

  const std::string text = metrics[1].Serialize();
  EXPECT_EQ(MetricValue(text, "dion_worker_samples_total"),
            static_cast<double>(results[1]->samples));
  EXPECT_GT(MetricValue(text, "dion_worker_pushes_total{result=\"accepted\"}"), 100);
  EXPECT_GT(MetricValue(text, "dion_worker_compression_ratio"), 1.0);
  EXPECT_GT(MetricValue(text, "dion_worker_sent_bytes_total"), 0);
  EXPECT_GE(MetricValue(text, "dion_worker_local_steps_per_push_count"), 100);
  EXPECT_EQ(MetricValue(metrics[0].Serialize(), "dion_worker_test_accuracy"),
            r.evaluation->accuracy);
  for (auto& server : servers) EXPECT_TRUE(server->Shutdown().ok());
}

// The 16-32-10 student MLP of the teacher task with MlpOptions' defaults.
ModelTable SmallStudentTable() {
  MlpOptions mlp;
  mlp.layer_sizes = {16, 32, 10};
  ModelTable table;
  table.model_name = "teacher-student";
  const std::vector<ParamSpec> specs = ParameterTable(mlp).value();
  for (const ParamSpec& spec : specs) table.parameters.push_back({spec, {}});
  return table;
}

// One shard that closes a batch only when both of 2 workers contributed (what --sync asks of
// the shards): no sample target, no adaptation, a deadline that is never the reason.
absl::StatusOr<std::unique_ptr<DionServer>> StartSynchronousShard() {
  ServerOptions options = testing::TestServerOptions();
  options.shard.batcher.target_samples = 0;
  options.shard.batcher.target_workers = 2;
  options.shard.batcher.adaptive = false;
  options.shard.batcher.deadline = absl::Seconds(30);
  return DionServer::Start(options);
}

// Two clients "worker-0" and "worker-1" of `table` on `address`, one push in flight each.
absl::StatusOr<std::vector<std::unique_ptr<Client>>> ConnectTwoWorkers(const ModelTable& table,
                                                                       const std::string& address) {
  std::vector<std::unique_ptr<Client>> clients;
  for (int w = 0; w < 2; ++w) {
    ClientOptions options;
    options.shard_addresses = {address};
    options.worker_id = absl::StrCat("worker-", w);
    options.max_in_flight = 1;
    options.seed = 1 + w;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, options);
    if (!client.ok()) return client.status();
    clients.push_back(*std::move(client));
  }
  return clients;
}

// Runs train(w) for w = 0 and 1 on threads of their own and returns both results.
std::vector<absl::StatusOr<TrainerProgress>> TrainTwoWorkers(
    const std::function<absl::StatusOr<TrainerProgress>(int)>& train) {
  std::vector<absl::StatusOr<TrainerProgress>> results(2, absl::UnknownError("not run"));
  std::vector<std::thread> workers;
  for (int w = 0; w < 2; ++w) workers.emplace_back([&, w] { results[w] = train(w); });
  for (std::thread& t : workers) t.join();
  return results;
}

// Synchronous steps against a shard that closes a batch only when both workers contributed:
// every local step becomes exactly one optimizer step with one contribution per worker, all
// computed at the same version (staleness 0), nothing accumulated while waiting.
TEST(WorkerTraining, SynchronousStepsGiveOneContributionPerWorkerPerOptimizerStep) {
  constexpr int kSteps = 20;
  absl::StatusOr<std::unique_ptr<DionServer>> server = StartSynchronousShard();
  ASSERT_TRUE(server.ok()) << server.status();
  TeacherOptions teacher;
  const Dataset train = MakeTeacherDataset(teacher, 4096, 11).value();
  const auto partitions = PartitionAll(train.labels, train.num_classes, 2, {}).value();
  absl::StatusOr<std::vector<std::unique_ptr<Client>>> connected =
      ConnectTwoWorkers(SmallStudentTable(), (*server)->address());
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::vector<std::unique_ptr<Client>>& clients = *connected;
  const std::vector<absl::StatusOr<TrainerProgress>> results = TrainTwoWorkers([&](int w) {
    TrainerOptions trainer;
    trainer.epochs = 1000;
    trainer.max_steps = kSteps;
    trainer.batch_size = 16;
    trainer.seed = 10 + w;
    trainer.synchronous = true;
    trainer.flush_timeout = absl::Seconds(20);
    return Train(*clients[w], Subset(train, partitions[w]), nullptr, trainer, nullptr, nullptr,
                 nullptr);
  });
  for (int w = 0; w < 2; ++w) {
    ASSERT_TRUE(results[w].ok()) << results[w].status();
    const ClientStats& stats = results[w]->client;
    EXPECT_EQ(results[w]->steps, kSteps);
    const int64_t parameters = static_cast<int64_t>(clients[w]->specs().size());
    EXPECT_EQ(stats.pushes, kSteps * parameters) << "worker " << w;
    EXPECT_EQ(stats.accepted, kSteps * parameters) << "worker " << w;
    EXPECT_EQ(stats.staleness_sum, 0) << "worker " << w;
    for (int i = 0; i < parameters; ++i) {
      EXPECT_EQ(clients[w]->version(i), kSteps) << clients[w]->specs()[i].name;
    }
  }
  for (auto& client : clients) client->Close();
  EXPECT_TRUE((*server)->Shutdown().ok());
}

// Synchronous training over partitions of very unequal sizes (a Dirichlet split): with
// SamplesPerEpoch's rule every worker takes the same number of steps per epoch, so every batch
// closes with both workers and none waits for the deadline (30 s, beyond flush_timeout: a
// worker left alone would fail its step with DeadlineExceeded).
TEST(WorkerTraining, SynchronousWorkersWithUnequalPartitionsTakeEqualSteps) {
  constexpr int kEpochs = 2;
  constexpr int kBatch = 16;
  absl::StatusOr<std::unique_ptr<DionServer>> server = StartSynchronousShard();
  ASSERT_TRUE(server.ok()) << server.status();
  const Dataset train = MakeTeacherDataset(TeacherOptions{}, 1200, 11).value();
  // Worker 0 holds 200 samples, worker 1 1000: one pass would be 13 against 63 steps.
  std::vector<std::vector<int64_t>> partitions(2);
  for (int64_t i = 0; i < train.size(); ++i) partitions[i < 200 ? 0 : 1].push_back(i);
  absl::StatusOr<std::vector<std::unique_ptr<Client>>> connected =
      ConnectTwoWorkers(SmallStudentTable(), (*server)->address());
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::vector<std::unique_ptr<Client>>& clients = *connected;
  const std::vector<absl::StatusOr<TrainerProgress>> results = TrainTwoWorkers([&](int w) {
    TrainerOptions trainer;
    trainer.epochs = kEpochs;
    trainer.batch_size = kBatch;
    trainer.seed = 10 + w;
    trainer.synchronous = true;
    trainer.flush_timeout = absl::Seconds(10);
    trainer.samples_per_epoch =
        SamplesPerEpoch(static_cast<int64_t>(partitions[w].size()), train.size(), 2, true)
            .value();
    return Train(*clients[w], Subset(train, partitions[w]), nullptr, trainer, nullptr, nullptr,
                 nullptr);
  });
  constexpr int64_t kSteps = kEpochs * ((600 + kBatch - 1) / kBatch);  // 600 = 1200 / 2
  for (int w = 0; w < 2; ++w) {
    ASSERT_TRUE(results[w].ok()) << "worker " << w << ": " << results[w].status();
    EXPECT_EQ(results[w]->steps, kSteps) << "worker " << w;
    EXPECT_EQ(results[w]->samples, kEpochs * 600) << "worker " << w;
    EXPECT_EQ(results[w]->client.staleness_sum, 0) << "worker " << w;
    for (int i = 0; i < static_cast<int>(clients[w]->specs().size()); ++i) {
      EXPECT_EQ(clients[w]->version(i), kSteps) << clients[w]->specs()[i].name;
    }
  }
  for (auto& client : clients) client->Close();
  EXPECT_TRUE((*server)->Shutdown().ok());
}

// One shard (TestServerOptions, closing batches at `target_samples`) and one connected client
// of the 16-32-10 teacher-student MLP.
struct OneShardOneWorker {
  std::unique_ptr<DionServer> server;
  std::unique_ptr<Client> client;
  ~OneShardOneWorker() {
    if (client != nullptr) client->Close();
    if (server != nullptr) {
      EXPECT_TRUE(server->Shutdown().ok());
    }
  }
};
absl::Status StartOneShardOneWorker(int64_t target_samples, OneShardOneWorker* out,
                                    bool track_last_step = false) {
  ServerOptions server_options = testing::TestServerOptions();
  server_options.shard.batcher.target_samples = target_samples;
  absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(server_options);
  if (!server.ok()) return server.status();
  out->server = *std::move(server);
  const ModelTable table = SmallStudentTable();
  ClientOptions options;
  options.shard_addresses = {out->server->address()};
  options.worker_id = "worker-0";
  options.track_last_step = track_last_step;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, options);
  if (!client.ok()) return client.status();
  out->client = *std::move(client);
  return absl::OkStatus();
}

// The student MLP with its 64 x 64 hidden matrix split over three in-process shards: two
// workers train it through the split pushes, and afterwards every worker's replica equals,
// bit for bit, the blocks a fresh client pulls from the shards (their checksums verified).
TEST(WorkerTraining, ASplitParameterTrainsOverThreeShardsAndReplicasMatchTheirBlocks) {
  // The owners reach each other as peers: every shard knows all addresses before it starts.
  std::vector<std::string> addresses;
  for (int port : testing::ReservePorts(3)) addresses.push_back(absl::StrCat("127.0.0.1:", port));
  std::vector<std::unique_ptr<DionServer>> servers;
  for (int s = 0; s < 3; ++s) {
    ServerOptions options = testing::TestServerOptions();
    options.listen = addresses[s];
    options.peer.addresses = addresses;
    options.peer.timeout = absl::Seconds(5);
    options.shard.store.shard_index = s;
    options.shard.store.num_shards = 3;
    options.shard.batcher.target_workers = 2;
    options.shard.batcher.deadline = absl::Milliseconds(20);
    options.shard.batcher.staleness.max_staleness = 64;
    absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    servers.push_back(*std::move(server));
  }
  ModelTable table = StudentTable();
  ASSERT_EQ(table.parameters[2].spec.name, "fc2.weight");
  table.parameters[2].spec.split_owners = 3;
  TeacherOptions teacher;
  const Dataset train = MakeTeacherDataset(teacher, 4096, 11).value();
  const auto partitions = PartitionAll(train.labels, train.num_classes, 2, {}).value();
  std::vector<std::unique_ptr<Client>> clients;
  for (int w = 0; w < 2; ++w) {
    ClientOptions options;
    options.shard_addresses = addresses;
    options.worker_id = absl::StrCat("worker-", w);
    options.seed = 1 + w;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(table, options);
    ASSERT_TRUE(client.ok()) << client.status();
    clients.push_back(*std::move(client));
  }
  const std::vector<absl::StatusOr<TrainerProgress>> results = TrainTwoWorkers([&](int w) {
    TrainerOptions trainer;
    trainer.epochs = 1000;
    trainer.max_steps = 60;
    trainer.batch_size = 32;
    trainer.seed = 10 + w;
    trainer.flush_timeout = absl::Seconds(20);
    return Train(*clients[w], Subset(train, partitions[w]), nullptr, trainer, nullptr, nullptr,
                 nullptr);
  });
  for (int w = 0; w < 2; ++w) {
    ASSERT_TRUE(results[w].ok()) << results[w].status();
    EXPECT_EQ(results[w]->client.refused, 0);
  }
  // Everything was acknowledged; the last batches close within their 20 ms deadline. A fresh
  // client pulls every block (Connect verifies each block's checksum); the workers' replicas
  // must reach the same versions with the same bits.
  const int n = static_cast<int>(table.parameters.size());
  bool matched = false;
  for (int attempt = 0; attempt < 20 && !matched; ++attempt) {
    absl::SleepFor(absl::Milliseconds(100));
    ClientOptions options;
    options.shard_addresses = addresses;
    options.worker_id = "checker";
    absl::StatusOr<std::unique_ptr<Client>> fresh = Client::Connect(table, options);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    std::vector<int64_t> before(n);
    for (int i = 0; i < n; ++i) before[i] = (*fresh)->version(i) - 1;
    std::vector<Matrix> pulled, replica;
    (*fresh)->CopyWeights(&pulled);
    matched = true;
    for (auto& client : clients) {
      ASSERT_TRUE(client->WaitForVersionsAbove(before, absl::Seconds(10)).ok());
      client->CopyWeights(&replica);
      for (int i = 0; i < n && matched; ++i) {
        // A step after the pull moves a replica past it: try again once the shards are idle.
        matched = client->version(i) == (*fresh)->version(i) &&
                  WeightsChecksum(replica[i]) == WeightsChecksum(pulled[i]);
      }
    }
    EXPECT_GT((*fresh)->version(2), 0) << "the split parameter never stepped";
  }
  EXPECT_TRUE(matched) << "the replicas never matched the shards' blocks";
  for (auto& client : clients) client->Close();
  for (auto& server : servers) EXPECT_TRUE(server->Shutdown().ok());
}

TEST(WorkerTraining, RefusesBadOptionsBeforeAnyStep) {
  OneShardOneWorker run;
  ASSERT_TRUE(StartOneShardOneWorker(512, &run, /*track_last_step=*/true).ok());
  const Dataset train = MakeTeacherDataset(TeacherOptions{}, 256, 11).value();
  for (double bad : {-1.0, std::nan(""), std::numeric_limits<double>::infinity(), 1e300,
                     kMaxLookahead * 1.01}) {
    TrainerOptions trainer;
    trainer.lookahead = bad;
    const absl::StatusOr<TrainerProgress> r =
        Train(*run.client, train, nullptr, trainer, nullptr, nullptr, nullptr);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(r.status().message(), "lookahead")) << r.status();
  }
  for (const auto& [target, interval] :
       {std::pair{1.5, absl::Milliseconds(1)}, {-0.5, absl::Milliseconds(1)},
        {std::nan(""), absl::Milliseconds(1)}, {0.5, absl::Milliseconds(-1)}}) {
    TrainerOptions trainer;
    trainer.target_accuracy = target;
    trainer.snapshot_interval = interval;
    const absl::StatusOr<TrainerProgress> r =
        Train(*run.client, train, nullptr, trainer, nullptr, nullptr, nullptr);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << target;
    EXPECT_TRUE(absl::StrContains(r.status().message(), "target_accuracy")) << r.status();
  }
  EXPECT_EQ(run.client->stats().pushes, 0);  // refused before any step

  // A client that does not keep its replicas' last step cannot extrapolate: refused, not ignored.
  OneShardOneWorker untracked;
  ASSERT_TRUE(StartOneShardOneWorker(512, &untracked).ok());
  TrainerOptions trainer;
  trainer.lookahead = 4;
  const absl::StatusOr<TrainerProgress> r =
      Train(*untracked.client, train, nullptr, trainer, nullptr, nullptr, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "track_last_step")) << r.status();
}

// Train takes each local step's gradient at the replica extrapolated `lookahead` versions along
// its last step. Checked through the step's training loss against the double-precision MLP at
// X + k (X1 - X), built here from two snapshots of the replica; the loss at X itself must differ
// by far more than the tolerance, so the test tells the two points apart.
TEST(WorkerTraining, LocalStepsTakeTheirGradientAtTheExtrapolatedWeights) {
  constexpr double kLookahead = 4;
  OneShardOneWorker run;
  ASSERT_TRUE(StartOneShardOneWorker(16, &run, /*track_last_step=*/true).ok());
  const Dataset train = MakeTeacherDataset(TeacherOptions{}, 256, 11).value();
  TrainerOptions warmup;  // a few versions, so that the replica has a last step
  warmup.max_steps = 6;
  warmup.batch_size = 32;
  // Every accepted push closes a batch (TestServerOptions): wait until the last version is in.
  // A subscription that fell behind (a loaded machine) catches up with a full value, after
  // which the replica knows no last step; a few more versions then give it one again.
  const auto views = [](const std::vector<MatrixD>& w) {
    std::vector<const MatrixD*> v;
    for (const MatrixD& m : w) v.push_back(&m);
    return v;
  };
  const MatrixD features = train.features.cast<double>();
  MlpWorkspaceD workspace;
  // The last step must move the loss measurably, or the test could not tell the two points
  // apart; late steps of a converging run can be small, so warm up again until one does.
  double loss_ahead = 0, loss_here = 0;
  bool distinguishable = false;
  for (int attempt = 0; attempt < 8 && !distinguishable; ++attempt) {
    ASSERT_TRUE(Train(*run.client, train, nullptr, warmup, nullptr, nullptr, nullptr).ok());
    std::vector<Matrix> X, X1;
    int64_t versions = -1;
    for (int quiet = 0, polls = 0; quiet < 5 && polls < 200; ++polls) {
      const int64_t now = run.client->CopyWeights(&X);
      quiet = now == versions ? quiet + 1 : 0;
      versions = now;
      absl::SleepFor(absl::Milliseconds(20));
    }
    const int64_t version = run.client->CopyWeights(&X);
    const int64_t version1 = run.client->CopyWeights(&X1, 1);  // X + (X - X_prev)
    if (version != version1) continue;  // a version arrived between the two copies
    std::vector<MatrixD> ahead, here;
    for (size_t i = 0; i < X.size(); ++i) {
      here.push_back(X[i].cast<double>());
      ahead.push_back(here[i] + kLookahead * (X1[i].cast<double>() - here[i]));
    }
    loss_ahead =
        LossAndGradients(views(ahead), features, train.labels, nullptr, &workspace).value();
    loss_here =
        LossAndGradients(views(here), features, train.labels, nullptr, &workspace).value();
    distinguishable = std::abs(loss_ahead - loss_here) > 1e-3 * loss_ahead;
  }
  ASSERT_TRUE(distinguishable)
      << "no copy whose last step moves the loss by 1e-3 after 8 rounds of warm-up";

  TrainerOptions one;  // one step over the whole set: the loss does not depend on the shuffle
  one.max_steps = 1;
  one.batch_size = static_cast<int>(train.size());
  one.lookahead = kLookahead;
  one.progress_interval = absl::Hours(1);
  const absl::StatusOr<TrainerProgress> r =
      Train(*run.client, train, nullptr, one, nullptr, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  // float32 forward pass against double: 1e-5 relative.
  EXPECT_NEAR(r->train_loss, loss_ahead, 1e-5 * loss_ahead);
}

// The accuracy curve and the time to the target accuracy of `dion local` are read from the
// worker's progress lines, so every periodic evaluation must reach on_progress, however long the
// progress interval: otherwise evaluations between two lines are lost and the time to target is
// rounded up to the progress interval.
TEST(WorkerTraining, EveryPeriodicEvaluationIsReportedAtOnce) {
  constexpr int kSteps = 8;
  OneShardOneWorker run;
  ASSERT_TRUE(StartOneShardOneWorker(16, &run).ok());
  TeacherOptions teacher;
  const Dataset train = MakeTeacherDataset(teacher, 1024, 11).value();
  const Dataset test = MakeTeacherDataset(teacher, 256, 12).value();

  std::vector<double> evaluated_at;  // evaluation_elapsed_seconds of each non-final report
  int reports_without_evaluation = 0;
  TrainerOptions trainer;
  trainer.epochs = 1000;
  trainer.max_steps = kSteps;
  trainer.batch_size = 16;
  trainer.evaluate = true;
  trainer.eval_interval = absl::Nanoseconds(1);  // due after every step
  trainer.progress_interval = absl::Hours(1);    // never due during the run
  const absl::StatusOr<TrainerProgress> result = Train(
      *run.client, train, &test, trainer, nullptr,
      [&](const TrainerProgress& p) {
        if (p.final) return;
        if (!p.evaluation.has_value()) {
          ++reports_without_evaluation;
          return;
        }
        evaluated_at.push_back(p.evaluation_elapsed_seconds);
      },
      nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->steps, kSteps);
  EXPECT_EQ(reports_without_evaluation, 0);
  ASSERT_EQ(evaluated_at.size(), static_cast<size_t>(kSteps));
  for (size_t i = 1; i < evaluated_at.size(); ++i) {
    EXPECT_GT(evaluated_at[i], evaluated_at[i - 1]) << "report " << i << " repeats an evaluation";
  }
}

// With a target accuracy and a snapshot interval, the first evaluation to reach the target is
// preceded by evaluations of the weight copies taken since the previous evaluation, each at the
// time of its copy, up to the first that reaches the target. Checked against the replica as the
// test itself copies it at every progress report: the worker is synchronous and alone (every push
// closes a batch and the step waits for it), so the replica cannot change between a step's
// snapshot and the report that follows it at the same instant. Only the final evaluation runs
// (eval_interval is an hour), so the copies cover the whole run whatever the machine's speed;
// there are more steps than kMaxSnapshots, so the pool is thinned on the way.
TEST(WorkerTraining, TheFirstEvaluationAtTheTargetIsLocatedAmongTheSnapshots) {
  constexpr int kSteps = 100;
  constexpr double kTarget = 0.3;  // chance is 0.1; this run ends at 0.40 (deterministic)
  static_assert(kSteps > kMaxSnapshots);
  OneShardOneWorker run;
  ASSERT_TRUE(StartOneShardOneWorker(16, &run).ok());
  TeacherOptions teacher;
  const Dataset train = MakeTeacherDataset(teacher, 4096, 11).value();
  const Dataset test = MakeTeacherDataset(teacher, 512, 12).value();

  struct Report {
    bool final = false;
    std::optional<double> evaluated_at;
    Evaluation evaluation;
  };
  std::vector<Report> reports;
  std::map<double, Evaluation> replica_at;  // progress report time -> the replica's evaluation
  std::vector<Matrix> weights;
  double last_evaluated_at = -1;
  TrainerOptions trainer;
  trainer.epochs = 1000;
  trainer.max_steps = kSteps;
  trainer.batch_size = 16;
  trainer.synchronous = true;
  trainer.evaluate = true;
  trainer.eval_interval = absl::Hours(1);            // only the final evaluation
  trainer.progress_interval = absl::Nanoseconds(1);  // after every step
  trainer.snapshot_interval = absl::Nanoseconds(1);  // after every step
  trainer.target_accuracy = kTarget;
  const absl::StatusOr<TrainerProgress> result = Train(
      *run.client, train, &test, trainer, nullptr,
      [&](const TrainerProgress& p) {
        Report r{p.final, std::nullopt, {}};
        if (p.evaluation.has_value() && p.evaluation_elapsed_seconds != last_evaluated_at) {
          last_evaluated_at = p.evaluation_elapsed_seconds;
          r.evaluated_at = p.evaluation_elapsed_seconds;
          r.evaluation = *p.evaluation;
        }
        if (!r.evaluated_at.has_value() && !p.final) {
          run.client->CopyWeights(&weights);
          replica_at[p.elapsed_seconds] = Evaluate(ParameterViews(weights), test, 1000).value();
        }
        reports.push_back(r);
      },
      nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(replica_at.size(), static_cast<size_t>(kSteps));
  ASSERT_GE(result->evaluation->accuracy, kTarget) << "the run did not reach the target";
  ASSERT_LT(replica_at.begin()->second.accuracy, kTarget) << "the first step already reached it";

  // The reports: one per step, then the snapshots' evaluations, then the final one.
  ASSERT_TRUE(reports.back().final && reports.back().evaluated_at.has_value());
  std::vector<Report> snapshots;
  for (size_t i = kSteps; i + 1 < reports.size(); ++i) snapshots.push_back(reports[i]);
  ASSERT_FALSE(snapshots.empty()) << "no snapshot was evaluated";
  double previous_time = -1;
  for (size_t i = 0; i < snapshots.size(); ++i) {
    ASSERT_TRUE(snapshots[i].evaluated_at.has_value()) << "snapshot report " << i;
    const double at = *snapshots[i].evaluated_at;
    EXPECT_GT(at, previous_time) << "snapshot report " << i;
    previous_time = at;
    const auto replica = replica_at.find(at);
    ASSERT_NE(replica, replica_at.end()) << "snapshot " << i << " at " << at << " is no step's";
    EXPECT_EQ(snapshots[i].evaluation.accuracy, replica->second.accuracy) << "snapshot " << i;
    EXPECT_EQ(snapshots[i].evaluation.loss, replica->second.loss) << "snapshot " << i;
    if (i + 1 < snapshots.size()) {
      EXPECT_LT(snapshots[i].evaluation.accuracy, kTarget) << "the search went past snapshot " << i;
    }
  }
  EXPECT_GT(*reports.back().evaluated_at, previous_time);
  // This run crosses the target (0.307 at step 61 of 100), so the search ends at a copy that
  // reaches it, close to the first step that did: 100 copies of one per step were thinned twice,
  // so the kept ones are at most 4 steps apart.
  EXPECT_GE(snapshots.back().evaluation.accuracy, kTarget);
  int step = 0, first_at_target = -1, found = -1;
  for (const auto& [at, evaluation] : replica_at) {
    if (first_at_target < 0 && evaluation.accuracy >= kTarget) first_at_target = step;
    if (at == *snapshots.back().evaluated_at) found = step;
    ++step;
  }
  EXPECT_GE(found, first_at_target);
  EXPECT_LE(found - first_at_target, 4) << "first step at the target: " << first_at_target;
}

}  // namespace
}  // namespace dion
