// dion-worker: one training worker of dion-ps (docs/worker.md).
//
//   dion-worker --shards=127.0.0.1:50051,127.0.0.1:50052 --worker_index=0 --num_workers=4
//
// trains the MLP on this worker's partition of Fashion-MNIST against the shards and prints a
// progress line every --progress_interval (key=value pairs, so `dion local` and scripts can
// read them). --mode=evaluate instead pulls the current weights once and prints the test-set
// accuracy. Exit codes: 0 after training (or after SIGTERM / SIGINT: the current step ends,
// accumulated gradients and the residuals are flushed for up to --flush_timeout, and what could
// not be is reported), 1 on a runtime error (a shard gone for good, unreadable data), 2: flags.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/blas.h"
#include "common/cli.h"
#include "common/metrics_server.h"
#include "common/tls_flags.h"
#include "common/training_defaults.h"
#include "worker/client/client.h"
#include "worker/client/push_rank.h"
#include "worker/train/idx_loader.h"
#include "worker/train/mlp.h"
#include "worker/train/epoch_order.h"
#include "worker/train/partition.h"
#include "worker/train/synthetic_task.h"
#include "worker/train/trainer.h"
#include "worker/client/worker_metrics.h"

ABSL_FLAG(std::string, shards, "127.0.0.1:50051",
          "comma-separated host:port of every shard, in shard-index order");
ABSL_FLAG(std::string, mode, "train",
          "train: train on this worker's partition; evaluate: pull the weights once and print "
          "the test-set accuracy");
ABSL_FLAG(int, worker_index, 0, "this worker's index in [0, num_workers): picks its partition");
ABSL_FLAG(int, num_workers, 1, "number of workers the training set is partitioned over");
ABSL_FLAG(std::string, worker_id, "",
          "unique id registered with the shards; default worker-<worker_index>");
ABSL_FLAG(std::string, dataset, dion::defaults::kDataset,
          "fashion-mnist (IDX files in --data_dir) or synthetic (a seeded teacher MLP task)");
ABSL_FLAG(std::string, data_dir, dion::defaults::kDataDir,
          "directory with train-images-idx3-ubyte(.gz) etc. (Debian: dataset-fashion-mnist)");
ABSL_FLAG(int64_t, synthetic_train_samples, dion::defaults::kSyntheticTrainSamples,
          "training samples of the synthetic task");
ABSL_FLAG(int64_t, synthetic_test_samples, 4096, "test samples of the synthetic task");
ABSL_FLAG(int, synthetic_input_dim, 16, "input dimension of the synthetic task");
ABSL_FLAG(std::string, partition, dion::defaults::kPartition,
          "how the training set is split across workers: iid or dirichlet (label skew)");
ABSL_FLAG(double, dirichlet_alpha, dion::defaults::kDirichletAlpha,
          "Dirichlet concentration of --partition=dirichlet; smaller means more skew");
ABSL_FLAG(std::string, hidden_layers, dion::defaults::kHiddenLayers,
          "comma-separated hidden layer widths of the MLP (input and classes come from the data)");
ABSL_FLAG(int, epochs, dion::defaults::kEpochs,
          "passes over this worker's partition; with --synchronous an epoch is training set / "
          "num_workers samples on every worker, whatever its partition's size");
ABSL_FLAG(int, batch_size, dion::defaults::kBatchSize, "samples per local step");
ABSL_FLAG(int64_t, max_steps, 0, "stop after this many local steps; 0: no limit");
ABSL_FLAG(bool, synchronous, false,
          "after each local step, wait until the shards have applied it (the next version of "
          "every parameter) before the next one; with shards that wait for every worker "
          "(target_workers = number of workers) this is synchronous training");
ABSL_FLAG(double, rank_fraction, dion::defaults::kRankFraction,
          "Dion rank of the hidden matrices as a fraction of min(m, n) (server side)");
