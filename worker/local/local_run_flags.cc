#include "worker/local/local_run_flags.h"

#include <zlib.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/training_defaults.h"
#include "worker/train/lookahead.h"

namespace dion {
namespace {

// Appends "--<name>=<value>" to `flags` when `value` differs from `default_value`, the
// child's own default: what the user did not change is left to the child.
template <typename T, typename D>
void AddIfChanged(std::vector<std::string>* flags, absl::string_view name, const T& value,
                  const D& default_value) {
  if (value == T(default_value)) return;
  if constexpr (std::is_same_v<T, absl::Duration>) {
    flags->push_back(absl::StrCat("--", name, "=", absl::FormatDuration(value)));
  } else if constexpr (std::is_same_v<T, bool>) {
    flags->push_back(absl::StrCat("--", name, "=", value ? "true" : "false"));
  } else {
    flags->push_back(absl::StrCat("--", name, "=", value));
  }
}

// What the workers and the evaluator share: where the shards are, the model and the data.
std::vector<std::string> ModelAndDataFlags(const LocalRunOptions& o,
                                           const std::vector<std::string>& shard_addresses) {
  std::vector<std::string> flags = {
      absl::StrCat("--shards=", absl::StrJoin(shard_addresses, ","))};
  AddIfChanged(&flags, "dataset", o.dataset, defaults::kDataset);
  AddIfChanged(&flags, "data_dir", o.data_dir, defaults::kDataDir);
  AddIfChanged(&flags, "rank_fraction", o.rank_fraction, defaults::kRankFraction);
  AddIfChanged(&flags, "split_threshold", o.split_threshold, defaults::kSplitThreshold);
  AddIfChanged(&flags, "lr", o.lr, defaults::kLr);
  AddIfChanged(&flags, "adamw_lr", o.adamw_lr, defaults::kAdamwLr);
  AddIfChanged(&flags, "model_seed", o.seed, defaults::kModelSeed);
  return flags;
}

}  // namespace

namespace {

// The value of the last "--<name>=<integer>" in `flags` (Abseil: the last occurrence wins), or
// `value` unchanged when there is none. InvalidArgument for a value that is not an integer > 0.
absl::Status LastPositiveFlag(const std::vector<std::string>& flags, absl::string_view name,
                              int64_t* value) {
  const std::string prefix = absl::StrCat("--", name, "=");
  for (const std::string& flag : flags) {
    if (!absl::StartsWith(flag, prefix)) continue;
    int64_t parsed = 0;
    if (!absl::SimpleAtoi(absl::string_view(flag).substr(prefix.size()), &parsed) ||
        parsed < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("worker flag ", flag, ": expected an integer >= 1"));
    }
    *value = parsed;
  }
  return absl::OkStatus();
}

// The sample count in the header of the IDX labels file `<dir>/<name>` or `<dir>/<name>.gz`
// (zlib reads both): magic 0x00000801, then the count, both big-endian 32-bit. Only the
// header is read; dion-worker checks the rest when it loads the data.
absl::StatusOr<int64_t> IdxLabelCount(const std::string& dir, const std::string& name) {
  std::string path = dir + "/" + name;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) path += ".gz";
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("neither ", dir, "/", name, " nor ", path, " exists"));
  }
  errno = 0;
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  unsigned char header[8];
  const int got = gzread(file, header, sizeof(header));
  gzclose(file);
  if (got != static_cast<int>(sizeof(header))) {
    return absl::DataLossError(absl::StrCat(path, ": expected an 8-byte IDX labels header"));
  }
  const auto be32 = [](const unsigned char* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
  };
  if (be32(header) != 0x00000801) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not an IDX labels file (magic ", be32(header), ", expected 2049)"));
  }
  return static_cast<int64_t>(be32(header + 4));
}

}  // namespace

absl::StatusOr<int64_t> ScheduleSamples(const LocalRunOptions& o) {
  if (o.lr_cooldown <= 0) return 0;
  if (o.lr_schedule_samples > 0) return o.lr_schedule_samples;
  // What the workers will run: --worker_flags come last on their command lines, so they win.
  int64_t epochs = o.epochs;
  if (absl::Status s = LastPositiveFlag(o.worker_flags, "epochs", &epochs); !s.ok()) return s;
  int64_t train_size = 0;
  if (o.dataset == "synthetic") {
    train_size = defaults::kSyntheticTrainSamples;
    if (absl::Status s = LastPositiveFlag(o.worker_flags, "synthetic_train_samples", &train_size);
        !s.ok()) {
      return s;
    }
  } else {
    absl::StatusOr<int64_t> size = IdxLabelCount(o.data_dir, "train-labels-idx1-ubyte");
    if (!size.ok()) return size.status();
    train_size = *size;
  }
  return epochs * train_size;
}

