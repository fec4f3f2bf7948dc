// dion: the dion-ps command line.
//
//   dion local [--flags]   train on this machine: shards and workers as child processes
//   dion checkpoint --shards=host:port,...   a coordinated checkpoint of running shards
//   dion help              this text
//
// `dion local` (worker/local/local_run.h) finds dion-server and dion-worker next to itself: in the
// build tree build/worker/dion -> build/server/dion-server and build/worker/dion-worker; in an
// installed layout all three in one directory; --server_binary / --worker_binary override.
// The alert rules for --prometheus_config: <bin>/../share/dion-ps/prometheus/rules in an
// installed layout, else those of the source tree it was built from (DION_SOURCE_DIR).
// `dion local --dry_run` prints the children's command lines and exits.
// Exit codes: 0 after a complete run; 1 when a child failed or the run could not be set up;
// 2 for bad flags or an unknown subcommand; 130 after SIGINT / SIGTERM (the children were
// stopped and the shards wrote a final checkpoint).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/cli.h"
#include "common/privacy/rdp_accountant.h"
#include "worker/local/coordinated_checkpoint.h"
#include "worker/local/local_run.h"
#include "worker/local/local_run_flags.h"

namespace {
const dion::LocalRunOptions kDefaults;
}  // namespace

// Processes.
ABSL_FLAG(int, shards, kDefaults.shards, "number of dion-server shards the model is spread over");
ABSL_FLAG(int, workers, kDefaults.workers, "number of dion-worker processes");
ABSL_FLAG(std::string, server_binary, "",
          "path of dion-server; default: ../server/dion-server (build tree) or dion-server next "
          "to this binary");
ABSL_FLAG(std::string, worker_binary, "", "path of dion-worker; default: next to this binary");
ABSL_FLAG(std::string, worker_command, "",
          "run this command line (words separated by spaces; the first one is looked up in "
          "PATH) instead of dion-worker for the workers and the final evaluation, with "
          "dion-worker's flags appended: a program that takes them and prints dion-worker's "
          "lines, e.g. '/usr/bin/python3 worker/python/examples/fashion_cnn.py', a PyTorch "
          "CNN (docs/python.md); overrides --worker_binary");
ABSL_FLAG(std::string, server_flags, "",
          "extra dion-server flags, separated by spaces (e.g. '--compute_threads=1 "
          "--checkpoint_interval=1m'); see dion-server --help");
ABSL_FLAG(std::string, worker_flags, "",
          "extra dion-worker flags, separated by spaces (e.g. '--hidden_layers=512,256 "
          "--momentum=0.9'), also given to the final evaluation; see dion-worker --help");
ABSL_FLAG(std::vector<std::string>, shard_env, {},
          "NAME=VALUE[,NAME=VALUE...] set in the environment of the dion-server processes "
          "only, e.g. OPENBLAS_CORETYPE=SandyBridge to run the shards on another OpenBLAS "
          "kernel than the workers, as on a cluster of mixed CPU models");
// Model, data, optimizer.
ABSL_FLAG(std::string, dataset, kDefaults.dataset,
          "fashion-mnist (IDX files in --data_dir) or synthetic (a seeded teacher task)");
ABSL_FLAG(std::string, data_dir, kDefaults.data_dir,
          "directory with the Fashion-MNIST IDX files (Debian: dataset-fashion-mnist)");
ABSL_FLAG(std::string, partition, kDefaults.partition,
          "split of the training set across workers: iid or dirichlet (label skew)");
ABSL_FLAG(double, dirichlet_alpha, kDefaults.dirichlet_alpha,
          "Dirichlet concentration of --partition=dirichlet; smaller means more skew");
ABSL_FLAG(int, epochs, kDefaults.epochs,
          "passes of each worker over its partition (under --sync: training set / --workers "
          "samples each on every worker, whatever its partition's size; docs/worker.md)");
ABSL_FLAG(int, batch_size, kDefaults.batch_size, "samples per local step of a worker");
ABSL_FLAG(double, rank_fraction, kDefaults.rank_fraction,
          "Dion rank of the hidden matrices as a fraction of min(m, n)");