ABSL_FLAG(dion::PushRankSetting, compression_rank_fraction,
          (dion::PushRankSetting{false, dion::defaults::kCompressionRankFraction}),
          "rank of the pushed factors as a fraction of min(m, n); 0: same as --rank_fraction; "
          "auto: start at the default fraction and halve it (never above the start) while the "
          "pushes use more than half of the uplink, whose rate is read from the kernel's TCP "
          "delivery rate (Linux; docs/worker.md, Adaptive push rank)");
ABSL_FLAG(int64_t, split_threshold, dion::defaults::kSplitThreshold,
          "a 2-D Dion matrix with at least this many elements is split by rows of its tall side "
          "over all the shards, which step it together (docs/worker.md, \"Split parameters\"); "
          "0: never split. Every worker of a run needs the same value");
ABSL_FLAG(double, lr, dion::defaults::kLr, "Dion learning rate of the hidden matrices");
ABSL_FLAG(double, adamw_lr, dion::defaults::kAdamwLr,
          "AdamW learning rate of the biases and the output layer");
ABSL_FLAG(std::string, hidden_optimizer, "dion",
          "optimizer of the hidden weight matrices: dion, adamw (at --adamw_lr), lion (at "
          "--lion_lr) or muon (at --muon_lr), for comparisons");
ABSL_FLAG(std::string, other_optimizer, "adamw",
          "optimizer of the biases and the output layer: adamw (at --adamw_lr) or lion (at "
          "--lion_lr)");
ABSL_FLAG(double, lion_lr, dion::defaults::kLionLr, "Lion learning rate, where Lion is chosen");
ABSL_FLAG(double, muon_lr, dion::defaults::kMuonLr,
          "Muon learning rate of the hidden matrices with --hidden_optimizer=muon");
ABSL_FLAG(double, weight_decay, dion::defaults::kWeightDecay,
          "decoupled weight decay of every parameter");
ABSL_FLAG(double, momentum, dion::defaults::kMomentum, "Dion momentum mu");
ABSL_FLAG(uint64_t, model_seed, dion::defaults::kModelSeed,
          "seed of the initial weights and the partition (same on every worker)");
ABSL_FLAG(uint64_t, seed, 0,
          "seed of this worker's shuffling and push compression; 0: model_seed * 1000 + "
          "worker_index");
ABSL_FLAG(int, max_in_flight, 2,
          "unacknowledged pushes per parameter; beyond that, local steps accumulate");
ABSL_FLAG(double, dp_clip, 0.0,
          "differential privacy (docs/privacy.md): clip each local step's gradient and each "
          "pushed contribution to this Frobenius norm C, per parameter, before compression and "
          "error feedback; the shards add the noise (their --dp_noise_multiplier and the same "
          "--dp_clip). 0: off");
ABSL_FLAG(absl::Duration, rpc_deadline, absl::Seconds(10), "deadline of every unary call");
ABSL_FLAG(absl::Duration, flush_timeout, absl::Seconds(5),
          "after SIGTERM / SIGINT: how long to wait for the last pushes, which carry every "
          "accumulated gradient and each Dion matrix's error-feedback residual whole, to be "
          "acknowledged before exiting (what is still unacknowledged then is lost, and logged); "
          "keep it below the pod's termination grace period");
ABSL_FLAG(absl::Duration, give_up_after, absl::Seconds(60),
          "how long a shard may stay unreachable before the worker exits with an error");
ABSL_FLAG(bool, evaluate, false,
          "evaluate on the test set every --eval_interval and at the end (default: worker 0 "
          "does, the others do not; this flag forces it on)");
ABSL_FLAG(bool, no_evaluate, false, "never evaluate, not even on worker 0");
ABSL_FLAG(double, lookahead, dion::defaults::kLookahead,
          "staleness compensation: compute each gradient at the replica extrapolated this many "
          "versions ahead along its last step (X + k (X - X_prev)), in [0, 100]; 0: at the "
          "replica as it is (docs/algorithm.md)");
