#include "worker/local/run_report.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace dion {

std::string HumanBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1e9) return absl::StrFormat("%.2f GB", b / 1e9);
  if (b >= 1e6) return absl::StrFormat("%.1f MB", b / 1e6);
  if (b >= 1e3) return absl::StrFormat("%.1f kB", b / 1e3);
  return absl::StrCat(bytes, " B");
}

std::string StatusLine(const LiveStatus& s, double now_s, int epochs, int workers) {
  std::string line = absl::StrFormat(
      "[%6.1fs] epoch %.2f/%d  %.0f samples/s  loss %.4f  test acc %s  staleness %.2f  "
      "sent %s + received %s / dense %s",
      now_s, s.epochs, epochs, s.samples_per_s, s.loss,
      s.test_accuracy ? absl::StrFormat("%.2f%%", 100 * *s.test_accuracy) : std::string("-"),
      s.totals.mean_staleness, HumanBytes(s.totals.sent_bytes),
      HumanBytes(s.totals.received_bytes),
      HumanBytes(s.totals.dense_bytes + s.totals.received_dense_bytes));
  if (s.workers_finished > 0) {
    absl::StrAppend(&line, "  (", s.workers_finished, "/", workers, " workers done)");
  }
  return line;
}

RunAggregate::RunAggregate(int num_workers) : workers_(std::max(0, num_workers)) {}

void RunAggregate::Add(const ProgressLine& line, double now_s) {
  if (line.worker < 0 || line.worker >= static_cast<int>(workers_.size())) return;
  WorkerState& w = workers_[line.worker];
  const bool new_evaluation =
      line.eval_elapsed_s.has_value() &&
      (!w.latest.has_value() || w.latest->eval_elapsed_s != line.eval_elapsed_s);
  w.latest = line;
  const double start = now_s - line.elapsed_s;
  w.start_s = w.start_s.has_value() ? std::min(*w.start_s, start) : start;
  if (line.final) w.end_s = now_s;

  double loss_sum = 0;
  int reporting = 0;
  for (const WorkerState& other : workers_) {
    if (!other.latest.has_value()) continue;
    loss_sum += other.latest->loss;
    ++reporting;
  }
  train_loss_.push_back({now_s, Epochs(), loss_sum / reporting});
  if (new_evaluation && line.test_accuracy.has_value()) {
    const double time = *w.start_s + *line.eval_elapsed_s;
    w.evaluations.push_back(
        {time, EpochsAt(time), line.test_loss.value_or(0), *line.test_accuracy});
  }
}

double RunAggregate::Epochs() const {
  double samples = 0, epochs = 0;
  int reporting = 0;
  for (const WorkerState& w : workers_) {
    if (!w.latest.has_value()) continue;
    samples += w.latest->samples;
    epochs += w.latest->epoch;
    ++reporting;
  }
  if (training_set_size_ > 0) return samples / training_set_size_;
  return reporting > 0 ? epochs / reporting : 0;
}

double RunAggregate::EpochsAt(double time_s) const {
  // Linear in time between the recorded points; before the first one, from 0 epochs at the
  // earliest training start.
  double t0 = time_s, e0 = 0;
  for (const WorkerState& w : workers_) {
    if (w.start_s.has_value()) t0 = std::min(t0, *w.start_s);
  }
  for (const TrainLossPoint& p : train_loss_) {
    if (p.time_s >= time_s) {
      if (p.time_s <= t0) return p.epochs;
      return e0 + (p.epochs - e0) * (time_s - t0) / (p.time_s - t0);
    }
    t0 = p.time_s;
    e0 = p.epochs;
  }
  return e0;
}

RunTotals RunAggregate::Totals() const {
  RunTotals t;
  double staleness_weighted = 0;
  for (const WorkerState& w : workers_) {
    if (!w.latest.has_value()) continue;
    const ProgressLine& p = *w.latest;
    t.samples += p.samples;
    t.steps += p.steps;
    t.pushes += p.pushes;
    t.accepted += p.accepted;
    t.refused += p.refused;
    t.resyncs += p.resyncs;
    t.reconnects += p.reconnects;
    t.sent_bytes += p.sent_bytes;
    t.dense_bytes += p.dense_bytes;
    t.received_bytes += p.received_bytes;
    t.received_dense_bytes += p.received_dense_bytes;
    staleness_weighted += p.mean_staleness * static_cast<double>(p.accepted);
    if (t.staleness_hist.size() < p.staleness_hist.size()) {
      t.staleness_hist.resize(p.staleness_hist.size(), 0);
    }
    for (size_t i = 0; i < p.staleness_hist.size(); ++i) t.staleness_hist[i] += p.staleness_hist[i];
  }
  t.mean_staleness = t.accepted > 0 ? staleness_weighted / static_cast<double>(t.accepted) : 0;
  return t;
}

LiveStatus RunAggregate::Live() const {
  LiveStatus s;
  s.epochs = Epochs();
  s.totals = Totals();
  double loss_sum = 0;
  for (const WorkerState& w : workers_) {
    if (!w.latest.has_value()) continue;
    ++s.workers_reporting;
    loss_sum += w.latest->loss;
    if (w.latest->final) {
      ++s.workers_finished;
    } else {
      s.samples_per_s += w.latest->samples_per_s;
    }
  }
  if (s.workers_reporting > 0) s.loss = loss_sum / s.workers_reporting;
  const std::vector<EvalPoint> evaluations = Evaluations();
  if (!evaluations.empty()) s.test_accuracy = evaluations.back().test_accuracy;
  return s;
}

std::vector<EvalPoint> RunAggregate::Evaluations() const {
  for (const WorkerState& w : workers_) {
    if (!w.evaluations.empty()) return w.evaluations;
  }
  return {};
}

std::optional<EvalPoint> RunAggregate::FirstReaching(double accuracy) const {
  for (const EvalPoint& e : Evaluations()) {
    if (e.test_accuracy >= accuracy) return e;
  }
  return std::nullopt;
}

std::optional<double> RunAggregate::TrainingStart(int worker) const {
  if (worker < 0 || worker >= static_cast<int>(workers_.size())) return std::nullopt;
  return workers_[worker].start_s;
}

std::optional<double> RunAggregate::TrainingEnd(int worker) const {
  if (worker < 0 || worker >= static_cast<int>(workers_.size())) return std::nullopt;
  return workers_[worker].end_s;
}

}  // namespace dion
