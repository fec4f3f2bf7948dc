#include "worker/local/run_summary.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/local/svg_plot.h"

namespace dion {
namespace {

// A JSON text builder: commas and nesting are tracked, strings escaped, non-finite numbers
// written as null (JSON has no NaN or Infinity).
class JsonWriter {
 public:
  void Open(char bracket) {
    Separate();
    out_ += bracket;
    first_.push_back(true);
  }
  void Close(char bracket) {
    out_ += bracket;
    first_.pop_back();
  }
  void Key(absl::string_view key) {
    Separate();
    Quote(key);
    out_ += ':';
    after_key_ = true;
  }
  void String(absl::string_view text) {
    Separate();
    Quote(text);
  }
  void Number(double v) {
    Separate();
    out_ += std::isfinite(v) ? absl::StrFormat("%.10g", v) : "null";
  }
  void Int(int64_t v) {
    Separate();
    absl::StrAppend(&out_, v);
  }
  void Bool(bool v) {
    Separate();
    out_ += v ? "true" : "false";
  }
  void Null() {
    Separate();
    out_ += "null";
  }
  void Optional(const std::optional<double>& v) { v.has_value() ? Number(*v) : Null(); }
  std::string Take() { return std::move(out_) + "\n"; }

 private:
  void Quote(absl::string_view text) {
    out_ += '"';
    for (char c : text) {
      if (c == '"' || c == '\\') {
        out_ += '\\';
        out_ += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        absl::StrAppendFormat(&out_, "\\u%04x", static_cast<int>(c));
      } else {
        out_ += c;
      }
    }
    out_ += '"';
  }
  void Separate() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (first_.empty()) return;
    if (!first_.back()) out_ += first_.size() <= 2 ? ",\n" : ",";  // a line per top-level key
    first_.back() = false;
  }
  std::string out_;
  std::vector<bool> first_;
  bool after_key_ = false;
};

std::string Percent(double fraction) { return absl::StrFormat("%.2f%%", 100.0 * fraction); }

}  // namespace

RunSummary SummarizeRun(const RunAggregate& run, int workers, double target_accuracy) {
  RunSummary summary;
  std::optional<double> first_start, last_end;
  for (int j = 0; j < workers; ++j) {
    if (auto s = run.TrainingStart(j)) first_start = std::min(first_start.value_or(*s), *s);
    if (auto e = run.TrainingEnd(j)) last_end = std::max(last_end.value_or(*e), *e);
  }
  if (first_start && last_end) summary.training_time_s = *last_end - *first_start;
  summary.target_accuracy = target_accuracy;
  if (std::optional<EvalPoint> reached = run.FirstReaching(target_accuracy)) {
    summary.time_to_target_s = reached->time_s;
    summary.train_time_to_target_s = reached->time_s - first_start.value_or(0);
  }
  summary.epochs = run.Epochs();
  summary.totals = run.Totals();
  summary.train_loss = run.train_loss();
  summary.evaluations = run.Evaluations();
  return summary;
}

