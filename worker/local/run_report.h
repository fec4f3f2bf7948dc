// What `dion local` (worker/local/local_run.h) makes of its workers' progress lines
// (worker/train/progress_line.h): their aggregation across workers (live status, totals,
// curves). Counters are cumulative per worker, so the totals come from each worker's latest
// line. The end-of-run products are in worker/local/run_summary.h.
//
// Times: `time_s` is seconds since the run started (the supervisor's clock). A worker's own
// elapsed_s counts from its training start; the aggregate maps it onto the run's clock with the
// offset seen on that worker's lines (arrival time - elapsed_s, the smallest seen).
//
// Thread-safety: none (the supervisor's thread owns a RunAggregate); the free functions are pure.
#ifndef DION_WORKER_RUN_REPORT_H_
#define DION_WORKER_RUN_REPORT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/train/progress_line.h"

namespace dion {

struct TrainLossPoint {
  double time_s = 0;
  double epochs = 0;
  double loss = 0;  // mean over workers of their latest interval loss
};

struct EvalPoint {
  double time_s = 0;
  double epochs = 0;
  double test_loss = 0;
  double test_accuracy = 0;
};

// Sums over workers, from each worker's latest line.
struct RunTotals {
  int64_t samples = 0;
  int64_t steps = 0;
  int64_t pushes = 0;
  int64_t accepted = 0;
  int64_t refused = 0;
  int64_t resyncs = 0;
  int64_t reconnects = 0;
  int64_t sent_bytes = 0;            // pushes' payload
  int64_t dense_bytes = 0;           // the pushes as dense gradients
  int64_t received_bytes = 0;        // versions received by the workers (broadcasts, pulls)
  int64_t received_dense_bytes = 0;  // those versions as dense values
  std::vector<int64_t> staleness_hist;  // summed bin by bin
  double mean_staleness = 0;            // weighted by accepted pushes
};

// What the live progress line shows.
struct LiveStatus {
  double epochs = 0;                    // passes over the training set so far (see RunAggregate)
  double samples_per_s = 0;             // sum over workers still training
  double loss = 0;                      // mean over workers of their latest interval loss
  std::optional<double> test_accuracy;  // the latest evaluation
  int workers_reporting = 0;
  int workers_finished = 0;
  RunTotals totals;
};

// "1.23 GB", "512.0 kB", "17 B" (powers of 1000).
std::string HumanBytes(int64_t bytes);
// The progress line of `dion local`: "[  12.3s] epoch 1.52/12  21000 samples/s  loss 0.4123
// test acc 85.12%  staleness 1.20  sent 120.3 MB + received 80.1 MB / dense 1.2 GB" (the
// workers' pushes and the versions they received, against dense float32 both ways), plus how
// many workers are done once some are. `now_s`: seconds since the run started.
std::string StatusLine(const LiveStatus& status, double now_s, int epochs, int workers);

class RunAggregate {
 public:
  explicit RunAggregate(int num_workers);

  // Size of the whole training set: epochs = samples of all workers / this. Unknown (0):
  // epochs = the mean of the workers' current epoch numbers.
  void SetTrainingSetSize(int64_t samples) { training_set_size_ = samples; }
  // A parsed line of worker `line.worker` that arrived `now_s` seconds into the run. Lines of
  // workers outside [0, num_workers) are ignored.
  void Add(const ProgressLine& line, double now_s);

  LiveStatus Live() const;
  RunTotals Totals() const;
  double Epochs() const;
  const std::vector<TrainLossPoint>& train_loss() const { return train_loss_; }
  // The evaluations of the lowest-index worker that evaluates (worker 0 by default), in order.
  std::vector<EvalPoint> Evaluations() const;
  // The first of Evaluations() with test_accuracy >= accuracy.
  std::optional<EvalPoint> FirstReaching(double accuracy) const;
  // When the worker started training / printed its final line, on the run's clock.
  std::optional<double> TrainingStart(int worker) const;
  std::optional<double> TrainingEnd(int worker) const;

 private:
  struct WorkerState {
    std::optional<ProgressLine> latest;
    std::optional<double> start_s;  // arrival - elapsed_s, smallest seen
    std::optional<double> end_s;    // arrival of the final line
    std::vector<EvalPoint> evaluations;
  };
  double EpochsAt(double time_s) const;

  int64_t training_set_size_ = 0;
  std::vector<WorkerState> workers_;
  std::vector<TrainLossPoint> train_loss_;
};

}  // namespace dion

#endif  // DION_WORKER_RUN_REPORT_H_