ABSL_FLAG(double, compression_rank_fraction, kDefaults.compression_rank_fraction,
          "rank of the gradient factors the workers push, as a fraction of min(m, n) (error "
          "feedback keeps what they miss on the worker for later pushes); 0: --rank_fraction");
ABSL_FLAG(int64_t, split_threshold, kDefaults.split_threshold,
          "a 2-D Dion matrix with at least this many elements is split by rows over all the "
          "shards, which step it together; summary.json lists each split parameter's rows per "
          "shard (docs/worker.md, \"Split parameters\"); 0: never split");
ABSL_FLAG(double, lr, kDefaults.lr, "Dion learning rate of the hidden matrices");
ABSL_FLAG(double, adamw_lr, kDefaults.adamw_lr,
          "AdamW learning rate of the biases and the output layer");
ABSL_FLAG(double, lr_cooldown, kDefaults.lr_cooldown,
          "fraction of the run at its end over which every learning rate falls linearly to "
          "--lr_final_scale of its value (the shards count the samples they applied); 0: "
          "constant learning rates");
ABSL_FLAG(double, lr_final_scale, kDefaults.lr_final_scale,
          "learning-rate multiplier at the end of the run, in [0, 1]");
ABSL_FLAG(int64_t, lr_schedule_samples, kDefaults.lr_schedule_samples,
          "samples each parameter sees over the run, the cooldown's horizon; 0: epochs x the "
          "training-set size");
ABSL_FLAG(double, lookahead, kDefaults.lookahead,
          "staleness compensation on the workers: each gradient is computed at the weights "
          "extrapolated this many versions ahead along their last step (also under --sync, "
          "where it acts as Nesterov momentum), in [0, 100]; 0: off");
ABSL_FLAG(uint64_t, seed, kDefaults.seed,
          "seed of the initial weights and the partition; worker j shuffles with seed*1000+j");
ABSL_FLAG(absl::Duration, eval_interval, kDefaults.eval_interval,
          "time between worker 0's test-set evaluations (the accuracy curve, time to target)");
ABSL_FLAG(absl::Duration, snapshot_interval, kDefaults.snapshot_interval,
          "worker 0 copies its weights this often between evaluations; the first evaluation "
          "at --target_accuracy is then located among the copies (evaluated after it, each at "
          "the time of its copy), so the time to target has this grain; 0: --eval_interval's");
// Batching and staleness (shards).
ABSL_FLAG(std::string, staleness_policy, kDefaults.staleness_policy,
          "weight of a contribution with staleness tau: none, inverse (1/(1+tau)) or exp");
ABSL_FLAG(int64_t, max_staleness, kDefaults.max_staleness,
          "contributions staler than this are refused; the worker resyncs and pushes again");
ABSL_FLAG(int64_t, target_samples, kDefaults.target_samples,
          "shards close a batch once it holds this many samples; 0: no sample target");
ABSL_FLAG(int, target_workers, kDefaults.target_workers,
          "shards close a batch once this many distinct workers contributed; 0: no worker "
          "target");
ABSL_FLAG(absl::Duration, batch_deadline, kDefaults.batch_deadline,
          "shards close a batch this long after its first contribution ('inf': never)");
ABSL_FLAG(bool, adaptive_batching, kDefaults.adaptive_batching,
          "let the shards adapt the sample target to the arrival rate and step time (then "
          "--target_samples only applies until a rate is measured)");
ABSL_FLAG(bool, sync, kDefaults.sync,
          "synchronous setting: every batch waits for all workers (target_workers=--workers, "
          "no sample target, no adaptation, deadline --sync_deadline) and each worker waits "
          "for it before its next step; overrides the batching flags above");
ABSL_FLAG(absl::Duration, sync_deadline, kDefaults.sync_deadline,
          "batch deadline under --sync: how long a batch waits for a missing worker");
// Differential privacy (docs/privacy.md).
ABSL_FLAG(double, dp_clip, kDefaults.dp_clip,
          "differential privacy: every worker clips each local step's gradient and each pushed "
          "contribution to this Frobenius norm C, per parameter (dion-worker --dp_clip); 0: off");