std::vector<std::string> ReportLines(const RunSummary& s) {
  std::vector<std::string> lines;
  const RunTotals& t = s.totals;
  const auto row = [&lines](absl::string_view name, const std::string& value) {
    lines.push_back(absl::StrFormat("  %-22s %s", name, value));
  };
  if (s.final_evaluation.has_value()) {
    row("final test accuracy",
        absl::StrFormat("%s (test loss %.4f, %d test samples, evaluated after training)",
                        Percent(s.final_evaluation->test_accuracy), s.final_evaluation->test_loss,
                        s.final_evaluation->samples));
  } else {
    row("final test accuracy", "not measured");
  }
  row("wall time", absl::StrFormat("%.1f s (training %.1f s, %.2f epochs, %d samples)",
                                   s.wall_time_s, s.training_time_s, s.epochs, t.samples));
  const std::string target = absl::StrFormat("time to %g%% accuracy", 100.0 * s.target_accuracy);
  if (s.time_to_target_s.has_value()) {
    row(target, absl::StrFormat("%.1f s since start (%.1f s of training)", *s.time_to_target_s,
                                s.train_time_to_target_s.value_or(0)));
  } else {
    double best = 0;
    for (const EvalPoint& e : s.evaluations) best = std::max(best, e.test_accuracy);
    row(target, s.evaluations.empty()
                    ? std::string("not reached (no periodic evaluations)")
                    : absl::StrCat("not reached (best periodic evaluation ", Percent(best), ")"));
  }
  // Both ways: pushes sent, and versions received (broadcast low-rank steps and full values,
  // resync pulls), each against dense float32 (serialized message bytes, not gRPC framing).
  const auto versus = [](int64_t bytes, int64_t dense) {
    return absl::StrFormat("%s vs %s dense: %.2fx less (%.1f%% of dense)", HumanBytes(bytes),
                           HumanBytes(dense), static_cast<double>(dense) / bytes,
                           100.0 * bytes / std::max<int64_t>(1, dense));
  };
  const int64_t wire = t.sent_bytes + t.received_bytes;
  row("bytes on the wire",
      wire > 0 ? absl::StrCat(versus(wire, t.dense_bytes + t.received_dense_bytes), " both ways")
               : std::string("nothing sent or received"));
  if (t.sent_bytes > 0) row("  pushes sent", versus(t.sent_bytes, t.dense_bytes));
  if (t.received_bytes > 0) {
    row("  versions received", versus(t.received_bytes, t.received_dense_bytes));
  }
  int64_t accepted = 0;
  for (int64_t c : t.staleness_hist) accepted += c;
  std::string hist;
  for (size_t i = 0; i < t.staleness_hist.size(); ++i) {
    const bool last = i + 1 == t.staleness_hist.size();
    absl::StrAppendFormat(&hist, "%s%s%d: %.1f%%", i == 0 ? "" : "  ", last ? ">=" : "",
                          static_cast<int>(i),
                          accepted > 0 ? 100.0 * t.staleness_hist[i] / accepted : 0.0);
  }
  row("staleness (tau)", absl::StrFormat("%s  (mean %.2f)", hist, t.mean_staleness));
  row("pushes", absl::StrFormat("%d accepted, %d refused, %d resyncs, %d reconnects", t.accepted,
                                t.refused, t.resyncs, t.reconnects));
  row("run directory", absl::StrCat(s.run_dir, " (summary.json, curves.svg, logs/)"));
  if (s.checkpoint.has_value()) {
    row("checkpoint", absl::StrCat("cut ", s.checkpoint->cut, " of run ", s.checkpoint->run_id,
                                   " on every shard (dion-server --restore_cut=",
                                   s.checkpoint->cut, ")"));
  }
  if (s.privacy.has_value()) {
    const RunPrivacy& p = *s.privacy;
    row("privacy", absl::StrFormat("(epsilon %.3g, delta %.3g) after %d batches; sigma %.3g, "
                                   "clip %.3g, q %.3g (docs/privacy.md)",
                                   p.epsilon, p.delta, p.steps, p.noise_multiplier, p.clip,
                                   p.sampling_rate));
  }
  if (s.final_evaluation.has_value()) {
    lines.push_back(
        absl::StrFormat("test accuracy: %.2f%%", 100.0 * s.final_evaluation->test_accuracy));
  }
  return lines;
}

namespace {

void WriteConfig(const std::vector<std::pair<std::string, ConfigValue>>& config, JsonWriter& j) {
  j.Open('{');
  for (const auto& [key, value] : config) {
    j.Key(key);
    std::visit(
        [&j](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::string>) j.String(v);
          if constexpr (std::is_same_v<T, int64_t>) j.Int(v);
          if constexpr (std::is_same_v<T, double>) j.Number(v);
          if constexpr (std::is_same_v<T, bool>) j.Bool(v);
        },
        value);
  }
  j.Close('}');
}

