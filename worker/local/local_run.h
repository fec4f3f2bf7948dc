// `dion local`: a whole dion-ps training job on one machine. Starts `shards` dion-server and
// `workers` dion-worker processes on 127.0.0.1 (worker/local/process.h), wires them together,
// supervises them, shows progress, and ends with a report (worker/local/run_report.h).
//
// Sequence:
//   1. run_dir/{logs,shard-N/checkpoints} are created; every child's output goes to
//      run_dir/logs/<name>.log.
//   2. The shards start (port base_port + i, or a free port each when base_port is 0: the
//      bound address is read from the shard's start-up line).
//   3. The workers start against all shards; their progress lines are aggregated.
//   4. When every worker has finished, `dion-worker --mode=evaluate` pulls the final weights
//      once: that is the reported final test accuracy.
//   5. A coordinated checkpoint of all shards with `run_id` (options.checkpoint, see
//      LocalRunOptions), then the shards get SIGTERM and write a last checkpoint into
//      run_dir/shard-N/checkpoints.
//   6. The report goes to stdout; run_dir/summary.json and run_dir/curves.svg are written.
//
// Failures: a child that exits with a non-zero status or is killed (or a shard that exits at
// all before step 5) is reported on stderr with its name, exit status and last log lines;
// everything else is stopped and the run returns 1. SIGINT / SIGTERM: the workers get SIGTERM
// (they finish their step and flush), then the shards get SIGTERM (final checkpoint); a second
// signal meanwhile kills the children with SIGKILL. Every wait is bounded: a child that does not
// stop within `stop_grace` is killed.
//
// Thread-safety: RunLocal blocks SIGINT and SIGTERM in the calling thread (they are read with
// a signalfd) and must be called from a single-threaded program (the `dion` binary).
#ifndef DION_WORKER_LOCAL_RUN_H_
#define DION_WORKER_LOCAL_RUN_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls_config.h"
#include "common/training_defaults.h"
#include "worker/local/run_summary.h"
#include "worker/local/worker_links.h"

namespace dion {

// Every default here is the default of the matching `dion local` flag (worker/local/dion_main.cc).
struct LocalRunOptions {
  // Processes.
  int shards = 2;
  int workers = 4;
  std::string server_binary;              // path of dion-server (see FindSiblingBinary)
  std::string worker_binary;              // path of dion-worker
  // Arguments before the flags of every worker and of the evaluator: with --worker_command
  // (e.g. worker_binary python3 and {"fashion_cnn.py"}), a program that takes dion-worker's
  // flags and prints its lines (docs/python.md, "dion local").
  std::vector<std::string> worker_args;
  std::vector<std::string> server_flags;  // appended to every dion-server command line
  std::vector<std::string> worker_flags;  // appended to every dion-worker command line
  // "NAME=VALUE" set in the environment of the dion-server processes only, e.g.
  // OPENBLAS_CORETYPE=SandyBridge: shards on another BLAS kernel than the workers.
  std::vector<std::string> shard_env;

  // Model, data, optimizer, lr cooldown, batching and staleness. The defaults are the
  // binaries' own (common/training_defaults.h): a child gets such a flag only when its value
  // differs from the default (local_run_flags.h).
  std::string dataset = defaults::kDataset;
  std::string data_dir = defaults::kDataDir;
  std::string partition = defaults::kPartition;
  double dirichlet_alpha = defaults::kDirichletAlpha;
  int epochs = defaults::kEpochs;
  int batch_size = defaults::kBatchSize;
  double rank_fraction = defaults::kRankFraction;
  double compression_rank_fraction = defaults::kCompressionRankFraction;  // 0: rank_fraction
  double lr = defaults::kLr;             // Dion
  int64_t split_threshold = defaults::kSplitThreshold;  // dion-worker --split_threshold
  double adamw_lr = defaults::kAdamwLr;  // biases and the output layer
  double lookahead = defaults::kLookahead;  // dion-worker --lookahead; 0: off
  // Model init and partition (dion-worker --model_seed); worker j shuffles with seed*1000+j.
  uint64_t seed = defaults::kModelSeed;

  // What the report reads from worker 0: evaluations this often, and copies of its weights this
  // often between them, among which the first evaluation at target_accuracy is located
  // (dion-worker --snapshot_interval), so the time to target has this grain rather than
  // eval_interval's. 0: eval_interval's grain.
  absl::Duration eval_interval = absl::Seconds(2);
  absl::Duration snapshot_interval = absl::Milliseconds(150);

  // Learning-rate cooldown (passed to the shards): over the last lr_cooldown of the run's
  // samples every learning rate falls linearly to lr_final_scale of its value (0: constant).
  double lr_cooldown = defaults::kLrCooldownFraction;
  double lr_final_scale = defaults::kLrFinalScale;
  // Samples each parameter sees over the run; 0: epochs x training-set size (ScheduleSamples).
  int64_t lr_schedule_samples = 0;