ABSL_FLAG(absl::Duration, eval_interval, absl::Seconds(10), "time between evaluations");
ABSL_FLAG(double, target_accuracy, 0,
          "with --snapshot_interval: the test accuracy whose first crossing is located between "
          "two evaluations (a fraction in (0, 1]); 0: none");
ABSL_FLAG(absl::Duration, snapshot_interval, absl::ZeroDuration(),
          "with --target_accuracy: copy the weights this often between evaluations; when an "
          "evaluation first reaches the target, the copies since the previous one are "
          "evaluated too and printed (each at the time of its copy), up to the first that "
          "reaches it. 0: off");
ABSL_FLAG(absl::Duration, progress_interval, absl::Seconds(5),
          "time between progress lines (each periodic evaluation also prints one)");
ABSL_FLAG(std::string, start_file, "",
          "after loading the data, connecting and printing 'training on ...', wait until this "
          "file exists before the first step (dion local starts its workers together this way, "
          "so that none trains while the others still load); empty: start at once");
ABSL_FLAG(absl::Duration, start_timeout, absl::Minutes(5),
          "how long to wait for --start_file before exiting with an error");
ABSL_FLAG(std::string, metrics_listen, "",
          "host:port serving this worker's Prometheus metrics at /metrics; empty: disabled");
ABSL_FLAG(int, blas_threads, 1, "OpenBLAS threads per matrix product");

namespace {

struct Data {
  dion::Dataset train;
  dion::Dataset test;
};

absl::StatusOr<Data> LoadData() {
  const std::string dataset = absl::GetFlag(FLAGS_dataset);
  absl::StatusOr<dion::Dataset> train, test;
  if (dataset == "fashion-mnist") {
    train = dion::LoadFashionMnist(absl::GetFlag(FLAGS_data_dir), /*train=*/true);
    test = dion::LoadFashionMnist(absl::GetFlag(FLAGS_data_dir), /*train=*/false);
  } else if (dataset == "synthetic") {
    dion::TeacherOptions teacher;
    teacher.input_dim = absl::GetFlag(FLAGS_synthetic_input_dim);
    train = dion::MakeTeacherDataset(teacher, absl::GetFlag(FLAGS_synthetic_train_samples), 11);
    test = dion::MakeTeacherDataset(teacher, absl::GetFlag(FLAGS_synthetic_test_samples), 12);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--dataset must be fashion-mnist or synthetic, got '", dataset, "'"));
  }
  if (!train.ok()) return train.status();
  if (!test.ok()) return test.status();
  return Data{*std::move(train), *std::move(test)};
}

// The optimizer named by --<flag> (dion, adamw, lion, muon).
absl::StatusOr<dion::OptimizerKind> OptimizerFlag(absl::string_view flag,
                                                  absl::string_view name) {
  absl::StatusOr<dion::OptimizerKind> kind = dion::ParseOptimizerKind(name);
  if (!kind.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", kind.status().message()));
  }
  return kind;
}

absl::StatusOr<dion::ModelTable> ModelFor(const dion::Dataset& train) {
  dion::MlpOptions mlp;
  mlp.layer_sizes = {static_cast<int>(train.dim())};
  for (absl::string_view width : absl::StrSplit(absl::GetFlag(FLAGS_hidden_layers), ',',
                                                absl::SkipEmpty())) {
    int w = 0;
    if (!absl::SimpleAtoi(width, &w) || w < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--hidden_layers must be positive integers separated by commas, got '",
          absl::GetFlag(FLAGS_hidden_layers), "'"));
    }
    mlp.layer_sizes.push_back(w);
  }
  mlp.layer_sizes.push_back(train.num_classes);
  mlp.dion.lr = absl::GetFlag(FLAGS_lr);
  mlp.dion.mu = absl::GetFlag(FLAGS_momentum);
  mlp.dion.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  mlp.dion.rank_fraction = absl::GetFlag(FLAGS_rank_fraction);
  mlp.adamw.lr = absl::GetFlag(FLAGS_adamw_lr);
  mlp.adamw.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  mlp.lion.lr = absl::GetFlag(FLAGS_lion_lr);
  mlp.lion.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  mlp.muon.lr = absl::GetFlag(FLAGS_muon_lr);
  mlp.muon.mu = absl::GetFlag(FLAGS_momentum);
  mlp.muon.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  absl::StatusOr<dion::OptimizerKind> hidden =
      OptimizerFlag("hidden_optimizer", absl::GetFlag(FLAGS_hidden_optimizer));
  if (!hidden.ok()) return hidden.status();
  absl::StatusOr<dion::OptimizerKind> other =
      OptimizerFlag("other_optimizer", absl::GetFlag(FLAGS_other_optimizer));
  if (!other.ok()) return other.status();
  mlp.hidden_optimizer = *hidden;
  mlp.other_optimizer = *other;
  mlp.seed = absl::GetFlag(FLAGS_model_seed);
  absl::StatusOr<std::vector<dion::ParamSpec>> specs = dion::ParameterTable(mlp);
  if (!specs.ok()) return specs.status();
  if (absl::GetFlag(FLAGS_split_threshold) < 0) {
    return absl::InvalidArgumentError("--split_threshold must be >= 0 (0: never split)");
  }
  const std::vector<absl::string_view> shards =
      absl::StrSplit(absl::GetFlag(FLAGS_shards), ',', absl::SkipEmpty());
  dion::SplitLargeMatrices(absl::GetFlag(FLAGS_split_threshold),
                           static_cast<int>(shards.size()), *specs);
  dion::ModelTable table;
  table.model_name = absl::StrCat("mlp-", absl::StrJoin(mlp.layer_sizes, "-"));
  for (dion::ParamSpec& spec : *specs) table.parameters.push_back({std::move(spec), {}});
  return table;
}