// The counters, the compression ratio and the staleness distribution, as keys of the
// enclosing object.
void WriteTotals(const RunTotals& t, JsonWriter& j) {
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"samples", t.samples},
                                   {"steps", t.steps},
                                   {"pushes", t.pushes},
                                   {"accepted", t.accepted},
                                   {"refused", t.refused},
                                   {"resyncs", t.resyncs},
                                   {"reconnects", t.reconnects},
                                   {"sent_bytes", t.sent_bytes},
                                   {"dense_bytes", t.dense_bytes},
                                   {"received_bytes", t.received_bytes},
                                   {"received_dense_bytes", t.received_dense_bytes},
                                   {"wire_bytes", t.sent_bytes + t.received_bytes},
                                   {"wire_dense_bytes",
                                    t.dense_bytes + t.received_dense_bytes}}) {
    j.Key(key);
    j.Int(value);
  }
  const auto ratio = [](int64_t dense, int64_t bytes) {
    return bytes > 0 ? std::optional(static_cast<double>(dense) / bytes) : std::nullopt;
  };
  j.Key("dense_to_sent_ratio");
  j.Optional(ratio(t.dense_bytes, t.sent_bytes));
  j.Key("dense_to_received_ratio");
  j.Optional(ratio(t.received_dense_bytes, t.received_bytes));
  j.Key("dense_to_wire_ratio");
  j.Optional(ratio(t.dense_bytes + t.received_dense_bytes, t.sent_bytes + t.received_bytes));
  j.Key("mean_staleness");
  j.Number(t.mean_staleness);
  int64_t accepted = 0;
  for (int64_t c : t.staleness_hist) accepted += c;
  j.Key("staleness_histogram");
  j.Open('[');
  for (int64_t c : t.staleness_hist) j.Int(c);
  j.Close(']');
  j.Key("staleness_percent");
  j.Open('[');
  for (int64_t c : t.staleness_hist) j.Number(accepted > 0 ? 100.0 * c / accepted : 0.0);
  j.Close(']');
}

// "privacy": {"epsilon", "delta", "noise_multiplier", "clip", "sampling_rate", "steps"}, or
// null when the shards added no noise.
void WritePrivacy(const std::optional<RunPrivacy>& privacy, JsonWriter& j) {
  j.Key("privacy");
  if (!privacy.has_value()) {
    j.Null();
    return;
  }
  j.Open('{');
  for (const auto& [key, value] :
       {std::pair<const char*, double>{"epsilon", privacy->epsilon},
        {"delta", privacy->delta},
        {"noise_multiplier", privacy->noise_multiplier},
        {"clip", privacy->clip},
        {"sampling_rate", privacy->sampling_rate}}) {
    j.Key(key);
    j.Number(value);
  }
  j.Key("steps");
  j.Int(privacy->steps);
  j.Close('}');
}

// `"key": [{...}, ...]`: one object per item, its fields written by `fields(item)`.
template <typename Item, typename Fields>
void WriteObjects(const char* key, const std::vector<Item>& items, const Fields& fields,
                  JsonWriter& j) {
  j.Key(key);
  j.Open('[');
  for (const Item& item : items) {
    j.Open('{');
    fields(item);
    j.Close('}');
  }
  j.Close(']');
}

// "split_parameters": [{"parameter", "owners": [{"shard", "row_begin", "row_end"}, ...]}, ...],
// the rows of the tall side each shard owns; [] when nothing is split.
void WriteSplitParameters(const std::vector<RunSplitParameter>& split, JsonWriter& j) {
  WriteObjects("split_parameters", split, [&j](const RunSplitParameter& p) {
    j.Key("parameter");
    j.String(p.parameter);
    WriteObjects("owners", p.owners, [&j](const RunSplitParameter::Owner& o) {
      j.Key("shard");
      j.Int(o.shard);
      j.Key("row_begin");
      j.Int(o.row_begin);
      j.Key("row_end");
      j.Int(o.row_end);
    }, j);
  }, j);
}

// A curve: one object per point, time and epochs first, then what `rest` writes.
template <typename Point, typename Rest>
void WriteCurve(const char* key, const std::vector<Point>& points, const Rest& rest,
                JsonWriter& j) {
  WriteObjects(key, points, [&](const Point& point) {
    j.Key("time_s");
    j.Number(point.time_s);
    j.Key("epochs");
    j.Number(point.epochs);
    rest(point);
  }, j);
}

}  // namespace