  // Batching and staleness (passed to the shards).
  std::string staleness_policy = defaults::kStalenessPolicy;
  int64_t max_staleness = defaults::kMaxStaleness;
  int64_t target_samples = defaults::kTargetSamples;
  int target_workers = defaults::kTargetWorkers;
  absl::Duration batch_deadline = defaults::kBatchDeadline;
  bool adaptive_batching = defaults::kAdaptiveBatching;
  // Synchronous setting: every batch waits for all workers (target_workers = workers, no
  // sample target, no adaptation, deadline sync_deadline), one push in flight per worker.
  bool sync = false;
  absl::Duration sync_deadline = absl::Seconds(10);

  // Differential privacy (docs/privacy.md): workers clip to dp_clip (0: off), shards add noise
  // with dp_noise_multiplier (0: off; needs dp_clip > 0).
  double dp_clip = 0;
  double dp_noise_multiplier = 0;

  // Where and how.
  std::string run_dir;            // empty: ./runs/<local time YYYYmmdd-HHMMSS>
  int base_port = 0;              // shard i listens on base_port + i; 0: free ports
  int metrics_base_port = 0;      // shard i: base + i, worker j: base + shards + j; 0: disabled
  // Written before the children start: a Prometheus configuration scraping those ports
  // (PrometheusConfig in worker/local/local_run_flags.h). Empty: none. Needs metrics_base_port.
  std::string prometheus_config;
  std::string alert_rules;        // absolute path of dion-alerts.yml for it; empty: no rules
  double target_accuracy = 0.88;  // "time to X% accuracy" in the report
  enum class Progress { kLive, kLines, kQuiet };
  Progress progress = Progress::kLines;  // live: one line rewritten in place (a terminal)
  absl::Duration progress_interval = absl::Seconds(5);  // between lines in kLines mode
  absl::Duration startup_timeout = absl::Seconds(30);   // for a shard to report its address
  absl::Duration stop_grace = absl::Seconds(30);        // SIGTERM to SIGKILL
  absl::Duration evaluation_timeout = absl::Seconds(120);
  // Plaintext without tokens instead of the run's throwaway CA, TLS and tokens
  // (worker/local/local_security.h).
  bool insecure = false;
  // Each worker behind a link of this rate (both directions) and one-way delay to the shards
  // (worker/local/worker_links.h; needs root). Not enabled: the workers use loopback.
  LinkSpec links;

  // The coordinated checkpoint at the end of the run (after the final evaluation): `checkpoint`
  // gets the shards' addresses and the run id and returns the cut they all wrote and the lines
  // to print, or the error (the run then fails). Null: none is taken. The `dion` binary sets
  // it to `dion checkpoint` (worker/local/coordinated_checkpoint.h), so that this library
  // links no gRPC. run_id empty: "local-" + the run directory's name.
  std::string run_id;
  struct TakenCheckpoint {
    RunCheckpoint cut;
    std::vector<std::string> lines;  // one per shard
    std::optional<RunPrivacy> privacy;  // from the shards' Status, when they add noise
    std::vector<RunSplitParameter> split_parameters;  // from the shards' layout
  };
  // `tls` holds the run's CA and an admin token, or nothing with `insecure`.
  std::function<absl::StatusOr<TakenCheckpoint>(const std::vector<std::string>& shards,
                                                const std::string& run_id,
                                                const TlsClientConfig& tls)>
      checkpoint;
};

// InvalidArgument naming the first option out of range.
absl::Status ValidateLocalRunOptions(const LocalRunOptions& options);

// Runs the job. Returns the process exit code: 0 after a complete run, 1 when a child failed
// or the run could not be set up, 130 when interrupted by SIGINT or SIGTERM.
int RunLocal(const LocalRunOptions& options);

// Finds the executable `name` for the `dion` binary at `self_exe`: `override_path` if not
// empty (it must be executable), else the first executable of `candidates` (paths relative to
// the directory of self_exe, e.g. "../server/dion-server" in the build tree and "dion-server"
// next to an installed `dion`). NotFound lists every place looked at.
absl::StatusOr<std::string> FindSiblingBinary(const std::string& self_exe,
                                              const std::string& override_path,
                                              const std::vector<std::string>& candidates);

// The same search for a readable (not necessarily executable) file, e.g. the alert rules.
absl::StatusOr<std::string> FindSiblingFile(const std::string& self_exe,
                                            const std::vector<std::string>& candidates);

}  // namespace dion

#endif  // DION_WORKER_LOCAL_RUN_H_