// Polls for `path` until it exists (true), `stop` is set or `timeout` passes (false; the
// timeout is reported on stderr).
bool WaitForStartFile(const std::string& path, absl::Duration timeout,
                      const std::atomic<bool>& stop) {
  const absl::Time give_up = absl::Now() + timeout;
  while (access(path.c_str(), F_OK) != 0) {
    if (stop.load()) return false;
    if (absl::Now() > give_up) {
      std::fprintf(stderr,
                   "dion-worker: %s did not appear within --start_timeout=%s; is the supervisor "
                   "that creates it (dion local) still running?\n",
                   path.c_str(), absl::FormatDuration(timeout).c_str());
      return false;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

int Fail(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "dion-worker: %s: %s\n", what, status.ToString().c_str());
  return 1;
}

// The checks that need no data: InvalidArgument naming what is wrong.
absl::Status CheckFlags() {
  const int worker_index = absl::GetFlag(FLAGS_worker_index);
  const int num_workers = absl::GetFlag(FLAGS_num_workers);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (num_workers < 1 || worker_index < 0 || worker_index >= num_workers ||
      (mode != "train" && mode != "evaluate") || absl::GetFlag(FLAGS_blas_threads) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "need 0 <= worker_index < num_workers, --mode train or evaluate, blas_threads >= 1 "
        "(got worker_index=", worker_index, " num_workers=", num_workers, " mode=", mode, ")"));
  }
  if (absl::Status s = dion::ValidateLookahead(absl::GetFlag(FLAGS_lookahead)); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", s.message()));
  }
  const double target_accuracy = absl::GetFlag(FLAGS_target_accuracy);
  const absl::Duration snapshot_interval = absl::GetFlag(FLAGS_snapshot_interval);
  if (!(target_accuracy >= 0 && target_accuracy <= 1) ||
      snapshot_interval < absl::ZeroDuration() ||
      absl::GetFlag(FLAGS_start_timeout) <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "need --target_accuracy in [0, 1] (0: none), --snapshot_interval >= 0 and "
        "--start_timeout > 0 (got %g, %s and %s)",
        target_accuracy, absl::FormatDuration(snapshot_interval),
        absl::FormatDuration(absl::GetFlag(FLAGS_start_timeout))));
  }
  return absl::OkStatus();
}