ABSL_FLAG(double, dp_noise_multiplier, kDefaults.dp_noise_multiplier,
          "differential privacy: every shard adds Gaussian noise of std sigma * C * (largest "
          "weight of one worker in the batch) to each batch's aggregate, sigma being this value "
          "(dion-server --dp_noise_multiplier, needs --dp_clip > 0); the report and summary.json "
          "give the (epsilon, delta) spent. 0: off");
// Where and how.
ABSL_FLAG(std::string, run_dir, "",
          "run directory (logs/, shard-N/checkpoints/, summary.json, curves.svg); default "
          "./runs/<YYYYmmdd-HHMMSS>");
ABSL_FLAG(int, base_port, kDefaults.base_port,
          "shard i serves gRPC on 127.0.0.1:base_port+i; 0: each picks a free port");
ABSL_FLAG(int, metrics_base_port, kDefaults.metrics_base_port,
          "Prometheus /metrics ports: shard i on base+i, worker j on base+shards+j; 0: disabled");
ABSL_FLAG(std::string, prometheus_config, "",
          "write a Prometheus configuration that scrapes this run's metrics ports (jobs dion-ps "
          "and dion-worker, labels shard and worker, the alert rules when found) to this path "
          "before starting; needs --metrics_base_port (docs/observability.md)");
ABSL_FLAG(double, target_accuracy, kDefaults.target_accuracy,
          "test accuracy whose time to reach the report states (fraction, e.g. 0.88)");
ABSL_FLAG(std::string, progress, "auto",
          "progress display: live (one line rewritten in place), lines (a line every "
          "--progress_interval), quiet, or auto (live on a terminal, else lines)");
ABSL_FLAG(absl::Duration, progress_interval, kDefaults.progress_interval,
          "time between progress lines when they are not rewritten in place");
ABSL_FLAG(absl::Duration, startup_timeout, kDefaults.startup_timeout,
          "how long a shard may take to start serving");
ABSL_FLAG(absl::Duration, stop_grace, kDefaults.stop_grace,
          "how long a child may take to stop after SIGTERM before it is killed");
ABSL_FLAG(absl::Duration, evaluation_timeout, kDefaults.evaluation_timeout,
          "how long the final evaluation may take");
ABSL_FLAG(std::string, run_id, "",
          "run id of the coordinated checkpoint the shards take at the end of the run (printed "
          "at the start, in summary.json; dion-server --restore_cut restores it); 1-128 bytes "
          "of [A-Za-z0-9._-]; default: local-<name of the run directory>");
ABSL_FLAG(bool, insecure, false,
          "run the shards in plaintext without tokens; by default the run creates a throwaway "
          "CA, a certificate for the shards and a token per process in <run_dir>/security "
          "(with the openssl command) and runs with TLS and tokens, as a cluster should");
ABSL_FLAG(std::string, link_rate, "",
          "run each worker behind a link of this rate per direction to the shards, e.g. 20mbit, "
          "100mbit, 1gbit (decimal units as tc's): a network namespace per worker joined by a "
          "veth pair shaped with tc tbf (needs root; docs/worker.md, \"Slow links\"). Empty: "
          "loopback, unlimited");
ABSL_FLAG(absl::Duration, link_delay, absl::ZeroDuration(),
          "one-way delay added to each worker's link (both directions, so the RTT grows by "
          "twice this), by a relay in front of the shards; works with or without --link_rate "
          "(needs root). 0: none");
ABSL_FLAG(bool, dry_run, false,
          "print the command lines of the shards, workers and final evaluation (and write "
          "--prometheus_config), then exit without starting anything");

