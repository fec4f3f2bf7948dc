#include "worker/trainer.h"

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

  const auto evaluate = [&]() -> absl::Status {
    client.CopyWeights(&weights);
    absl::StatusOr<Evaluation> e =
        Evaluate(Views(weights), *test, options.eval_batch_size, &workspace);
    if (!e.ok()) return e.status();
    progress.evaluation = *e;
    progress.evaluation_elapsed_seconds = absl::ToDoubleSeconds(absl::Now() - start);
    if (metrics != nullptr) metrics->SetEvaluation(e->loss, e->accuracy);
    return absl::OkStatus();
  };
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
        if (absl::Status s = evaluate(); !s.ok()) return s;
        last_eval = now;
        // Report every evaluation, not only the latest at the next progress interval: the
        // accuracy curve and the time to the target accuracy are read from these lines.
        report(absl::Now());
      } else if (now - last_report >= options.progress_interval) {
        report(now);
      }
      done = (options.max_steps > 0 && progress.steps >= options.max_steps) ||
             (stop != nullptr && stop->load());
    }
  }
  if (absl::Status s = client.Flush(options.flush_timeout); !s.ok()) return s;
  if (options.evaluate) {
    // The last pushes are applied by now; give the broadcasts a moment to arrive.
    absl::SleepFor(absl::Milliseconds(200));
    if (absl::Status s = evaluate(); !s.ok()) return s;
  }
  progress.final = true;
  report(absl::Now());
  return progress;
}

}  // namespace dion
