// The training loop of one worker: epochs over its partition of the data, one MLP
// forward/backward per mini-batch on the client's replica, gradients handed to the client
// (worker/client/client.h), periodic progress and, on the designated worker, test-set evaluation.
//
// An epoch is samples_per_epoch samples of this worker's partition in the order EpochOrder
// gives (worker/train/epoch_order.h): by default one pass, reshuffled each epoch from the seed,
// so W workers together see the whole training set once per epoch.
//
// Thread-safety: Train runs on the calling thread; `stop` may be set from any thread (a
// signal handler) and ends the loop after the current step.
#ifndef DION_WORKER_TRAIN_TRAINER_H_
#define DION_WORKER_TRAIN_TRAINER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/client/client.h"
#include "worker/train/dataset.h"
#include "worker/train/lookahead.h"
#include "worker/train/mlp.h"
#include "worker/train/progress_line.h"
#include "worker/train/time_to_target.h"
#include "worker/client/worker_metrics.h"

namespace dion {

struct TrainerOptions {
  int epochs = 1;                                       // epochs (>= 1)
  // Samples per epoch (SamplesPerEpoch, epoch_order.h); 0: the partition's size (one pass).
  int64_t samples_per_epoch = 0;
  int batch_size = 64;                                  // samples per local step (>= 1)
  int64_t max_steps = 0;                                // stop after this many steps; 0: none
  absl::Duration progress_interval = absl::Seconds(5);  // how often on_progress runs (and
                                                        // after every evaluation)
  bool evaluate = false;                                // evaluate on the test set
  absl::Duration eval_interval = absl::Seconds(10);     // between evaluations; also at the end
  int eval_batch_size = 1000;
  // When evaluating, the first time target_accuracy is reached is located at the grain of
  // snapshot_interval rather than eval_interval (TimeToTargetSearch, time_to_target.h): the
  // weights are copied that often between evaluations, and the copies evaluated when an
  // evaluation first reaches the target are reported each at the time it was copied. Off
  // unless both are > 0. The search stalls training for one evaluation per copy.
  double target_accuracy = 0;
  absl::Duration snapshot_interval = absl::ZeroDuration();
  // Staleness compensation: compute each local step's gradient at the replica extrapolated
  // this many versions ahead along its last step, X + lookahead (X - X_prev) (Replica::
  // Extrapolate), rather than at X. By the time an asynchronous push is applied the weights have
  // moved on (staleness); with momentum, consecutive steps point the same way, so the
  // extrapolated point is closer to where the gradient is used. 0: the replica as it is.
  // Evaluations always use the replica as it is. In [0, kMaxLookahead]; > 0 needs a client
  // with ClientOptions::track_last_step.
  double lookahead = 0;
  uint64_t seed = 1;                                    // shuffling
  absl::Duration flush_timeout = absl::Seconds(60);     // final Flush; a synchronous step
  // Stopped by `stop` (SIGTERM): the final flush is Client::FlushAll (the residuals E go out
  // whole, nothing accumulated is lost) and waits this long for the acknowledgements.
  absl::Duration stop_flush_timeout = absl::Seconds(5);
  // Synchronous steps: after each Submit, flush and wait (up to flush_timeout) until every
  // parameter's replica version has moved past the one the step's gradients were computed at.
  // With shards that close a batch only when every worker contributed (dion local --sync) this
  // is synchronous data-parallel training: one gradient per worker per optimizer step, all at
  // the same weights, none accumulated while waiting.
  bool synchronous = false;
};

struct TrainerProgress {
  int epoch = 0;                 // 1-based, current
  int64_t steps = 0;             // local steps so far
  int64_t samples = 0;           // training samples so far
  double elapsed_seconds = 0;
  double samples_per_second = 0;  // over the last progress interval
  double train_loss = 0;          // mean loss of the steps in the last progress interval
  std::optional<Evaluation> evaluation;  // the latest one, if any
  double evaluation_elapsed_seconds = 0;  // when the evaluated weights were copied
  ClientStats client;
  bool final = false;             // the report after the last step and the final Flush
  // After a stop: what Client::FlushAll pushed and left, and its status (not an error of
  // Train: the caller reports what was lost).
  struct StopFlush {
    absl::Status status;
    FlushReport report;
  };
  std::optional<StopFlush> stop_flush;
};

// The progress line (worker/train/progress_line.h) that worker `worker` prints for `progress`.
ProgressLine ToProgressLine(int worker, const TrainerProgress& progress);

// Trains until `options.epochs` passes, `max_steps`, or `stop`; then flushes the client (after
// `stop`: with the residuals, for stop_flush_timeout, reported in TrainerProgress::stop_flush)
// and (when evaluating) evaluates once more, after waiting briefly for the replica to receive
// the last versions. on_progress runs every progress_interval and after every evaluation
// (snapshot evaluations included, in time order). Errors: the client's (Unavailable after a
// shard is gone for good, ...), or InvalidArgument for options or data that do not fit the model.
absl::StatusOr<TrainerProgress> Train(Client& client, const Dataset& train, const Dataset* test,
                                      const TrainerOptions& options, WorkerMetrics* metrics,
                                      const std::function<void(const TrainerProgress&)>& on_progress,
                                      const std::atomic<bool>* stop = nullptr);

}  // namespace dion

#endif  // DION_WORKER_TRAIN_TRAINER_H_
