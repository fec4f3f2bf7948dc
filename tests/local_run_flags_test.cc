// How `dion local` options become the children's command lines (worker/local/local_run_flags.h),
// option validation, and where `dion` finds dion-server and dion-worker (worker/local/local_run.h).
#include "worker/local/local_run_flags.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "worker/local/local_run.h"

namespace dion {
namespace {

bool Has(const std::vector<std::string>& flags, const std::string& flag) {
  return std::find(flags.begin(), flags.end(), flag) != flags.end();
}

LocalRunOptions Options() {
  LocalRunOptions o;
  o.server_binary = "/bin/true";
  o.worker_binary = "/bin/true";
  return o;
}

TEST(ShardFlagsTest, PassesAddressCheckpointsStalenessAndBatching) {
  LocalRunOptions o = Options();
  o.shards = 3;
  o.base_port = 7000;
  o.metrics_base_port = 9000;
  o.staleness_policy = "exp";
  o.max_staleness = 5;
  o.target_samples = 256;
  o.target_workers = 2;
  o.batch_deadline = absl::Milliseconds(20);
  o.adaptive_batching = true;
  o.server_flags = {"--compute_threads=1"};
  const std::vector<std::string> f = ShardFlags(o, 2, "/r/shard-2/checkpoints");
  for (const char* flag :
       {"--listen=127.0.0.1:7002", "--metrics_listen=127.0.0.1:9002", "--shard_index=2",
        "--num_shards=3", "--checkpoint_dir=/r/shard-2/checkpoints", "--staleness_policy=exp",
        "--max_staleness=5", "--target_samples=256", "--target_workers=2", "--batch_deadline=20ms",
        "--adaptive_batching=true", "--wal_sync=interval:100ms"}) {
    EXPECT_TRUE(Has(f, flag)) << flag;
  }
  EXPECT_EQ(f.back(), "--compute_threads=1");  // pass-through last: it overrides

  o.base_port = 0;
  o.metrics_base_port = 0;
  const std::vector<std::string> free_ports = ShardFlags(o, 0, "/c");
  EXPECT_TRUE(Has(free_ports, "--listen=127.0.0.1:0"));
  EXPECT_TRUE(Has(free_ports, "--metrics_listen="));  // disabled
}

TEST(ShardFlagsTest, PassesTheLrCooldownOnlyWithAHorizon) {
  LocalRunOptions o = Options();
  o.lr_cooldown = 0.25;
  o.lr_final_scale = 0.05;
  o.lr_schedule_samples = 0;  // not resolved: no schedule flags
  const std::vector<std::string> unresolved = ShardFlags(o, 0, "/c");
  EXPECT_FALSE(std::any_of(unresolved.begin(), unresolved.end(),
                           [](const std::string& f) { return f.rfind("--lr_", 0) == 0; }));
  o.lr_schedule_samples = 720000;
  const std::vector<std::string> f = ShardFlags(o, 0, "/c");
  for (const char* flag : {"--lr_schedule_samples=720000", "--lr_cooldown_fraction=0.25",
                           "--lr_final_scale=0.05"}) {
    EXPECT_TRUE(Has(f, flag)) << flag;
  }
  o.lr_cooldown = 0;  // disabled: constant learning rates
  EXPECT_FALSE(Has(ShardFlags(o, 0, "/c"), "--lr_schedule_samples=720000"));
}

// A labels-only IDX file of `count` samples (magic 0x00000801, big-endian count, labels).
void WriteLabels(const std::string& path, uint32_t count) {
  std::ofstream out(path, std::ios::binary);
  const unsigned char header[8] = {0, 0, 8, 1, static_cast<unsigned char>(count >> 24),
                                   static_cast<unsigned char>(count >> 16),
                                   static_cast<unsigned char>(count >> 8),
                                   static_cast<unsigned char>(count)};
  out.write(reinterpret_cast<const char*>(header), 8);
  for (uint32_t i = 0; i < count; ++i) out.put(static_cast<char>(i % 10));
}

TEST(ScheduleSamplesTest, IsEpochsTimesTheTrainingSetSize) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/schedule_samples_", getpid());
  std::filesystem::create_directories(dir);
  WriteLabels(dir + "/train-labels-idx1-ubyte", 1234);
  LocalRunOptions o = Options();
  o.data_dir = dir;
  o.epochs = 3;
  EXPECT_EQ(ScheduleSamples(o).value_or(-1), 3 * 1234);
  o.lr_schedule_samples = 99;  // given: used as is
  EXPECT_EQ(ScheduleSamples(o).value_or(-1), 99);
  o.lr_schedule_samples = 0;
  o.lr_cooldown = 0;  // no cooldown: no horizon needed, nothing read
  o.data_dir = dir + "/missing";
  EXPECT_EQ(ScheduleSamples(o).value_or(-1), 0);
  o.lr_cooldown = 0.2;
  EXPECT_EQ(ScheduleSamples(o).status().code(), absl::StatusCode::kNotFound);
  o.data_dir = dir;
  {
    std::ofstream images(dir + "/train-labels-idx1-ubyte", std::ios::binary);  // wrong magic
    images.write("\x00\x00\x08\x03\x00\x00\x00\x01", 8);
  }
  EXPECT_EQ(ScheduleSamples(o).status().code(), absl::StatusCode::kInvalidArgument);
  {
    std::ofstream truncated(dir + "/train-labels-idx1-ubyte", std::ios::binary);
    truncated.write("\x00\x00\x08\x01", 4);
  }
  EXPECT_EQ(ScheduleSamples(o).status().code(), absl::StatusCode::kDataLoss);

