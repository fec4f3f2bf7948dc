// The command lines of the children of `dion local` (worker/local/local_run.h): how the options
// map onto dion-server and dion-worker flags (docs/server.md, dion-worker --help).
//
// The children get the topology (ports, indices, counts, paths), what the report reads, and
// every other option only when it differs from the children's own default
// (common/training_defaults.h). Pass-through flags (options.server_flags / worker_flags) come
// last, so they override what is derived here (Abseil flags: the last occurrence wins).
// ValidateLocalRunOptions (declared in worker/local/local_run.h) is defined here too, next to
// the use of each option.
//
// Thread-safety: pure functions.
#ifndef DION_WORKER_LOCAL_RUN_FLAGS_H_
#define DION_WORKER_LOCAL_RUN_FLAGS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/local/local_run.h"
#include "worker/local/run_summary.h"

namespace dion {

// The lr schedule's horizon: options.lr_schedule_samples when set, else epochs x the
// training-set size (the Fashion-MNIST labels file in data_dir, or --synthetic_train_samples,
// default 32768), where an --epochs= or --synthetic_train_samples= in worker_flags overrides,
// as it does on the workers' command lines; 0 when options.lr_cooldown is 0. NotFound /
// DataLoss from reading the labels file; InvalidArgument for such a worker flag that is not
// an integer >= 1. A run cut short by --max_steps ends before the cooldown does.
absl::StatusOr<int64_t> ScheduleSamples(const LocalRunOptions& options);

// Shard `index`: address (127.0.0.1, base_port + index or a free port), metrics, checkpoint
// directory, staleness and batching, the lr schedule (options.lr_schedule_samples must be
// resolved by ScheduleSamples); under options.sync every batch waits for all workers.
std::vector<std::string> ShardFlags(const LocalRunOptions& options, int index,
                                    const std::string& checkpoint_dir);

// Worker `index` against the shards at `shard_addresses` (in shard-index order): model,
// optimizer, data, partition, epochs, seeds (model: options.seed; shuffling: seed*1000+index),
// one progress line a second; under options.sync one push in flight per parameter and
// synchronous steps (each waits for the shards' next version). A non-empty `start_file`: the
// worker waits for that file before its first step (dion-worker --start_file).
std::vector<std::string> WorkerFlags(const LocalRunOptions& options, int index,
                                     const std::vector<std::string>& shard_addresses,
                                     const std::string& start_file = "");

// `dion-worker --mode=evaluate` against the shards: the same model and data flags as the
// workers (the model table must match the registered one).
std::vector<std::string> EvaluatorFlags(const LocalRunOptions& options,
                                        const std::vector<std::string>& shard_addresses);

// The command lines `dion local` starts, one a line: "shard <i>: <server_binary> <flags>",
// "worker <j>: <worker_binary> <flags>", "evaluator: <worker_binary> <flags>". Shards listen on
// base_port + i, or on a port each picks at start, shown as 127.0.0.1:<port-of-shard-i>;
// checkpoints and the start file go under run_dir, shown as <run_dir> when it is empty (the
// run picks it then).
// options.lr_schedule_samples must be resolved by ScheduleSamples. For `dion local --dry_run`.
std::string CommandLines(const LocalRunOptions& options);

// A Prometheus configuration for the run's metrics ports, in the format of
// deploy/prometheus/prometheus-local.yml: 5 s scrape and evaluation interval, job dion-ps with
// label shard="i" per shard, job dion-worker with label worker="j" per worker (the job and
// label names of the Kubernetes configuration, so the alert rules and the dashboard apply),
// and options.alert_rules in rule_files when it is set.
// REQUIRES: ValidateLocalRunOptions(options) ok and options.metrics_base_port > 0.
std::string PrometheusConfig(const LocalRunOptions& options);

// The options as summary.json's "config", in flag order.
std::vector<std::pair<std::string, ConfigValue>> SummaryConfig(const LocalRunOptions& options);

// "local-" + the run directory's name, with bytes outside [A-Za-z0-9._-] as '-', at most
// 128 bytes (a run id, server/checkpoint/checkpoint_cut.h).
std::string DefaultRunId(const std::string& run_dir);
// runs/<local time YYYYmmdd-HHMMSS>, with -2, -3, ... when it exists.
std::string DefaultRunDir();

}  // namespace dion

#endif  // DION_WORKER_LOCAL_RUN_FLAGS_H_