std::vector<std::string> ShardFlags(const LocalRunOptions& o, int index,
                                    const std::string& checkpoint_dir) {
  std::vector<std::string> flags = {
      absl::StrCat("--listen=127.0.0.1:", o.base_port > 0 ? o.base_port + index : 0),
      absl::StrCat(
          "--metrics_listen=",
          o.metrics_base_port > 0 ? absl::StrCat("127.0.0.1:", o.metrics_base_port + index) : ""),
      absl::StrCat("--shard_index=", index),
      absl::StrCat("--num_shards=", o.shards),
      absl::StrCat("--checkpoint_dir=", checkpoint_dir),
      // Every process of the run is on this machine: a crash of the machine ends the workers
      // too, so 'always' (an fdatasync before each ack) would guard nothing that this does
      // not; a killed shard loses nothing either way. It cost 17% of the time to 88% on
      // Fashion-MNIST (docs/benchmarks.md, "Write-ahead log").
      "--wal_sync=interval:100ms"};
  AddIfChanged(&flags, "staleness_policy", o.staleness_policy, defaults::kStalenessPolicy);
  AddIfChanged(&flags, "max_staleness", o.max_staleness, defaults::kMaxStaleness);
  if (o.lr_cooldown > 0 && o.lr_schedule_samples > 0) {
    flags.push_back(absl::StrCat("--lr_schedule_samples=", o.lr_schedule_samples));
    AddIfChanged(&flags, "lr_cooldown_fraction", o.lr_cooldown, defaults::kLrCooldownFraction);
    AddIfChanged(&flags, "lr_final_scale", o.lr_final_scale, defaults::kLrFinalScale);
  }
  if (o.sync) {
    flags.push_back(absl::StrCat("--target_workers=", o.workers));
    flags.push_back("--target_samples=0");
    flags.push_back(absl::StrCat("--batch_deadline=", absl::FormatDuration(o.sync_deadline)));
    flags.push_back("--adaptive_batching=false");
  } else {
    AddIfChanged(&flags, "target_samples", o.target_samples, defaults::kTargetSamples);
    AddIfChanged(&flags, "target_workers", o.target_workers, defaults::kTargetWorkers);
    AddIfChanged(&flags, "batch_deadline", o.batch_deadline, defaults::kBatchDeadline);
    AddIfChanged(&flags, "adaptive_batching", o.adaptive_batching, defaults::kAdaptiveBatching);
  }
  if (o.dp_noise_multiplier > 0) {  // docs/privacy.md
    flags.push_back(absl::StrCat("--dp_noise_multiplier=", o.dp_noise_multiplier));
    flags.push_back(absl::StrCat("--dp_clip=", o.dp_clip));
  }
  flags.insert(flags.end(), o.server_flags.begin(), o.server_flags.end());
  return flags;
}

std::vector<std::string> WorkerFlags(const LocalRunOptions& o, int index,
                                     const std::vector<std::string>& shard_addresses,
                                     const std::string& start_file) {
  std::vector<std::string> flags = ModelAndDataFlags(o, shard_addresses);
  flags.push_back(absl::StrCat("--worker_index=", index));
  flags.push_back(absl::StrCat("--num_workers=", o.workers));
  AddIfChanged(&flags, "partition", o.partition, defaults::kPartition);
  AddIfChanged(&flags, "dirichlet_alpha", o.dirichlet_alpha, defaults::kDirichletAlpha);
  AddIfChanged(&flags, "epochs", o.epochs, defaults::kEpochs);
  AddIfChanged(&flags, "batch_size", o.batch_size, defaults::kBatchSize);
  AddIfChanged(&flags, "lookahead", o.lookahead, defaults::kLookahead);
  AddIfChanged(&flags, "compression_rank_fraction", o.compression_rank_fraction,
               defaults::kCompressionRankFraction);
  if (o.seed != defaults::kModelSeed) {  // the worker's own default, spelled out
    flags.push_back(absl::StrCat("--seed=", o.seed * 1000 + static_cast<uint64_t>(index)));
  }
  // What the report reads (worker/local/run_report.h): a progress line a second, worker 0's
  // evaluations and the snapshots that locate the time to target_accuracy.
  for (std::string flag :
       {absl::StrCat("--eval_interval=", absl::FormatDuration(o.eval_interval)),
        absl::StrCat("--target_accuracy=", o.target_accuracy),
        absl::StrCat("--snapshot_interval=", absl::FormatDuration(o.snapshot_interval)),
        std::string("--progress_interval=1s")}) {
    flags.push_back(std::move(flag));
  }
  if (!start_file.empty()) flags.push_back(absl::StrCat("--start_file=", start_file));
  if (o.sync) {
    flags.push_back("--max_in_flight=1");
    flags.push_back("--synchronous");
  }
  if (o.dp_clip > 0) flags.push_back(absl::StrCat("--dp_clip=", o.dp_clip));
  if (o.metrics_base_port > 0) {
    flags.push_back(
        absl::StrCat("--metrics_listen=127.0.0.1:", o.metrics_base_port + o.shards + index));
  }
  flags.insert(flags.end(), o.worker_flags.begin(), o.worker_flags.end());
  return flags;
}

