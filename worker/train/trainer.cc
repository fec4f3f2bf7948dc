#include "worker/train/trainer.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace dion {
namespace {

std::vector<const Matrix*> Views(const std::vector<Matrix>& weights) {
  std::vector<const Matrix*> views;
  views.reserve(weights.size());
  for (const Matrix& w : weights) views.push_back(&w);
  return views;
}

// A synchronous step's barrier: flushes, then waits (woken by the updates arriving on the
// client's subscription threads) until every parameter's version exceeds `versions`.
absl::Status WaitForNextVersions(Client& client, const std::vector<int64_t>& versions,
                                 absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  if (absl::Status s = client.Flush(timeout); !s.ok()) return s;
  absl::Status s =
      client.WaitForVersionsAbove(versions, std::max(absl::ZeroDuration(), deadline - absl::Now()));
  if (absl::IsDeadlineExceeded(s)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "synchronous step: no new version within ", absl::FormatDuration(timeout), " (",
        s.message(), "); do the shards close a batch without this worker (target_workers, ",
        "deadline)?"));
  }
  return s;
}

}  // namespace

ProgressLine ToProgressLine(int worker, const TrainerProgress& p) {
  const ClientStats& c = p.client;
  ProgressLine line;
  line.final = p.final;
  line.worker = worker;
  line.epoch = p.epoch;
  line.steps = p.steps;
  line.samples = p.samples;
  line.elapsed_s = p.elapsed_seconds;
  line.samples_per_s = p.samples_per_second;
  line.loss = p.train_loss;
  line.pushes = c.pushes;
  line.accepted = c.accepted;
  line.refused = c.refused;
  line.resyncs = c.resyncs;
  line.reconnects = c.reconnects;
  line.sent_bytes = c.sent_bytes;
  line.dense_bytes = c.dense_bytes;
  line.mean_staleness =
      c.accepted > 0 ? static_cast<double>(c.staleness_sum) / c.accepted : 0.0;
  line.staleness_hist.assign(c.staleness.begin(), c.staleness.end());
  if (p.evaluation.has_value()) {
    line.test_loss = p.evaluation->loss;
    line.test_accuracy = p.evaluation->accuracy;
    line.eval_elapsed_s = p.evaluation_elapsed_seconds;
  }
  return line;
}