// SIGTERM / SIGINT set g_stop (training ends after the current step and a final flush), or
// end the process at once (status 0) before g_connected: until Connect returns nothing has
// been computed or sent, and a worker waiting for an unreachable shard would otherwise ignore
// SIGTERM for up to --give_up_after (and Kubernetes would kill it after its grace period).
// Static: the detached watcher may still run while main returns.
std::atomic<int> g_stop_signal{0};
std::atomic<bool> g_stop{false};
std::atomic<bool> g_connected{false};

// A handler that only sets a lock-free flag, not sigwait: OpenBLAS starts its threads before
// main, with the signals unblocked, so a process-directed SIGTERM could land on one of them and
// kill the process with the default action. A detached thread watches the flag.
void HandleStopSignals() {
  struct sigaction action = {};
  action.sa_handler = [](int signal_number) { g_stop_signal.store(signal_number); };
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  std::thread([] {
    while (g_stop_signal.load() == 0) absl::SleepFor(absl::Milliseconds(50));
    const char* name = g_stop_signal.load() == SIGTERM ? "SIGTERM" : "SIGINT";
    if (!g_connected.load()) {
      std::fprintf(stderr, "dion-worker: %s received before the shards were reached; exiting\n",
                   name);
      std::fflush(stderr);
      std::_Exit(0);
    }
    std::fprintf(stderr, "dion-worker: %s received, finishing the current step\n", name);
    g_stop.store(true);
  }).detach();
}

// This worker's shuffling seed: --seed, or model_seed * 1000 + worker_index.
uint64_t WorkerSeed() {
  if (absl::GetFlag(FLAGS_seed) != 0) return absl::GetFlag(FLAGS_seed);
  return absl::GetFlag(FLAGS_model_seed) * 1000 +
         static_cast<uint64_t>(absl::GetFlag(FLAGS_worker_index));
}

dion::ClientOptions ClientOptionsFromFlags(dion::WorkerMetrics* metrics) {
  const std::string mode = absl::GetFlag(FLAGS_mode);
  dion::ClientOptions options;
  options.shard_addresses =
      absl::StrSplit(absl::GetFlag(FLAGS_shards), ',', absl::SkipEmpty());
  options.worker_id = absl::GetFlag(FLAGS_worker_id).empty()
                          ? absl::StrCat(mode == "evaluate" ? "evaluator-" : "worker-",
                                         absl::GetFlag(FLAGS_worker_index))
                          : absl::GetFlag(FLAGS_worker_id);
  const dion::PushRankSetting push_rank = absl::GetFlag(FLAGS_compression_rank_fraction);
  options.compression_rank_fraction = dion::StartingPushRankFraction(
      push_rank, dion::defaults::kCompressionRankFraction, absl::GetFlag(FLAGS_rank_fraction));
  options.auto_compression_rank = push_rank.adaptive;
  options.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  options.dp_clip = absl::GetFlag(FLAGS_dp_clip);
  options.track_last_step = absl::GetFlag(FLAGS_lookahead) > 0 && mode == "train";
  options.rpc_deadline = absl::GetFlag(FLAGS_rpc_deadline);
  options.reconnect.give_up_after = absl::GetFlag(FLAGS_give_up_after);
  options.tls = dion::TlsClientConfigFromFlags();
  options.seed = WorkerSeed();
  options.metrics = metrics;
  return options;
}

dion::TrainerOptions TrainerOptionsFromFlags() {
  dion::TrainerOptions trainer;
  trainer.epochs = absl::GetFlag(FLAGS_epochs);
  trainer.batch_size = absl::GetFlag(FLAGS_batch_size);
  trainer.max_steps = absl::GetFlag(FLAGS_max_steps);
  trainer.synchronous = absl::GetFlag(FLAGS_synchronous);
  trainer.progress_interval = absl::GetFlag(FLAGS_progress_interval);
  trainer.evaluate = !absl::GetFlag(FLAGS_no_evaluate) &&
                     (absl::GetFlag(FLAGS_evaluate) || absl::GetFlag(FLAGS_worker_index) == 0);
  trainer.eval_interval = absl::GetFlag(FLAGS_eval_interval);
  trainer.target_accuracy = absl::GetFlag(FLAGS_target_accuracy);
  trainer.snapshot_interval = absl::GetFlag(FLAGS_snapshot_interval);
  trainer.lookahead = absl::GetFlag(FLAGS_lookahead);
  trainer.seed = WorkerSeed();
  trainer.stop_flush_timeout = absl::GetFlag(FLAGS_flush_timeout);
  return trainer;
}