std::string SummaryJson(const RunSummary& s) {
  JsonWriter j;
  j.Open('{');
  j.Key("status");
  j.String(s.status);
  j.Key("config");
  WriteConfig(s.config, j);
  j.Key("final_test_accuracy");
  j.Optional(s.final_evaluation ? std::optional(s.final_evaluation->test_accuracy) : std::nullopt);
  j.Key("final_test_loss");
  j.Optional(s.final_evaluation ? std::optional(s.final_evaluation->test_loss) : std::nullopt);
  j.Key("wall_time_s");
  j.Number(s.wall_time_s);
  j.Key("training_time_s");
  j.Number(s.training_time_s);
  j.Key("target_accuracy");
  j.Number(s.target_accuracy);
  j.Key("time_to_target_s");
  j.Optional(s.time_to_target_s);
  j.Key("train_time_to_target_s");
  j.Optional(s.train_time_to_target_s);
  j.Key("epochs");
  j.Number(s.epochs);
  WriteTotals(s.totals, j);
  WriteCurve("evaluations", s.evaluations, [&j](const EvalPoint& e) {
    j.Key("test_loss");
    j.Number(e.test_loss);
    j.Key("test_accuracy");
    j.Number(e.test_accuracy);
  }, j);
  WriteCurve("train_loss", s.train_loss, [&j](const TrainLossPoint& p) {
    j.Key("loss");
    j.Number(p.loss);
  }, j);
  j.Key("run_dir");
  j.String(s.run_dir);
  j.Key("checkpoint");  // the coordinated one at the end: {"run_id", "cut"}, or null
  if (s.checkpoint.has_value()) {
    j.Open('{');
    j.Key("run_id");
    j.String(s.checkpoint->run_id);
    j.Key("cut");
    j.Int(static_cast<int64_t>(s.checkpoint->cut));
    j.Close('}');
  } else {
    j.Null();
  }
  WritePrivacy(s.privacy, j);
  WriteSplitParameters(s.split_parameters, j);
  j.Close('}');
  return j.Take();
}

std::string CurvesSvg(const RunSummary& s) {
  constexpr const char* kTrain = "#1f77b4";
  constexpr const char* kTest = "#d62728";
  constexpr const char* kTarget = "#999999";
  std::vector<PlotPanel> panels;
  for (const bool by_time : {true, false}) {
    const auto x_of = [by_time](double time_s, double epochs) { return by_time ? time_s : epochs; };
    const std::string x_label =
        by_time ? "time since start (s)" : "epochs (passes over the training set)";
    PlotPanel loss{
        by_time ? "Loss vs time" : "Loss vs epochs", x_label, "cross-entropy loss", {}, {}};
    PlotPanel accuracy{by_time ? "Test accuracy vs time" : "Test accuracy vs epochs",
                       x_label,
                       "test accuracy (%)",
                       {},
                       {}};
    PlotSeries train{"training (mean of workers)", kTrain, {}, false};
    for (const TrainLossPoint& p : s.train_loss)
      train.points.push_back({x_of(p.time_s, p.epochs), p.loss});
    PlotSeries test_loss{"test", kTest, {}, true};
    PlotSeries test_accuracy{"test (periodic)", kTest, {}, true};
    for (const EvalPoint& e : s.evaluations) {
      test_loss.points.push_back({x_of(e.time_s, e.epochs), e.test_loss});
      test_accuracy.points.push_back({x_of(e.time_s, e.epochs), 100.0 * e.test_accuracy});
    }
    loss.series = {train, test_loss};
    accuracy.series = {test_accuracy};
    loss.x_from_zero = accuracy.x_from_zero = true;
    if (!test_accuracy.points.empty()) {
      const double x0 = test_accuracy.points.front().first;
      const double x1 = test_accuracy.points.back().first;
      accuracy.series.push_back({absl::StrFormat("%g%% target", 100.0 * s.target_accuracy),
                                 kTarget,
                                 {{x0, 100.0 * s.target_accuracy}, {x1, 100.0 * s.target_accuracy}},
                                 false});
    }
    panels.push_back(std::move(loss));
    panels.push_back(std::move(accuracy));
  }
  std::string title = "dion local";
  if (s.final_evaluation.has_value()) {
    absl::StrAppend(&title, ": final test accuracy ", Percent(s.final_evaluation->test_accuracy));
  }
  // Row 1 against time, row 2 against epochs.
  return RenderSvgPlot(title, panels, 2);
}

absl::Status WriteTextFile(const std::string& path, absl::string_view contents) {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", temporary));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", temporary, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace dion
