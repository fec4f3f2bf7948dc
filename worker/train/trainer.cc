#include "worker/train/trainer.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "worker/train/epoch_order.h"

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

absl::Status ValidateOptions(const Client& client, const Dataset& train, const Dataset* test,
                             const TrainerOptions& options) {
  if (options.epochs < 1 || options.batch_size < 1 || options.eval_batch_size < 1 ||
      options.samples_per_epoch < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "epochs, batch_size and eval_batch_size must be >= 1 and samples_per_epoch >= 0, got ",
        options.epochs, ", ", options.batch_size, ", ", options.eval_batch_size, ", ",
        options.samples_per_epoch));
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
  return absl::OkStatus();
}

// One Train call: the loop over epochs and mini-batches, and what runs between the steps
// (progress reports, evaluations, the time-to-target copies).
class TrainingRun {
 public:
  TrainingRun(Client& client, const Dataset& train, const Dataset* test,
              const TrainerOptions& options, WorkerMetrics* metrics,
              const std::function<void(const TrainerProgress&)>& on_progress)
      : client_(client),
        train_(train),
        test_(test),
        options_(options),
        metrics_(metrics),
        on_progress_(on_progress),
        start_(absl::Now()),
        versions_(client.specs().size()),
        last_report_(start_),
        last_eval_(start_),
        search_(options.evaluate ? options.target_accuracy : 0, options.snapshot_interval,
                start_) {}

  absl::StatusOr<TrainerProgress> Run(const std::atomic<bool>* stop);

 private:
  // One local step on the samples `batch` of the training set.
  absl::Status Step(absl::Span<const int64_t> batch);
  // After a step that ended at `now`: an evaluation when one is due, else a weight copy and
  // a progress report when due.
  absl::Status AfterStep(absl::Time now);
  // The final Flush (FlushAll when `stopped`) and evaluation, and the final report.
  absl::Status Finish(bool stopped);
  // Evaluates the replica as it is now (and reports it when `report_it`), then lets the
  // time-to-target search run: when this is the first evaluation at the target, the copies
  // since the previous one are evaluated and reported first.
  absl::Status EvaluateReplica(bool report_it);
  // Evaluates `weights` (copied at `copied`) and makes it the latest evaluation.
  absl::StatusOr<double> EvaluateWeights(const std::vector<Matrix>& weights, absl::Time copied);
  // Reports at `now` and starts a new interval for the rates and the mean loss.
  void Report(absl::Time now);
  // A report between two regular ones (a copy's evaluation): the rates keep accumulating.
  void ReportEvaluation();

  Client& client_;
  const Dataset& train_;
  const Dataset* const test_;
  const TrainerOptions& options_;
  WorkerMetrics* const metrics_;
  const std::function<void(const TrainerProgress&)>& on_progress_;
  const absl::Time start_;

  // Buffers reused from step to step.
  std::vector<Matrix> weights_;
  std::vector<Matrix> gradients_;
  std::vector<int64_t> versions_;  // synchronous: the versions the step's gradients are at
  MlpWorkspace workspace_;
  Matrix X_;
  std::vector<int> labels_;

  TrainerProgress progress_;
  absl::Time last_report_;
  int64_t samples_at_report_ = 0;
  double loss_sum_ = 0;  // over the steps since the last report
  int64_t loss_steps_ = 0;
  absl::Time last_eval_;
  TimeToTargetSearch search_;
};

absl::StatusOr<TrainerProgress> TrainingRun::Run(const std::atomic<bool>* stop) {
  absl::StatusOr<EpochOrder> epochs = EpochOrder::Create(
      train_.size(), options_.samples_per_epoch > 0 ? options_.samples_per_epoch : train_.size(),
      options_.seed);
  if (!epochs.ok()) return epochs.status();
  bool done = false;
  bool stopped = false;
  for (int epoch = 1; epoch <= options_.epochs && !done; ++epoch) {
    progress_.epoch = epoch;
    const std::vector<int64_t>& order = epochs->Next();
    const auto size = static_cast<int64_t>(order.size());
    for (int64_t begin = 0; begin < size && !done; begin += options_.batch_size) {
      const int64_t end = std::min<int64_t>(begin + options_.batch_size, size);
      if (absl::Status s = Step(absl::MakeConstSpan(order).subspan(begin, end - begin));
          !s.ok()) {
        return s;
      }
      if (absl::Status s = AfterStep(absl::Now()); !s.ok()) return s;
      stopped = stop != nullptr && stop->load();
      done = (options_.max_steps > 0 && progress_.steps >= options_.max_steps) || stopped;
    }
  }
  if (absl::Status s = Finish(stopped); !s.ok()) return s;
  return progress_;
}

absl::Status TrainingRun::Step(absl::Span<const int64_t> batch) {
  GatherBatch(train_, batch, &X_, &labels_);
  if (options_.synchronous) {
    for (int i = 0; i < static_cast<int>(versions_.size()); ++i) versions_[i] = client_.version(i);
  }
  client_.CopyWeights(&weights_, options_.lookahead);
  absl::StatusOr<float> loss =
      LossAndGradients(Views(weights_), X_, labels_, &gradients_, &workspace_);
  if (!loss.ok()) return loss.status();
  const int64_t samples = static_cast<int64_t>(batch.size());
  if (absl::Status s = client_.Submit(gradients_, samples, *loss); !s.ok()) return s;
  if (options_.synchronous) {
    if (absl::Status s = WaitForNextVersions(client_, versions_, options_.flush_timeout);
        !s.ok()) {
      return s;
    }
  }
  ++progress_.steps;
  progress_.samples += samples;
  loss_sum_ += *loss;
  ++loss_steps_;
  return absl::OkStatus();
}