// After SIGTERM / SIGINT: what the final flush pushed, or what was lost.
void ReportStopFlush(const dion::TrainerProgress::StopFlush& flush) {
  const dion::FlushReport& r = flush.report;
  if (flush.status.ok()) {
    std::fprintf(stderr,
                 "dion-worker: flushed before exiting: %lld push(es) acknowledged, carrying the "
                 "residuals of %d Dion matrix(es) whole (norm %.4g); nothing accumulated is "
                 "lost\n",
                 static_cast<long long>(r.pushes), r.residuals, r.residual_norm);
  } else {
    std::fprintf(stderr,
                 "dion-worker: could not flush before exiting (%s): %lld push(es) "
                 "unacknowledged; %lld sample(s) of gradients and residuals of norm %.4g "
                 "(residuals before the flush: norm %.4g) are lost\n",
                 flush.status.ToString().c_str(), static_cast<long long>(r.unacknowledged),
                 static_cast<long long>(r.unsettled_samples), r.unsettled_norm,
                 r.residual_norm);
  }
  if (r.stale_dropped_samples > 0) {
    std::fprintf(stderr, "dion-worker: %lld sample(s) were answered STALE while flushing and "
                 "dropped\n", static_cast<long long>(r.stale_dropped_samples));
  }
}

// --mode=evaluate: the test-set accuracy of the shards' current weights.
int EvaluateOnce(dion::Client& client, const dion::Dataset& test) {
  std::vector<dion::Matrix> weights;
  client.CopyWeights(&weights);
  std::vector<const dion::Matrix*> views;
  for (const dion::Matrix& w : weights) views.push_back(&w);
  absl::StatusOr<dion::Evaluation> e = dion::Evaluate(views, test, 1000);
  if (!e.ok()) return Fail("evaluation failed", e.status());
  std::printf("%s\n", dion::FormatEvaluationLine({e->samples, e->loss, e->accuracy}).c_str());
  std::printf("test accuracy: %.2f%%\n", 100.0 * e->accuracy);
  return 0;
}

// This worker's partition of the training set (the same split on every worker: model_seed).
absl::StatusOr<dion::Dataset> MyPartition(const dion::Dataset& train, dion::PartitionKind kind) {
  dion::PartitionOptions partition;
  partition.kind = kind;
  partition.alpha = absl::GetFlag(FLAGS_dirichlet_alpha);
  partition.seed = absl::GetFlag(FLAGS_model_seed);
  absl::StatusOr<std::vector<int64_t>> indices = dion::PartitionIndices(
      train.labels, train.num_classes, absl::GetFlag(FLAGS_num_workers),
      absl::GetFlag(FLAGS_worker_index), partition);
  if (!indices.ok()) return indices.status();
  return dion::Subset(train, *indices);
}