  o.dataset = "synthetic";
  EXPECT_EQ(ScheduleSamples(o).value_or(-1), 3 * 32768);  // dion-worker's default
  o.worker_flags = {"--synthetic_train_samples=100", "--synthetic_train_samples=500"};
  EXPECT_EQ(ScheduleSamples(o).value_or(-1), 3 * 500);  // the last one wins
  o.worker_flags = {"--synthetic_train_samples=100", "--epochs=7"};  // the workers' epochs win
  EXPECT_EQ(ScheduleSamples(o).value_or(-1), 7 * 100);
  for (const char* bad : {"--synthetic_train_samples=many", "--synthetic_train_samples=0",
                          "--epochs=-2"}) {
    o.worker_flags = {bad};
    EXPECT_EQ(ScheduleSamples(o).status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(ScheduleSamples(o).status().message(), bad)) << bad;
  }
  std::filesystem::remove_all(dir);
}

TEST(LocalRunOptionsTest, LrCooldownFlagsAreValidated) {
  LocalRunOptions o = Options();
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  o.lr_cooldown = 1.5;
  EXPECT_EQ(ValidateLocalRunOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o.lr_cooldown = 0.2;
  o.lr_final_scale = -0.1;
  EXPECT_EQ(ValidateLocalRunOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o.lr_final_scale = 0.1;
  o.lr_schedule_samples = -5;
  EXPECT_EQ(ValidateLocalRunOptions(o).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ShardFlagsTest, SyncMakesEveryBatchWaitForAllWorkers) {
  LocalRunOptions o = Options();
  o.workers = 8;
  o.sync = true;
  o.target_samples = 512;  // ignored under sync
  const std::vector<std::string> f = ShardFlags(o, 0, "/c");
  for (const char* flag : {"--target_workers=8", "--target_samples=0", "--batch_deadline=10s",
                           "--adaptive_batching=false"}) {
    EXPECT_TRUE(Has(f, flag)) << flag;
  }
  EXPECT_FALSE(Has(f, "--target_samples=512"));
  EXPECT_TRUE(Has(WorkerFlags(o, 0, {"a:1"}), "--max_in_flight=1"));
  EXPECT_FALSE(Has(WorkerFlags(Options(), 0, {"a:1"}), "--max_in_flight=1"));
  EXPECT_TRUE(Has(WorkerFlags(o, 0, {"a:1"}), "--synchronous"));
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  // Unequal partitions too: under --synchronous every worker's epoch has the same number of
  // samples (SamplesPerEpoch, worker/train/epoch_order.h), so no worker runs out early.
  o.partition = "dirichlet";
  o.dirichlet_alpha = 0.1;
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  const std::vector<std::string> w = WorkerFlags(o, 3, {"a:1"});
  for (const char* flag : {"--synchronous", "--partition=dirichlet", "--dirichlet_alpha=0.1"}) {
    EXPECT_TRUE(Has(w, flag)) << flag;
  }
  EXPECT_FALSE(Has(WorkerFlags(Options(), 0, {"a:1"}), "--synchronous"));
}

TEST(ChildFlagsTest, DifferentialPrivacyGoesToWorkersAndShards) {
  LocalRunOptions o = Options();
  EXPECT_FALSE(absl::StrContains(absl::StrJoin(ShardFlags(o, 0, "/c"), " "), "--dp_"));
  EXPECT_FALSE(absl::StrContains(absl::StrJoin(WorkerFlags(o, 0, {"a:1"}), " "), "--dp_"));
  o.dp_clip = 0.5;  // clipping alone: the workers clip, the shards add nothing
  EXPECT_TRUE(Has(WorkerFlags(o, 1, {"a:1"}), "--dp_clip=0.5"));
  EXPECT_FALSE(absl::StrContains(absl::StrJoin(ShardFlags(o, 0, "/c"), " "), "--dp_"));
  o.dp_noise_multiplier = 1.5;
  EXPECT_TRUE(Has(ShardFlags(o, 1, "/c"), "--dp_noise_multiplier=1.5"));
  EXPECT_TRUE(Has(ShardFlags(o, 1, "/c"), "--dp_clip=0.5"));
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  o.dp_clip = 0;  // the noise is scaled by the clip: noise without one is refused
  EXPECT_NE(ValidateLocalRunOptions(o).message().find("dp_clip"), std::string::npos);
  o.dp_clip = -1;
  o.dp_noise_multiplier = 0;
  EXPECT_NE(ValidateLocalRunOptions(o).message().find("dp_clip"), std::string::npos);
}

TEST(WorkerFlagsTest, PassModelDataSeedsAndPassThroughLast) {
  LocalRunOptions o = Options();
  o.workers = 4;
  o.shards = 2;
  o.seed = 7;
  o.epochs = 3;  // values other than the workers' defaults, which are not passed
  o.batch_size = 32;
  o.lr = 0.05;
  o.adamw_lr = 0.005;
  o.lookahead = 2.5;
  o.target_accuracy = 0.85;
  o.snapshot_interval = absl::Milliseconds(250);
  o.compression_rank_fraction = 0.125;
  o.metrics_base_port = 9000;
  o.worker_flags = {"--hidden_layers=64", "--momentum=0.9"};
  const std::vector<std::string> f = WorkerFlags(o, 3, {"127.0.0.1:1", "127.0.0.1:2"});
  for (const std::string& flag :
       {std::string("--shards=127.0.0.1:1,127.0.0.1:2"), std::string("--worker_index=3"),
        std::string("--num_workers=4"), std::string("--model_seed=7"), std::string("--seed=7003"),
        absl::StrCat("--epochs=", o.epochs), absl::StrCat("--batch_size=", o.batch_size),
        absl::StrCat("--lr=", o.lr), absl::StrCat("--adamw_lr=", o.adamw_lr),
        std::string("--metrics_listen=127.0.0.1:9005"), std::string("--eval_interval=2s"),
        std::string("--lookahead=2.5"), std::string("--target_accuracy=0.85"),
        std::string("--snapshot_interval=250ms"),
        std::string("--compression_rank_fraction=0.125")}) {
    EXPECT_TRUE(Has(f, flag)) << flag;
  }
  EXPECT_FALSE(absl::StrContains(absl::StrJoin(f, " "), "--start_file"));
  const std::vector<std::string> started = WorkerFlags(o, 3, {"127.0.0.1:1"}, "/run/logs/.start");
  EXPECT_TRUE(Has(started, "--start_file=/run/logs/.start"));
  EXPECT_EQ(started.back(), "--momentum=0.9");  // the pass-through still comes last
  ASSERT_GE(f.size(), 2u);
  EXPECT_EQ(f[f.size() - 2], "--hidden_layers=64");
  EXPECT_EQ(f.back(), "--momentum=0.9");

  // The evaluator registers the same model: the same model flags and pass-through.
  const std::vector<std::string> e = EvaluatorFlags(o, {"127.0.0.1:1", "127.0.0.1:2"});
  EXPECT_TRUE(Has(e, "--mode=evaluate"));
  for (const std::string& flag :
       {std::string("--shards=127.0.0.1:1,127.0.0.1:2"), std::string("--model_seed=7"),
        absl::StrCat("--lr=", o.lr), std::string("--hidden_layers=64")}) {
    EXPECT_TRUE(Has(e, flag)) << flag;
  }
  EXPECT_FALSE(Has(e, "--worker_index=3"));
}

// The name of each "--name=value" or "--name" in `flags`.
std::vector<std::string> FlagNames(const std::vector<std::string>& flags) {
  std::vector<std::string> names;
  for (const std::string& flag : flags) names.push_back(flag.substr(2, flag.find('=') - 2));
  return names;
}

// With no option changed the children get the topology and what the report reads, and keep
// their own defaults (common/training_defaults.h) for everything else.
TEST(ChildFlagsTest, DefaultOptionsLeaveTheTrainingSettingsToTheChildren) {
  LocalRunOptions o = Options();
  o.lr_schedule_samples = 720000;
  EXPECT_EQ(FlagNames(ShardFlags(o, 1, "/c")),
            (std::vector<std::string>{"listen", "metrics_listen", "shard_index", "num_shards",
                                      "checkpoint_dir", "wal_sync", "lr_schedule_samples"}));
  EXPECT_EQ(FlagNames(WorkerFlags(o, 2, {"a:1", "b:2"}, "/s")),
            (std::vector<std::string>{"shards", "worker_index", "num_workers", "eval_interval",
                                      "target_accuracy", "snapshot_interval",
                                      "progress_interval", "start_file"}));
  EXPECT_EQ(FlagNames(EvaluatorFlags(o, {"a:1"})),
            (std::vector<std::string>{"shards", "mode"}));

  // Each changed option reaches the children, whatever it is changed to.
  o.dataset = "synthetic";
  o.data_dir = "/data";
  o.partition = "dirichlet";
  o.dirichlet_alpha = 0.1;
  o.rank_fraction = 0.5;
  o.compression_rank_fraction = 0;
  o.lookahead = 0;
  o.split_threshold = 0;
  o.lr_cooldown = 0.5;
  o.lr_final_scale = 0;
  o.target_samples = 0;
  o.batch_deadline = absl::InfiniteDuration();
  o.staleness_policy = "none";
  o.max_staleness = 0;
  const std::vector<std::string> worker = WorkerFlags(o, 0, {"a:1"});
  for (const char* flag : {"--dataset=synthetic", "--data_dir=/data", "--partition=dirichlet",
                           "--dirichlet_alpha=0.1", "--rank_fraction=0.5",
                           "--compression_rank_fraction=0", "--lookahead=0",
                           "--split_threshold=0"}) {
    EXPECT_TRUE(Has(worker, flag)) << flag;
  }
  EXPECT_TRUE(Has(EvaluatorFlags(o, {"a:1"}), "--split_threshold=0"));  // the same table
  const std::vector<std::string> shard = ShardFlags(o, 0, "/c");
  for (const char* flag : {"--lr_cooldown_fraction=0.5", "--lr_final_scale=0",
                           "--target_samples=0", "--batch_deadline=inf",
                           "--staleness_policy=none", "--max_staleness=0"}) {
    EXPECT_TRUE(Has(shard, flag)) << flag;
  }
}

TEST(CommandLinesTest, ListsEveryChildWithItsBinaryAndFlags) {
  LocalRunOptions o = Options();
  o.server_binary = "/opt/bin/dion-server";
  o.worker_binary = "/opt/bin/dion-worker";
  o.shards = 2;
  o.workers = 3;
  o.base_port = 7000;
  o.run_dir = "/runs/r";
  const std::string lines = CommandLines(o);
  EXPECT_TRUE(absl::StrContains(
      lines, "shard 1: /opt/bin/dion-server --listen=127.0.0.1:7001 --metrics_listen= "
             "--shard_index=1 --num_shards=2 --checkpoint_dir=/runs/r/shard-1/checkpoints "
             "--wal_sync=interval:100ms\n"))
      << lines;
  EXPECT_TRUE(absl::StrContains(lines, "worker 2: /opt/bin/dion-worker "
                                       "--shards=127.0.0.1:7000,127.0.0.1:7001 --worker_index=2 "))
      << lines;
  EXPECT_TRUE(absl::StrContains(lines, "--start_file=/runs/r/logs/.start")) << lines;
  EXPECT_TRUE(absl::StrContains(
      lines, "evaluator: /opt/bin/dion-worker --shards=127.0.0.1:7000,127.0.0.1:7001 "
             "--mode=evaluate\n"))
      << lines;
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 2 + 3 + 1) << lines;
  o.base_port = 0;  // ports picked at start
  o.run_dir.clear();
  EXPECT_TRUE(absl::StrContains(CommandLines(o), "--shards=127.0.0.1:<port-of-shard-0>,"
                                                 "127.0.0.1:<port-of-shard-1> "));
  EXPECT_TRUE(absl::StrContains(CommandLines(o), "--checkpoint_dir=<run_dir>/shard-0/"));
}

TEST(ValidateLocalRunOptionsTest, NamesTheFirstBadOption) {
  EXPECT_TRUE(ValidateLocalRunOptions(Options()).ok());
  const auto message = [](LocalRunOptions o) {
    return std::string(ValidateLocalRunOptions(o).message());
  };
  LocalRunOptions o = Options();
  o.workers = 0;
  EXPECT_NE(message(o).find("workers"), std::string::npos);
  o = Options();
  o.rank_fraction = 1.5;
  EXPECT_NE(message(o).find("rank_fraction"), std::string::npos);
  o = Options();
  o.compression_rank_fraction = -0.5;
  EXPECT_NE(message(o).find("--compression_rank_fraction=-0.5"), std::string::npos) << message(o);
  o = Options();
  o.dataset = "cifar";
  EXPECT_NE(message(o).find("dataset"), std::string::npos);
  o = Options();
  o.base_port = 65535;
  o.shards = 2;
  EXPECT_NE(message(o).find("base_port"), std::string::npos);
  // The message carries the value given, not just the flag.
  o = Options();
  o.workers = 0;
  EXPECT_NE(message(o).find("--workers=0: expected >= 1"), std::string::npos) << message(o);
  o = Options();
  o.target_workers = 5;  // > workers (4)
  EXPECT_NE(message(o).find("--target_workers=5"), std::string::npos) << message(o);
  o = Options();
  o.stop_grace = absl::ZeroDuration();  // would SIGKILL the shards before their checkpoint
  EXPECT_NE(message(o).find("--stop_grace=0"), std::string::npos) << message(o);
  o = Options();
  o.partition = "dirichlet";
  o.dirichlet_alpha = 0;
  EXPECT_NE(message(o).find("--dirichlet_alpha=0"), std::string::npos) << message(o);
  o = Options();
  o.lookahead = -1;
  EXPECT_NE(message(o).find("--lookahead=-1"), std::string::npos) << message(o);
  o.lookahead = std::nan("");
  EXPECT_NE(message(o).find("--lookahead=nan"), std::string::npos) << message(o);
  o.lookahead = 1e300;  // finite, but not as a float
  EXPECT_NE(message(o).find("expected a number of versions in [0, 100]"), std::string::npos)
      << message(o);
  o.lookahead = 100;
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  o.lookahead = 0;  // off
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  o = Options();
  o.snapshot_interval = absl::Milliseconds(-1);
  EXPECT_NE(message(o).find("--snapshot_interval=-1ms"), std::string::npos) << message(o);
  o.snapshot_interval = absl::ZeroDuration();  // off: the evaluations' grain
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  // The run id of the coordinated checkpoint at the end: refused before the run, not after.
  o = Options();
  o.run_id = "my run";
  EXPECT_NE(message(o).find("--run_id=my run"), std::string::npos) << message(o);
  o.run_id = std::string(129, 'r');
  EXPECT_NE(message(o).find("1-128 bytes"), std::string::npos) << message(o);
  o.run_id = std::string(128, 'r');
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  o.run_id = "exp-3.b_1";
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
  for (const char* bad : {"OPENBLAS_CORETYPE", "=SandyBridge", ""}) {
    o = Options();
    o.shard_env = {"A=1", bad};
    EXPECT_NE(message(o).find(absl::StrCat("--shard_env=", bad, ": expected NAME=VALUE")),
              std::string::npos)
        << message(o);
  }
  o.shard_env = {"OPENBLAS_CORETYPE=SandyBridge", "EMPTY="};
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
}

// --worker_command: its words come before the flags of every worker and of the evaluator, and
// the shards keep dion-server.
TEST(CommandLinesTest, WorkerCommandStartsWorkersAndEvaluatorWithItsArguments) {
  LocalRunOptions o = Options();
  o.server_binary = "/opt/bin/dion-server";
  o.worker_binary = "/usr/bin/python3";
  o.worker_args = {"worker/python/examples/fashion_cnn.py"};
  o.base_port = 7000;
  const std::string lines = CommandLines(o);
  EXPECT_TRUE(absl::StrContains(lines, "worker 1: /usr/bin/python3 "
                                       "worker/python/examples/fashion_cnn.py --shards="))
      << lines;
  EXPECT_TRUE(absl::StrContains(lines, "evaluator: /usr/bin/python3 "
                                       "worker/python/examples/fashion_cnn.py --shards="))
      << lines;
  EXPECT_TRUE(absl::StrContains(lines, "shard 0: /opt/bin/dion-server --listen=")) << lines;
  EXPECT_FALSE(absl::StrContains(lines, "dion-server worker/python")) << lines;
}

// --shard_env reaches the shards' command lines, not the workers'.
TEST(CommandLinesTest, ShowsTheShardEnvironmentOnTheShardLinesOnly) {
  LocalRunOptions o = Options();
  o.shard_env = {"OPENBLAS_CORETYPE=SandyBridge"};
  const std::string lines = CommandLines(o);
  EXPECT_TRUE(absl::StrContains(lines, "shard 0: OPENBLAS_CORETYPE=SandyBridge "));
  EXPECT_TRUE(absl::StrContains(lines, "shard 1: OPENBLAS_CORETYPE=SandyBridge "));
  EXPECT_FALSE(absl::StrContains(lines, "worker 0: OPENBLAS_CORETYPE"));
}

// The configuration lists every metrics port once, under the job and label of its process, in
// the port order of ShardFlags / WorkerFlags (shard i: base + i, worker j: base + shards + j).
TEST(PrometheusConfigTest, ScrapesEveryShardAndWorkerPortWithItsLabel) {
  LocalRunOptions o = Options();
  o.shards = 2;
  o.workers = 3;
  o.metrics_base_port = 9100;
  o.alert_rules = "/opt/dion/dion-alerts.yml";
  const std::string config = PrometheusConfig(o);
  std::vector<std::string> lines;
  for (size_t begin = 0, end; begin < config.size(); begin = end + 1) {
    end = config.find('\n', begin);
    if (end == std::string::npos) end = config.size();
    lines.push_back(config.substr(begin, end - begin));
  }
  const auto index_of = [&](const std::string& line) {
    return std::find(lines.begin(), lines.end(), line) - lines.begin();
  };
  const long shards_job = index_of("  - job_name: dion-ps");
  const long workers_job = index_of("  - job_name: dion-worker");
  ASSERT_LT(shards_job, workers_job) << config;
  ASSERT_LT(workers_job, static_cast<long>(lines.size())) << config;
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"9100", "shard: \"0\""},  {"9101", "shard: \"1\""},  {"9102", "worker: \"0\""},
      {"9103", "worker: \"1\""}, {"9104", "worker: \"2\""}};
  for (size_t k = 0; k < expected.size(); ++k) {
    const auto& [port, label] = expected[k];
    const long target = index_of(absl::StrCat("      - targets: [\"127.0.0.1:", port, "\"]"));
    ASSERT_LT(target, static_cast<long>(lines.size())) << port << "\n" << config;
    EXPECT_EQ(lines[target + 1], absl::StrCat("        labels: {", label, "}")) << config;
    EXPECT_EQ(target > workers_job, k >= 2) << port << " under the wrong job\n" << config;
  }
  EXPECT_EQ(std::count_if(lines.begin(), lines.end(),
                          [](const std::string& l) { return l.find("targets:") != l.npos; }),
            5);
  EXPECT_LT(index_of("rule_files:"), shards_job);
  EXPECT_EQ(lines[index_of("rule_files:") + 1], "  - \"/opt/dion/dion-alerts.yml\"");
  EXPECT_LT(index_of("  scrape_interval: 5s"), shards_job);

  o.alert_rules.clear();
  EXPECT_EQ(PrometheusConfig(o).find("rule_files"), std::string::npos);
}

TEST(PrometheusConfigTest, NeedsTheMetricsPorts) {
  LocalRunOptions o = Options();
  o.prometheus_config = "/tmp/prometheus.yml";
  const absl::Status status = ValidateLocalRunOptions(o);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("metrics_base_port"), std::string::npos) << status;
  o.metrics_base_port = 9100;
  EXPECT_TRUE(ValidateLocalRunOptions(o).ok());
}