absl::Status TrainingRun::AfterStep(absl::Time now) {
  if (options_.evaluate && options_.eval_interval > absl::ZeroDuration() &&
      now - last_eval_ >= options_.eval_interval) {
    // Every evaluation is reported, not only the latest at the next progress interval: the
    // accuracy curve and the time to the target accuracy are read from these lines.
    if (absl::Status s = EvaluateReplica(/*report_it=*/true); !s.ok()) return s;
    last_eval_ = now;
    return absl::OkStatus();
  }
  if (search_.CopyDue(now)) client_.CopyWeights(&search_.NewCopy(now));
  if (now - last_report_ >= options_.progress_interval) Report(now);
  return absl::OkStatus();
}

absl::Status TrainingRun::Finish(bool stopped) {
  if (stopped) {
    // The process is about to end: the residuals go too, for a bounded time; what could not
    // be pushed is the caller's to report, not a reason to skip the final report.
    TrainerProgress::StopFlush flush;
    flush.status = client_.FlushAll(options_.stop_flush_timeout, &flush.report);
    progress_.stop_flush = std::move(flush);
  } else if (absl::Status s = client_.Flush(options_.flush_timeout); !s.ok()) {
    return s;
  }
  if (options_.evaluate) {
    // The last pushes are applied by now; give their broadcasts a moment to arrive.
    absl::SleepFor(absl::Milliseconds(200));
    if (absl::Status s = EvaluateReplica(/*report_it=*/false); !s.ok()) return s;
  }
  progress_.final = true;
  Report(absl::Now());
  return absl::OkStatus();
}

absl::Status TrainingRun::EvaluateReplica(bool report_it) {
  const absl::Time copied = absl::Now();
  client_.CopyWeights(&weights_);
  absl::StatusOr<double> accuracy = EvaluateWeights(weights_, copied);
  if (!accuracy.ok()) return accuracy.status();
  const Evaluation live = *progress_.evaluation;
  absl::StatusOr<int> copies_evaluated = search_.AfterEvaluation(
      copied, *accuracy,
      [this](const std::vector<Matrix>& weights, absl::Time t) -> absl::StatusOr<double> {
        absl::StatusOr<double> a = EvaluateWeights(weights, t);
        if (a.ok()) ReportEvaluation();
        return a;
      });
  if (!copies_evaluated.ok()) return copies_evaluated.status();
  if (*copies_evaluated > 0) {  // the replica's evaluation is the latest again
    progress_.evaluation = live;
    progress_.evaluation_elapsed_seconds = absl::ToDoubleSeconds(copied - start_);
    if (metrics_ != nullptr) metrics_->SetEvaluation(live.loss, live.accuracy);
  }
  if (report_it) Report(absl::Now());
  return absl::OkStatus();
}

absl::StatusOr<double> TrainingRun::EvaluateWeights(const std::vector<Matrix>& weights,
                                                    absl::Time copied) {
  absl::StatusOr<Evaluation> e = Evaluate(Views(weights), *test_, options_.eval_batch_size,
                                          &workspace_);
  if (!e.ok()) return e.status();
  progress_.evaluation = *e;
  progress_.evaluation_elapsed_seconds = absl::ToDoubleSeconds(copied - start_);
  if (metrics_ != nullptr) metrics_->SetEvaluation(e->loss, e->accuracy);
  return e->accuracy;
}

void TrainingRun::Report(absl::Time now) {
  progress_.elapsed_seconds = absl::ToDoubleSeconds(now - start_);
  const double interval = absl::ToDoubleSeconds(now - last_report_);
  if (interval > 0) {
    progress_.samples_per_second = (progress_.samples - samples_at_report_) / interval;
  }
  if (loss_steps_ > 0) progress_.train_loss = loss_sum_ / loss_steps_;
  progress_.client = client_.stats();
  if (metrics_ != nullptr) metrics_->SetSamplesPerSecond(progress_.samples_per_second);
  last_report_ = now;
  samples_at_report_ = progress_.samples;
  loss_sum_ = 0;
  loss_steps_ = 0;
  if (on_progress_) on_progress_(progress_);
}

void TrainingRun::ReportEvaluation() {
  progress_.elapsed_seconds = absl::ToDoubleSeconds(absl::Now() - start_);
  progress_.client = client_.stats();
  if (on_progress_) on_progress_(progress_);
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
  line.received_bytes = c.received_bytes;
  line.received_dense_bytes = c.received_dense_bytes;
  line.mean_staleness =
      c.accepted > 0 ? static_cast<double>(c.staleness_sum) / c.accepted : 0.0;
  line.staleness_hist.assign(c.staleness.begin(), c.staleness.end());
  if (c.adaptive_push_rank) {
    line.push_rank_fraction = c.push_rank_fraction;
    line.push_rank_changes = c.push_rank_changes;
    line.uplink_rate_mbps = c.uplink_rate_bytes_per_second * 8e-6;
  }
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
  if (absl::Status s = ValidateOptions(client, train, test, options); !s.ok()) return s;
  TrainingRun run(client, train, test, options, metrics, on_progress);
  return run.Run(stop);
}

}  // namespace dion