absl::StatusOr<TrainerProgress> Train(Client& client, const Dataset& train, const Dataset* test,
                                      const TrainerOptions& options, WorkerMetrics* metrics,
                                      const std::function<void(const TrainerProgress&)>& on_progress,
                                      const std::atomic<bool>* stop) {
  if (options.epochs < 1 || options.batch_size < 1 || options.eval_batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "epochs, batch_size and eval_batch_size must be >= 1, got ", options.epochs, ", ",
        options.batch_size, ", ", options.eval_batch_size));
  }
  if (absl::Status s = ValidateLookahead(options.lookahead); !s.ok()) return s;
  if (options.lookahead > 0 && !client.tracks_last_step()) {
    return absl::InvalidArgumentError(
        "lookahead > 0 needs a client connected with ClientOptions::track_last_step");
  }
  if (train.size() == 0) {
    return absl::InvalidArgumentError("this worker's training partition is empty");
  }
  if (!(options.target_accuracy >= 0 && options.target_accuracy <= 1) ||
      options.snapshot_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target_accuracy must be in [0, 1] and snapshot_interval >= 0, got ",
        options.target_accuracy, " and ", absl::FormatDuration(options.snapshot_interval)));
  }
  if (options.evaluate && (test == nullptr || test->size() == 0)) {
    return absl::InvalidArgumentError("evaluation asked for, but there is no test set");
  }
  const absl::Time start = absl::Now();
  std::mt19937_64 shuffle(options.seed);
  std::vector<int64_t> order(train.size());
  std::iota(order.begin(), order.end(), 0);

  std::vector<Matrix> weights;
  std::vector<Matrix> gradients;
  std::vector<int64_t> versions(client.specs().size());  // synchronous: the step's versions
  MlpWorkspace workspace;
  Matrix X;
  std::vector<int> labels;

  TrainerProgress progress;
  absl::Time last_report = start;
  int64_t samples_at_report = 0;
  double loss_sum = 0;
  int64_t loss_steps = 0;
  absl::Time last_eval = start;

  const auto report = [&](absl::Time now) {
    progress.elapsed_seconds = absl::ToDoubleSeconds(now - start);
    const double interval = absl::ToDoubleSeconds(now - last_report);
    if (interval > 0) {
      progress.samples_per_second = (progress.samples - samples_at_report) / interval;
    }
    if (loss_steps > 0) progress.train_loss = loss_sum / loss_steps;
    progress.client = client.stats();
    if (metrics != nullptr) metrics->SetSamplesPerSecond(progress.samples_per_second);
    last_report = now;
    samples_at_report = progress.samples;
    loss_sum = 0;
    loss_steps = 0;
    if (on_progress) on_progress(progress);
  };
  // A report between two regular ones (a snapshot's evaluation): the rates keep accumulating.
  const auto report_evaluation = [&]() {
    progress.elapsed_seconds = absl::ToDoubleSeconds(absl::Now() - start);
    progress.client = client.stats();
    if (on_progress) on_progress(progress);
  };

  // Weight copies since the last evaluation, while the target is not reached yet.
  struct Snapshot {
    absl::Time time;
    std::vector<Matrix> weights;
  };
  const bool snapshots = options.evaluate && options.target_accuracy > 0 &&
                         options.snapshot_interval > absl::ZeroDuration();
  bool target_reached = false;
  std::vector<Snapshot> snapshot_pool;  // copies in use: [0, snapshots_taken)
  int snapshots_taken = 0;
  absl::Time last_snapshot = start;
  absl::Duration snapshot_every = options.snapshot_interval;  // doubles when the pool fills up

  // Evaluates `evaluated` (copied at `copied`) and makes it the latest evaluation.
  const auto evaluate_weights = [&](const std::vector<Matrix>& evaluated,
                                    absl::Time copied) -> absl::StatusOr<double> {
    absl::StatusOr<Evaluation> e =
        Evaluate(Views(evaluated), *test, options.eval_batch_size, &workspace);
    if (!e.ok()) return e.status();
    progress.evaluation = *e;
    progress.evaluation_elapsed_seconds = absl::ToDoubleSeconds(copied - start);
    if (metrics != nullptr) metrics->SetEvaluation(e->loss, e->accuracy);
    return e->accuracy;
  };
  // Evaluates the replica as it is now (and reports it when `report_it`). When it is the first
  // evaluation to reach the target, the snapshots since the previous one are evaluated and
  // reported first, up to the first that reaches it.
  const auto evaluate = [&](bool report_it) -> absl::Status {
    const absl::Time copied = absl::Now();
    client.CopyWeights(&weights);
    absl::StatusOr<double> accuracy = evaluate_weights(weights, copied);
    if (!accuracy.ok()) return accuracy.status();
    if (snapshots && !target_reached && *accuracy >= options.target_accuracy) {
      target_reached = true;
      const Evaluation live = *progress.evaluation;
      for (int i = 0; i < snapshots_taken; ++i) {
        absl::StatusOr<double> a = evaluate_weights(snapshot_pool[i].weights,
                                                    snapshot_pool[i].time);
        if (!a.ok()) return a.status();
        report_evaluation();
        if (*a >= options.target_accuracy) break;
      }
      progress.evaluation = live;
      progress.evaluation_elapsed_seconds = absl::ToDoubleSeconds(copied - start);
      if (metrics != nullptr) metrics->SetEvaluation(live.loss, live.accuracy);
      snapshot_pool.clear();  // not needed any more
    }
    snapshots_taken = 0;
    snapshot_every = options.snapshot_interval;
    last_snapshot = copied;
    if (report_it) report(absl::Now());
    return absl::OkStatus();
  };

  bool done = false;
  for (int epoch = 1; epoch <= options.epochs && !done; ++epoch) {
    progress.epoch = epoch;
    std::shuffle(order.begin(), order.end(), shuffle);
    for (int64_t begin = 0; begin < train.size() && !done; begin += options.batch_size) {
      const int64_t end = std::min<int64_t>(begin + options.batch_size, train.size());
      GatherBatch(train, absl::MakeConstSpan(order).subspan(begin, end - begin), &X, &labels);
      if (options.synchronous) {
        for (int i = 0; i < static_cast<int>(versions.size()); ++i) versions[i] = client.version(i);
      }
      client.CopyWeights(&weights, options.lookahead);
      absl::StatusOr<float> loss =
          LossAndGradients(Views(weights), X, labels, &gradients, &workspace);
      if (!loss.ok()) return loss.status();
      if (absl::Status s = client.Submit(gradients, end - begin, *loss); !s.ok()) return s;
      if (options.synchronous) {
        if (absl::Status s = WaitForNextVersions(client, versions, options.flush_timeout);
            !s.ok()) {
          return s;
        }
      }
      ++progress.steps;
      progress.samples += end - begin;
      loss_sum += *loss;
      ++loss_steps;
      const absl::Time now = absl::Now();
      if (options.evaluate && options.eval_interval > absl::ZeroDuration() &&
          now - last_eval >= options.eval_interval) {
        // Report every evaluation, not only the latest at the next progress interval: the
        // accuracy curve and the time to the target accuracy are read from these lines.
        if (absl::Status s = evaluate(/*report_it=*/true); !s.ok()) return s;
        last_eval = now;
      } else {
        if (snapshots && !target_reached && now - last_snapshot >= snapshot_every) {
          if (snapshots_taken == kMaxSnapshots) {
            // Keep every other copy and copy half as often, so that the copies still span the
            // whole time since the evaluation (the target is most likely crossed late in it).
            for (int i = 1; 2 * i < kMaxSnapshots; ++i) {
              std::swap(snapshot_pool[i], snapshot_pool[2 * i]);
            }
            snapshots_taken = kMaxSnapshots / 2;
            snapshot_every *= 2;
          }
          if (snapshots_taken == static_cast<int>(snapshot_pool.size())) {
            snapshot_pool.emplace_back();
          }
          snapshot_pool[snapshots_taken].time = now;
          client.CopyWeights(&snapshot_pool[snapshots_taken].weights);
          ++snapshots_taken;
          last_snapshot = now;
        }
        if (now - last_report >= options.progress_interval) report(now);
      }
      done = (options.max_steps > 0 && progress.steps >= options.max_steps) ||
             (stop != nullptr && stop->load());
    }
  }
  if (absl::Status s = client.Flush(options.flush_timeout); !s.ok()) return s;
  if (options.evaluate) {
    // The last pushes are applied by now; give the broadcasts a moment to arrive.
    absl::SleepFor(absl::Milliseconds(200));
    if (absl::Status s = evaluate(/*report_it=*/false); !s.ok()) return s;
  }
  progress.final = true;
  report(absl::Now());
  return progress;
}

}  // namespace dion