namespace {

constexpr const char* kUsage =
    "dion: the dion-ps command line.\n"
    "  dion local [--flags]   train on this machine: starts --shards dion-server and --workers\n"
    "                         dion-worker processes on 127.0.0.1, shows progress, and ends with\n"
    "                         a report, run_dir/summary.json and run_dir/curves.svg\n"
    "  dion checkpoint --shards=host:port,... [--run_id=ID]\n"
    "                         a coordinated checkpoint of running shards: every shard writes\n"
    "                         the same cut (dion-server --restore_cut restores it)\n"
    "  dion help              this text\n"
    "`dion local --help` lists the flags of `dion local` with their defaults;\n"
    "`dion checkpoint --help` those of `dion checkpoint`.";

std::vector<std::string> SplitFlags(const std::string& text) {
  return absl::StrSplit(text, absl::ByAnyChar(" \t\n"), absl::SkipEmpty());
}

// `name` if it contains a '/', else the first executable `name` in a directory of PATH.
absl::StatusOr<std::string> FindInPath(const std::string& name) {
  if (absl::StrContains(name, "/")) {
    if (access(name.c_str(), X_OK) == 0) return name;
    return absl::NotFoundError(absl::StrCat(name, " is not an executable file"));
  }
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path == nullptr ? "" : path, ':')) {
    const std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::NotFoundError(absl::StrCat("no executable ", name, " in PATH"));
}

std::string SelfExe() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : std::string();
}

// The privacy the shards spent, composed (common/privacy/rdp_accountant.h) at the smallest
// delta they report; none when no shard adds noise.
std::optional<dion::RunPrivacy> ComposedPrivacy(const std::vector<dion::ShardCut>& shards) {
  std::vector<dion::MechanismSteps> parts;
  dion::RunPrivacy run;
  for (const dion::ShardCut& shard : shards) {
    if (!shard.privacy.has_value()) continue;
    const dion::ShardPrivacy& p = *shard.privacy;
    parts.push_back({p.sampling_rate, p.noise_multiplier, p.steps});
    run.delta = parts.size() == 1 ? p.delta : std::min(run.delta, p.delta);
    run.noise_multiplier = std::max(run.noise_multiplier, p.noise_multiplier);
    run.clip = std::max(run.clip, p.clip);
    run.sampling_rate = std::max(run.sampling_rate, p.sampling_rate);
    run.steps += p.steps;
  }
  if (parts.empty()) return std::nullopt;
  run.epsilon = dion::EpsilonOfComposition(parts, run.delta).epsilon;
  return run;
}

// LocalRunOptions::checkpoint: `dion checkpoint` in this process.
absl::StatusOr<dion::LocalRunOptions::TakenCheckpoint> TakeCheckpoint(
    const std::vector<std::string>& shards, const std::string& run_id,
    const dion::TlsClientConfig& tls) {
  dion::CoordinatedCheckpointOptions options;
  options.shards = shards;
  options.run_id = run_id;
  options.tls = tls;
  absl::StatusOr<dion::CoordinatedCheckpoint> taken = dion::TakeCoordinatedCheckpoint(options);
  if (!taken.ok()) return taken.status();
  std::vector<std::string> lines = taken->Lines();
  if (!taken->status.ok()) {
    return absl::Status(taken->status.code(), absl::StrJoin(lines, "\n  "));
  }
  dion::LocalRunOptions::TakenCheckpoint result{
      {taken->run_id, taken->cut}, std::move(lines), ComposedPrivacy(taken->shards), {}};
  for (const dion::SplitRows& split : taken->split) {
    dion::RunSplitParameter& p = result.split_parameters.emplace_back();
    p.parameter = split.parameter;
    for (const auto& o : split.owners) p.owners.push_back({o.shard, o.row_begin, o.row_end});
  }
  return result;
}

