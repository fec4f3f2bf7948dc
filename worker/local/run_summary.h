// The end of a `dion local` run (worker/local/local_run.h): the human-readable report, summary.json
// and curves.svg, all computed from a RunSummary (SummarizeRun makes one from the run's
// RunAggregate, worker/local/run_report.h).
//
// Thread-safety: pure functions (WriteTextFile touches only its own path).
#ifndef DION_WORKER_LOCAL_RUN_SUMMARY_H_
#define DION_WORKER_LOCAL_RUN_SUMMARY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "worker/local/run_report.h"

namespace dion {

using ConfigValue = std::variant<std::string, int64_t, double, bool>;

// The coordinated checkpoint taken at the end of the run (`dion checkpoint`): every shard
// holds `cut` of `run_id`, which dion-server --restore_cut=<cut> restores.
struct RunCheckpoint {
  std::string run_id;
  uint64_t cut = 0;
};

// The differential privacy the run spent (docs/privacy.md): every shard's applied batches
// composed, as the shards' Status reported them at the end.
struct RunPrivacy {
  double epsilon = 0;
  double delta = 0;
  double noise_multiplier = 0;  // sigma (the largest over the shards)
  double clip = 0;              // C
  double sampling_rate = 0;     // q (the largest over the shards)
  int64_t steps = 0;            // batches applied, all shards
};

// A parameter the shards split by rows (dion local --split_threshold): each owner's rows
// [begin, end) of the tall side, in row order.
struct RunSplitParameter {
  struct Owner {
    int shard = 0;
    int64_t row_begin = 0;
    int64_t row_end = 0;
  };
  std::string parameter;
  std::vector<Owner> owners;
};

// Everything the end of a run reports.
struct RunSummary {
  std::string status = "ok";  // "ok", "failed" (a child failed) or "interrupted"
  std::vector<std::pair<std::string, ConfigValue>> config;  // the options, in flag order
  std::optional<EvaluationResult> final_evaluation;         // the authoritative one, at the end
  double wall_time_s = 0;      // start of the run to its end (the shards stopped)
  double training_time_s = 0;  // first worker's start to the last worker's final line
  double target_accuracy = 0.88;
  std::optional<double> time_to_target_s;        // run start to the first evaluation reaching it
  std::optional<double> train_time_to_target_s;  // the same from the evaluating worker's start
  double epochs = 0;
  RunTotals totals;
  std::vector<TrainLossPoint> train_loss;
  std::vector<EvalPoint> evaluations;
  std::string run_dir;
  std::optional<RunCheckpoint> checkpoint;  // none when it was not taken or failed
  std::optional<RunPrivacy> privacy;        // none when the shards added no noise
  // From the layout at the coordinated checkpoint; empty when none is split (or not taken).
  std::vector<RunSplitParameter> split_parameters;
};

// What the aggregate of a run's progress lines says: training time, time to target_accuracy
// (the first evaluation reaching it), epochs, totals and curves. The caller fills in the rest
// (status, config, final evaluation, wall time, run_dir).
RunSummary SummarizeRun(const RunAggregate& run, int workers, double target_accuracy);

// The human-readable report, one line each; the last is "test accuracy: NN.NN%" when there
// is a final evaluation.
std::vector<std::string> ReportLines(const RunSummary& summary);
// summary.json: the summary as one JSON object (non-finite numbers as null).
std::string SummaryJson(const RunSummary& summary);
// curves.svg: training and test loss, and test accuracy, against time and against epochs.
std::string CurvesSvg(const RunSummary& summary);
// Writes `contents` to `path` (replacing it) through a temporary file and rename.
absl::Status WriteTextFile(const std::string& path, absl::string_view contents);

}  // namespace dion

#endif  // DION_WORKER_LOCAL_RUN_SUMMARY_H_