TEST(FindSiblingBinaryTest, LooksInTheBuildTreeThenNextToDionAndHonoursOverrides) {
  std::string root = absl::StrCat(::testing::TempDir(), "/find_sibling.XXXXXX");
  ASSERT_NE(mkdtemp(root.data()), nullptr);
  namespace fs = std::filesystem;
  root = fs::path(root).lexically_normal().string();  // TempDir() may end in '/'
  fs::create_directories(root + "/build/worker");
  fs::create_directories(root + "/build/server");
  const auto make_executable = [](const std::string& path) {
    std::ofstream(path) << "#!/bin/sh\n";
    chmod(path.c_str(), 0755);
  };
  const std::string self = root + "/build/worker/dion";
  const std::vector<std::string> candidates = {"../server/dion-server", "dion-server"};
  EXPECT_FALSE(FindSiblingBinary(self, "", candidates).ok());  // nothing there yet
  make_executable(root + "/build/worker/dion-server");         // installed layout
  EXPECT_EQ(*FindSiblingBinary(self, "", candidates), root + "/build/worker/dion-server");
  make_executable(root + "/build/server/dion-server");  // build tree: preferred
  EXPECT_EQ(*FindSiblingBinary(self, "", candidates), root + "/build/server/dion-server");
  EXPECT_EQ(*FindSiblingBinary(self, "/bin/true", candidates), "/bin/true");
  absl::StatusOr<std::string> missing = FindSiblingBinary(self, root + "/nope", candidates);
  EXPECT_FALSE(missing.ok());
  std::ofstream(root + "/plain") << "not executable";
  EXPECT_FALSE(FindSiblingBinary(self, root + "/plain", candidates).ok());
  fs::remove_all(root);
}

}  // namespace
}  // namespace dion