std::vector<std::string> EvaluatorFlags(const LocalRunOptions& o,
                                        const std::vector<std::string>& shard_addresses) {
  std::vector<std::string> flags = ModelAndDataFlags(o, shard_addresses);
  flags.push_back("--mode=evaluate");
  flags.insert(flags.end(), o.worker_flags.begin(), o.worker_flags.end());
  return flags;
}

namespace {

// "--<flag>=<value>: <expected>": every message names the flag, what it got and what it takes.
template <typename T>
absl::Status Bad(absl::string_view flag, const T& value, absl::string_view expected) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value, ": ", expected));
}

// The ports, the report's settings and the timeouts of ValidateLocalRunOptions.
absl::Status ValidatePortsAndTimes(const LocalRunOptions& o) {
  if (o.base_port < 0 || o.base_port + o.shards > 65536) {
    return Bad("base_port", o.base_port,
               absl::StrCat("expected 0 or a port with base_port + shards <= 65536"));
  }
  if (o.metrics_base_port < 0 || o.metrics_base_port + o.shards + o.workers > 65536) {
    return Bad("metrics_base_port", o.metrics_base_port,
               "expected 0 or a port with metrics_base_port + shards + workers <= 65536");
  }
  if (!o.prometheus_config.empty() && o.metrics_base_port == 0) {
    return Bad("prometheus_config", o.prometheus_config,
               "needs --metrics_base_port (the ports the configuration scrapes)");
  }
  if (!(o.target_accuracy > 0 && o.target_accuracy <= 1)) {
    return Bad("target_accuracy", o.target_accuracy, "expected a fraction in (0, 1]");
  }
  if (o.snapshot_interval < absl::ZeroDuration()) {
    return Bad("snapshot_interval", absl::FormatDuration(o.snapshot_interval),
               "expected >= 0 (0: off)");
  }
  for (const auto& [flag, value] : {std::pair{"stop_grace", o.stop_grace},
                                    {"startup_timeout", o.startup_timeout},
                                    {"evaluation_timeout", o.evaluation_timeout},
                                    {"progress_interval", o.progress_interval},
                                    {"sync_deadline", o.sync_deadline}}) {
    if (value <= absl::ZeroDuration()) {
      return Bad(flag, absl::FormatDuration(value), "expected > 0");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateLocalRunOptions(const LocalRunOptions& o) {
  if (o.shards < 1) return Bad("shards", o.shards, "expected >= 1");
  if (o.workers < 1) return Bad("workers", o.workers, "expected >= 1");
  if (o.epochs < 1) return Bad("epochs", o.epochs, "expected >= 1");
  if (o.batch_size < 1) return Bad("batch_size", o.batch_size, "expected >= 1");
  if (o.split_threshold < 0) {
    return Bad("split_threshold", o.split_threshold, "expected >= 0 (0: never split)");
  }
  if (!(o.rank_fraction > 0 && o.rank_fraction <= 1)) {
    return Bad("rank_fraction", o.rank_fraction, "expected a fraction in (0, 1]");
  }
  if (!(o.compression_rank_fraction >= 0 && o.compression_rank_fraction <= 1)) {
    return Bad("compression_rank_fraction", o.compression_rank_fraction,
               "expected a fraction in [0, 1] (0: --rank_fraction)");
  }
  if (!(o.lr > 0)) return Bad("lr", o.lr, "expected > 0");
  if (!(o.adamw_lr > 0)) return Bad("adamw_lr", o.adamw_lr, "expected > 0");
  if (!(o.lr_cooldown >= 0 && o.lr_cooldown <= 1)) {
    return Bad("lr_cooldown", o.lr_cooldown, "expected a fraction of the run in [0, 1]");
  }
  if (!(o.lr_final_scale >= 0 && o.lr_final_scale <= 1)) {
    return Bad("lr_final_scale", o.lr_final_scale, "expected a multiplier in [0, 1]");
  }
  if (absl::Status s = ValidateLookahead(o.lookahead); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", s.message()));
  }
  if (o.lr_schedule_samples < 0) {
    return Bad("lr_schedule_samples", o.lr_schedule_samples, "expected >= 0 (0: computed)");
  }
  if (o.dataset != "fashion-mnist" && o.dataset != "synthetic") {
    return Bad("dataset", o.dataset, "expected fashion-mnist or synthetic");
  }
  if (o.partition != "iid" && o.partition != "dirichlet") {
    return Bad("partition", o.partition, "expected iid or dirichlet");
  }
  if (o.partition == "dirichlet" && !(o.dirichlet_alpha > 0)) {
    return Bad("dirichlet_alpha", o.dirichlet_alpha, "expected > 0");
  }
  if (o.max_staleness < 0) return Bad("max_staleness", o.max_staleness, "expected >= 0");
  if (!(o.dp_clip >= 0 && std::isfinite(o.dp_clip))) {
    return Bad("dp_clip", o.dp_clip, "expected a norm >= 0 (0: off)");
  }
  if (!(o.dp_noise_multiplier >= 0 && std::isfinite(o.dp_noise_multiplier))) {
    return Bad("dp_noise_multiplier", o.dp_noise_multiplier, "expected >= 0 (0: off)");
  }
  if (o.dp_noise_multiplier > 0 && o.dp_clip == 0) {
    return Bad("dp_clip", o.dp_clip, "expected > 0 with --dp_noise_multiplier: C scales the noise");
  }
  if (o.target_workers < 0 || o.target_workers > o.workers) {
    return Bad("target_workers", o.target_workers,
               absl::StrCat("expected 0 (none) .. --workers (", o.workers,
                            "); more would make every batch wait for the deadline"));
  }
  // The rule of server/checkpoint/checkpoint_cut.h, checked here so a run does not fail at its
  // end; empty: the default run id.
  if (o.run_id.size() > 128 ||
      o.run_id.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789._-") != std::string::npos) {
    return Bad("run_id", o.run_id, "expected 1-128 bytes of [A-Za-z0-9._-]");
  }
  for (const std::string& entry : o.shard_env) {
    if (entry.empty() || entry.front() == '=' || entry.find('=') == std::string::npos) {
      return Bad("shard_env", entry, "expected NAME=VALUE");
    }
  }
  if (absl::Status s = ValidatePortsAndTimes(o); !s.ok()) return s;
  if (o.links.delay < absl::ZeroDuration() || o.links.delay > absl::Seconds(10)) {
    return Bad("link_delay", absl::FormatDuration(o.links.delay), "expected 0 .. 10s one-way");
  }
  if (o.links.enabled() && o.workers > WorkerLinks::kMaxWorkers) {
    return Bad("workers", o.workers,
               absl::StrCat("expected <= ", WorkerLinks::kMaxWorkers, " with --link_rate / --link_delay"));
  }
  if (o.server_binary.empty() || o.worker_binary.empty()) {
    return absl::InvalidArgumentError("the dion-server and dion-worker paths must be set");
  }
  return absl::OkStatus();
}

std::string CommandLines(const LocalRunOptions& o) {
  std::vector<std::string> addresses;
  std::string lines;
  const std::string run_dir = o.run_dir.empty() ? "<run_dir>" : o.run_dir;
  const std::string shard_env = absl::StrJoin(o.shard_env, " ") + (o.shard_env.empty() ? "" : " ");
  for (int i = 0; i < o.shards; ++i) {
    addresses.push_back(o.base_port > 0 ? absl::StrCat("127.0.0.1:", o.base_port + i)
                                        : absl::StrCat("127.0.0.1:<port-of-shard-", i, ">"));
    absl::StrAppend(&lines, "shard ", i, ": ", shard_env, o.server_binary, " ",
                    absl::StrJoin(ShardFlags(o, i, absl::StrCat(run_dir, "/shard-", i,
                                                                "/checkpoints")),
                                  " "),
                    "\n");
  }
  const std::string worker_binary =
      o.worker_args.empty()
          ? o.worker_binary
          : absl::StrCat(o.worker_binary, " ", absl::StrJoin(o.worker_args, " "));
  for (int j = 0; j < o.workers; ++j) {
    absl::StrAppend(&lines, "worker ", j, ": ", worker_binary, " ",
                    absl::StrJoin(WorkerFlags(o, j, addresses, run_dir + "/logs/.start"), " "),
                    "\n");
  }
  absl::StrAppend(&lines, "evaluator: ", worker_binary, " ",
                  absl::StrJoin(EvaluatorFlags(o, addresses), " "), "\n");
  return lines;
}

std::string PrometheusConfig(const LocalRunOptions& o) {
  std::string config = absl::StrCat(
      "# Prometheus configuration for a `dion local` run (--shards=", o.shards,
      " --workers=", o.workers, " --metrics_base_port=", o.metrics_base_port,
      "), written by dion local.\n"
      "#   prometheus --config.file=THIS_FILE --storage.tsdb.path=/tmp/dion-prometheus \\\n"
      "#     --web.listen-address=127.0.0.1:9090\n"
      "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n");
  if (!o.alert_rules.empty()) {
    absl::StrAppend(&config, "\nrule_files:\n  - \"", o.alert_rules, "\"\n");
  }
  absl::StrAppend(&config, "\nscrape_configs:\n  - job_name: dion-ps\n    static_configs:\n");
  for (int i = 0; i < o.shards; ++i) {
    absl::StrAppend(&config, "      - targets: [\"127.0.0.1:", o.metrics_base_port + i,
                    "\"]\n        labels: {shard: \"", i, "\"}\n");
  }
  absl::StrAppend(&config, "  - job_name: dion-worker\n    static_configs:\n");
  for (int j = 0; j < o.workers; ++j) {
    absl::StrAppend(&config, "      - targets: [\"127.0.0.1:", o.metrics_base_port + o.shards + j,
                    "\"]\n        labels: {worker: \"", j, "\"}\n");
  }
  return config;
}

// The options as summary.json's "config", in flag order.
std::vector<std::pair<std::string, ConfigValue>> SummaryConfig(const LocalRunOptions& o) {
  return {{"shards", int64_t{o.shards}},
          {"workers", int64_t{o.workers}},
          {"dataset", o.dataset},
          {"data_dir", o.data_dir},
          {"partition", o.partition},
          {"dirichlet_alpha", o.dirichlet_alpha},
          {"epochs", int64_t{o.epochs}},
          {"batch_size", int64_t{o.batch_size}},
          {"rank_fraction", o.rank_fraction},
          {"split_threshold", o.split_threshold},
          {"compression_rank_fraction", o.compression_rank_fraction},
          {"lr", o.lr},
          {"adamw_lr", o.adamw_lr},
          {"lr_cooldown", o.lr_cooldown},
          {"lr_final_scale", o.lr_final_scale},
          {"lookahead", o.lookahead},
          {"lr_schedule_samples", o.lr_schedule_samples},
          {"seed", static_cast<int64_t>(o.seed)},
          {"eval_interval", absl::FormatDuration(o.eval_interval)},
          {"snapshot_interval", absl::FormatDuration(o.snapshot_interval)},
          {"staleness_policy", o.staleness_policy},
          {"max_staleness", o.max_staleness},
          {"target_samples", o.target_samples},
          {"target_workers", int64_t{o.target_workers}},
          {"batch_deadline", absl::FormatDuration(o.batch_deadline)},
          {"adaptive_batching", o.adaptive_batching},
          {"sync", o.sync},
          {"dp_clip", o.dp_clip},
          {"dp_noise_multiplier", o.dp_noise_multiplier},
          {"insecure", o.insecure},
          {"link_rate", o.links.rate_bits > 0 ? FormatLinkRate(o.links.rate_bits) : "0"},
          {"link_delay", absl::FormatDuration(o.links.delay)},
          {"server_flags", absl::StrJoin(o.server_flags, " ")},
          {"worker_flags", absl::StrJoin(o.worker_flags, " ")},
          {"server_binary", o.server_binary},
          {"worker_binary", o.worker_binary}};
}

// "local-" + the run directory's name, with bytes outside [A-Za-z0-9._-] as '-', at most
// 128 bytes (a run id, server/checkpoint/checkpoint_cut.h).
std::string DefaultRunId(const std::string& run_dir) {
  std::filesystem::path dir = std::filesystem::path(run_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // a trailing '/'
  std::string id = absl::StrCat("local-", dir.filename().string());
  for (char& c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_') c = '-';
  }
  return id.substr(0, 128);
}

std::string DefaultRunDir() {
  const std::string base =
      absl::StrCat("runs/", absl::FormatTime("%Y%m%d-%H%M%S", absl::Now(), absl::LocalTimeZone()));
  std::string dir = base;
  for (int n = 2; std::filesystem::exists(dir); ++n) dir = absl::StrCat(base, "-", n);
  return dir;
}

}  // namespace dion