// The options of the parsed flags, except the binaries' paths and the alert rules.
// InvalidArgument for a bad --progress.
absl::StatusOr<dion::LocalRunOptions> OptionsFromFlags() {
  dion::LocalRunOptions o;
  o.shards = absl::GetFlag(FLAGS_shards);
  o.workers = absl::GetFlag(FLAGS_workers);
  o.server_flags = SplitFlags(absl::GetFlag(FLAGS_server_flags));
  o.worker_flags = SplitFlags(absl::GetFlag(FLAGS_worker_flags));
  o.shard_env = absl::GetFlag(FLAGS_shard_env);
  o.dataset = absl::GetFlag(FLAGS_dataset);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.partition = absl::GetFlag(FLAGS_partition);
  o.dirichlet_alpha = absl::GetFlag(FLAGS_dirichlet_alpha);
  o.epochs = absl::GetFlag(FLAGS_epochs);
  o.batch_size = absl::GetFlag(FLAGS_batch_size);
  o.rank_fraction = absl::GetFlag(FLAGS_rank_fraction);
  o.split_threshold = absl::GetFlag(FLAGS_split_threshold);
  o.compression_rank_fraction = absl::GetFlag(FLAGS_compression_rank_fraction);
  o.lr = absl::GetFlag(FLAGS_lr);
  o.adamw_lr = absl::GetFlag(FLAGS_adamw_lr);
  o.lr_cooldown = absl::GetFlag(FLAGS_lr_cooldown);
  o.lr_final_scale = absl::GetFlag(FLAGS_lr_final_scale);
  o.lr_schedule_samples = absl::GetFlag(FLAGS_lr_schedule_samples);
  o.lookahead = absl::GetFlag(FLAGS_lookahead);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.eval_interval = absl::GetFlag(FLAGS_eval_interval);
  o.snapshot_interval = absl::GetFlag(FLAGS_snapshot_interval);
  o.staleness_policy = absl::GetFlag(FLAGS_staleness_policy);
  o.max_staleness = absl::GetFlag(FLAGS_max_staleness);
  o.target_samples = absl::GetFlag(FLAGS_target_samples);
  o.target_workers = absl::GetFlag(FLAGS_target_workers);
  o.batch_deadline = absl::GetFlag(FLAGS_batch_deadline);
  o.adaptive_batching = absl::GetFlag(FLAGS_adaptive_batching);
  o.sync = absl::GetFlag(FLAGS_sync);
  o.sync_deadline = absl::GetFlag(FLAGS_sync_deadline);
  o.dp_clip = absl::GetFlag(FLAGS_dp_clip);
  o.dp_noise_multiplier = absl::GetFlag(FLAGS_dp_noise_multiplier);
  o.run_dir = absl::GetFlag(FLAGS_run_dir);
  o.base_port = absl::GetFlag(FLAGS_base_port);
  o.metrics_base_port = absl::GetFlag(FLAGS_metrics_base_port);
  o.prometheus_config = absl::GetFlag(FLAGS_prometheus_config);
  o.target_accuracy = absl::GetFlag(FLAGS_target_accuracy);
  o.progress_interval = absl::GetFlag(FLAGS_progress_interval);
  o.startup_timeout = absl::GetFlag(FLAGS_startup_timeout);
  o.stop_grace = absl::GetFlag(FLAGS_stop_grace);
  o.evaluation_timeout = absl::GetFlag(FLAGS_evaluation_timeout);
  o.run_id = absl::GetFlag(FLAGS_run_id);
  o.insecure = absl::GetFlag(FLAGS_insecure);
  absl::StatusOr<int64_t> link_rate = dion::ParseLinkRate(absl::GetFlag(FLAGS_link_rate));
  if (!link_rate.ok()) return absl::InvalidArgumentError(absl::StrCat("--link_rate: ", link_rate.status().message()));
  o.links.rate_bits = *link_rate;
  o.links.delay = absl::GetFlag(FLAGS_link_delay);
  o.checkpoint = TakeCheckpoint;
  const std::string progress = absl::GetFlag(FLAGS_progress);
  if (progress == "live" || (progress == "auto" && isatty(STDOUT_FILENO))) {
    o.progress = dion::LocalRunOptions::Progress::kLive;
  } else if (progress == "lines" || progress == "auto") {
    o.progress = dion::LocalRunOptions::Progress::kLines;
  } else if (progress == "quiet") {
    o.progress = dion::LocalRunOptions::Progress::kQuiet;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--progress must be auto, live, lines or quiet, got '", progress, "'"));
  }
  return o;
}