// --mode=train: waits for --start_file, trains on this worker's partition of data.train,
// prints progress lines.
int TrainOnPartition(dion::Client& client, const dion::ClientOptions& options, Data& data,
                     dion::WorkerMetrics& metrics) {
  absl::StatusOr<dion::PartitionKind> kind =
      dion::ParsePartitionKind(absl::GetFlag(FLAGS_partition));
  if (!kind.ok()) return Fail("bad --partition", kind.status());
  absl::StatusOr<dion::Dataset> mine = MyPartition(data.train, *kind);
  if (!mine.ok()) return Fail("cannot partition the training set", mine.status());
  dion::TrainerOptions trainer = TrainerOptionsFromFlags();
  absl::StatusOr<int64_t> per_epoch = dion::SamplesPerEpoch(
      mine->size(), data.train.size(), absl::GetFlag(FLAGS_num_workers), trainer.synchronous);
  if (!per_epoch.ok()) return Fail("cannot schedule the epochs", per_epoch.status());
  trainer.samples_per_epoch = *per_epoch;
  std::fprintf(stderr,
               "dion-worker: %s training on %lld of %lld samples (%s partition), %zu shard(s), "
               "%lld samples per epoch\n",
               options.worker_id.c_str(), static_cast<long long>(mine->size()),
               static_cast<long long>(data.train.size()), absl::GetFlag(FLAGS_partition).c_str(),
               options.shard_addresses.size(), static_cast<long long>(*per_epoch));
  data.train = dion::Dataset{};  // only `mine` is used from here on (~190 MB for Fashion-MNIST)
  if (const std::string start_file = absl::GetFlag(FLAGS_start_file); !start_file.empty()) {
    if (!WaitForStartFile(start_file, absl::GetFlag(FLAGS_start_timeout), g_stop)) {
      return g_stop.load() ? 0 : 1;  // stopped before the first step: nothing to flush
    }
  }
  const int worker_index = absl::GetFlag(FLAGS_worker_index);
  absl::StatusOr<dion::TrainerProgress> result = dion::Train(
      client, *mine, &data.test, trainer, &metrics,
      [worker_index](const dion::TrainerProgress& p) {
        const std::string line = dion::FormatProgressLine(dion::ToProgressLine(worker_index, p));
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
      },
      &g_stop);
  if (!result.ok()) return Fail("training stopped", result.status());
  if (result->stop_flush.has_value()) ReportStopFlush(*result->stop_flush);
  if (result->evaluation.has_value()) {
    std::printf("test accuracy: %.2f%%\n", 100.0 * result->evaluation->accuracy);
  }
  client.Close();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  dion::ParseCommandLineOrExit(
      argc, argv,
      {"dion-worker", "worker/train/main.cc",
       "A dion-ps training worker.\n"
       "  dion-worker --shards=HOST:PORT[,HOST:PORT...] --worker_index=I --num_workers=W\n"
       "trains the MLP on partition I of W of Fashion-MNIST against the shards."});
  if (absl::Status s = CheckFlags(); !s.ok()) return dion::BadFlags("dion-worker", s.message());
  if (absl::Status s = dion::SetBlasThreads(absl::GetFlag(FLAGS_blas_threads)); !s.ok()) {
    std::fprintf(stderr, "dion-worker: note: --blas_threads=%d: %s\n",
                 absl::GetFlag(FLAGS_blas_threads), std::string(s.message()).c_str());
  }
  HandleStopSignals();

  absl::StatusOr<Data> data = LoadData();
  if (!data.ok()) return Fail("cannot load the data", data.status());
  absl::StatusOr<dion::ModelTable> table = ModelFor(data->train);
  if (!table.ok()) return dion::BadFlags("dion-worker", table.status().message());

  dion::WorkerMetrics metrics;
  std::unique_ptr<dion::MetricsServer> metrics_server;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    absl::StatusOr<std::unique_ptr<dion::MetricsServer>> started =
        dion::MetricsServer::Start(absl::GetFlag(FLAGS_metrics_listen), metrics.registry());
    if (!started.ok()) return Fail("cannot serve metrics", started.status());
    metrics_server = *std::move(started);
  }
  const dion::ClientOptions options = ClientOptionsFromFlags(&metrics);
  absl::StatusOr<std::unique_ptr<dion::Client>> client = dion::Client::Connect(*table, options);
  if (!client.ok()) return Fail("cannot connect to the shards", client.status());
  g_connected.store(true);

  if (absl::GetFlag(FLAGS_mode) == "evaluate") return EvaluateOnce(**client, data->test);
  return TrainOnPartition(**client, options, *data, metrics);
}