// The alert rules of an installed layout (<prefix>/bin/dion, <prefix>/share/dion-ps/...), else
// those of the source tree this binary was built from; empty when neither is readable.
std::string FindAlertRules(const std::string& self) {
  absl::StatusOr<std::string> installed =
      dion::FindSiblingFile(self, {DION_DATA_FROM_BIN "/prometheus/rules/dion-alerts.yml"});
  if (installed.ok()) return *installed;
  const std::string source = DION_SOURCE_DIR "/deploy/prometheus/rules/dion-alerts.yml";
  return access(source.c_str(), R_OK) == 0 ? source : std::string();
}

// --dry_run: what RunLocal would start, after the same checks; writes --prometheus_config.
int DryRun(dion::LocalRunOptions o) {
  if (absl::Status s = dion::ValidateLocalRunOptions(o); !s.ok()) {
    return dion::BadFlags("dion local", s.message());
  }
  absl::StatusOr<int64_t> samples = dion::ScheduleSamples(o);
  if (!samples.ok()) {
    return dion::BadFlags("dion local", absl::StrCat("cannot work out the lr cooldown's horizon: ",
                                                     samples.status().message()));
  }
  o.lr_schedule_samples = *samples;
  if (!o.prometheus_config.empty()) {
    std::ofstream out(o.prometheus_config);
    out << dion::PrometheusConfig(o);
    if (!out.flush()) {
      std::fprintf(stderr, "dion local: cannot write %s\n", o.prometheus_config.c_str());
      return 1;
    }
  }
  std::printf("%s", dion::CommandLines(o).c_str());
  return 0;
}

int Local(int argc, char** argv) {
  dion::ParseCommandLineOrExit(
      argc, argv,
      {"dion local", "worker/local/dion_main.cc",
       "dion local: train on this machine (dion-server shards and dion-worker processes on "
       "127.0.0.1).\n  dion local [--flags]"});
  absl::StatusOr<dion::LocalRunOptions> o = OptionsFromFlags();
  if (!o.ok()) return dion::BadFlags("dion local", o.status().message());

  const std::string self = SelfExe();
  absl::StatusOr<std::string> server = dion::FindSiblingBinary(
      self, absl::GetFlag(FLAGS_server_binary), {"../server/dion-server", "dion-server"});
  const std::vector<std::string> command = SplitFlags(absl::GetFlag(FLAGS_worker_command));
  absl::StatusOr<std::string> worker =
      command.empty()
          ? dion::FindSiblingBinary(self, absl::GetFlag(FLAGS_worker_binary), {"dion-worker"})
          : FindInPath(command[0]);
  if (!command.empty()) o->worker_args.assign(command.begin() + 1, command.end());
  for (const auto& [name, found] : {std::pair{"dion-server", &server}, {"dion-worker", &worker}}) {
    if (!found->ok()) {
      std::fprintf(stderr, "dion local: cannot find %s: %s (use --%s_binary)\n", name,
                   std::string(found->status().message()).c_str(),
                   absl::StrContains(name, "server") ? "server" : "worker");
      return 1;
    }
  }
  o->server_binary = *server;
  o->worker_binary = *worker;
  if (!o->prometheus_config.empty()) o->alert_rules = FindAlertRules(self);
  if (absl::GetFlag(FLAGS_dry_run)) return DryRun(*std::move(o));
  if (o->links.enabled()) {  // before anything starts
    if (absl::Status s = dion::CheckLinkPrerequisites(); !s.ok()) {
      std::fprintf(stderr, "dion local: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  return dion::RunLocal(*o);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "local") {
    // argv without the subcommand, so the flag parser sees only flags.
    std::vector<char*> args = {argv[0]};
    for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
    return Local(static_cast<int>(args.size()), args.data());
  }
  if (command == "checkpoint") {
    return dion::CheckpointCommand(std::vector<std::string>(argv + 2, argv + argc));
  }
  if (command == "help" || command == "--help" || command == "-h") {
    std::printf("%s\n", kUsage);
    return 0;
  }
  if (command.empty()) {
    std::fprintf(stderr, "%s\n", kUsage);
  } else {
    std::fprintf(stderr, "dion: unknown subcommand '%s'\n%s\n", command.c_str(), kUsage);
  }
  return 2;
}
