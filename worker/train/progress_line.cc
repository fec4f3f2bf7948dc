#include "worker/train/progress_line.h"

#include <type_traits>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace dion {
namespace {

using KeyValues = absl::flat_hash_map<absl::string_view, absl::string_view>;

KeyValues SplitKeyValues(absl::string_view line) {
  KeyValues values;
  for (absl::string_view token : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
    const size_t eq = token.find('=');
    if (eq == absl::string_view::npos) continue;  // the leading kind word
    values[token.substr(0, eq)] = token.substr(eq + 1);
  }
  return values;
}

// Reads the values of one line, remembering the first key that is missing or malformed.
class LineReader {
 public:
  LineReader(absl::string_view kind, absl::string_view line)
      : kind_(kind), line_(line), values_(SplitKeyValues(line)) {}

  template <typename T>
  void Get(absl::string_view key, T* out) {
    auto it = values_.find(key);
    bool ok = it != values_.end();
    if constexpr (std::is_floating_point_v<T>) {
      ok = ok && absl::SimpleAtod(it->second, out);
    } else {
      ok = ok && absl::SimpleAtoi(it->second, out);
    }
    if (!ok) Fail(key);
  }
  // A key that older writers do not print: *out keeps its value when the key is absent.
  void GetIfPresent(absl::string_view key, int64_t* out) {
    if (values_.contains(key)) Get(key, out);
  }
  template <typename T>
  void GetOptional(absl::string_view key, std::optional<T>* out) {
    if (!values_.contains(key)) return;
    T v = 0;
    Get(key, &v);
    *out = v;
  }
  // A comma-separated list of counts >= 0.
  void GetCounts(absl::string_view key, std::vector<int64_t>* out) {
    auto it = values_.find(key);
    if (it == values_.end()) return Fail(key);
    for (absl::string_view bin : absl::StrSplit(it->second, ',')) {
      int64_t count = 0;
      if (!absl::SimpleAtoi(bin, &count) || count < 0) return Fail(key);
      out->push_back(count);
    }
  }
  void Fail(absl::string_view key) {
    if (!status_.ok()) return;
    status_ = absl::InvalidArgumentError(
        absl::StrCat(kind_, " line lacks a valid '", key, "=' value: '", line_, "'"));
  }
  const absl::Status& status() const { return status_; }

 private:
  const absl::string_view kind_;
  const absl::string_view line_;
  const KeyValues values_;
  absl::Status status_;
};

}  // namespace

std::string FormatProgressLine(const ProgressLine& p) {
  std::string line = absl::StrCat(
      p.final ? "final" : "progress", " worker=", p.worker, " epoch=", p.epoch,
      " steps=", p.steps, " samples=", p.samples,
      " elapsed_s=", absl::StrFormat("%.2f", p.elapsed_s),
      " samples_per_s=", absl::StrFormat("%.1f", p.samples_per_s),
      " loss=", absl::StrFormat("%.4f", p.loss), " pushes=", p.pushes,
      " accepted=", p.accepted, " refused=", p.refused, " resyncs=", p.resyncs,
      " reconnects=", p.reconnects, " sent_bytes=", p.sent_bytes,
      " dense_bytes=", p.dense_bytes, " received_bytes=", p.received_bytes,
      " received_dense_bytes=", p.received_dense_bytes,
      " mean_staleness=", absl::StrFormat("%.3f", p.mean_staleness),
      " staleness_hist=", absl::StrJoin(p.staleness_hist, ","));
  if (p.test_loss.has_value()) {
    absl::StrAppend(&line, " test_loss=", absl::StrFormat("%.4f", *p.test_loss));
  }
  if (p.test_accuracy.has_value()) {
    absl::StrAppend(&line, " test_accuracy=", absl::StrFormat("%.4f", *p.test_accuracy));
  }
  if (p.eval_elapsed_s.has_value()) {
    absl::StrAppend(&line, " eval_elapsed_s=", absl::StrFormat("%.4f", *p.eval_elapsed_s));
  }
  if (p.push_rank_fraction.has_value() && p.push_rank_changes.has_value()) {
    absl::StrAppend(&line, " push_rank_fraction=", absl::StrFormat("%.6f", *p.push_rank_fraction),
                    " push_rank_changes=", *p.push_rank_changes);
  }
  if (p.uplink_rate_mbps.has_value()) {
    absl::StrAppend(&line, " uplink_rate_mbps=", absl::StrFormat("%.2f", *p.uplink_rate_mbps));
  }
  return line;
}

bool IsProgressLine(absl::string_view line) {
  return absl::StartsWith(line, "progress ") || absl::StartsWith(line, "final ");
}

absl::StatusOr<ProgressLine> ParseProgressLine(absl::string_view line) {
  if (!IsProgressLine(line)) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a progress line (expected 'progress ' or 'final '): '", line, "'"));
  }
  LineReader r("progress", line);
  ProgressLine p;
  p.final = absl::StartsWith(line, "final ");
  r.Get("worker", &p.worker);
  r.Get("epoch", &p.epoch);
  r.Get("steps", &p.steps);
  r.Get("samples", &p.samples);
  r.Get("elapsed_s", &p.elapsed_s);
  r.Get("samples_per_s", &p.samples_per_s);
  r.Get("loss", &p.loss);
  r.Get("pushes", &p.pushes);
  r.Get("accepted", &p.accepted);
  r.Get("refused", &p.refused);
  r.Get("resyncs", &p.resyncs);
  r.Get("reconnects", &p.reconnects);
  r.Get("sent_bytes", &p.sent_bytes);
  r.Get("dense_bytes", &p.dense_bytes);
  r.GetIfPresent("received_bytes", &p.received_bytes);  // since the bytes counted both ways
  r.GetIfPresent("received_dense_bytes", &p.received_dense_bytes);
  r.Get("mean_staleness", &p.mean_staleness);
  r.GetOptional("test_loss", &p.test_loss);
  r.GetOptional("test_accuracy", &p.test_accuracy);
  r.GetOptional("eval_elapsed_s", &p.eval_elapsed_s);
  r.GetOptional("push_rank_fraction", &p.push_rank_fraction);
  r.GetOptional("push_rank_changes", &p.push_rank_changes);
  r.GetOptional("uplink_rate_mbps", &p.uplink_rate_mbps);
  r.GetCounts("staleness_hist", &p.staleness_hist);
  if (p.test_accuracy.has_value() != p.eval_elapsed_s.has_value()) {
    r.Fail(p.test_accuracy.has_value() ? "eval_elapsed_s" : "test_accuracy");
  }
  if (!r.status().ok()) return r.status();
  return p;
}

std::string FormatEvaluationLine(const EvaluationResult& e) {
  return absl::StrFormat("evaluation samples=%d test_loss=%.4f test_accuracy=%.4f", e.samples,
                         e.test_loss, e.test_accuracy);
}

bool IsEvaluationLine(absl::string_view line) { return absl::StartsWith(line, "evaluation "); }

absl::StatusOr<EvaluationResult> ParseEvaluationLine(absl::string_view line) {
  if (!IsEvaluationLine(line)) {
    return absl::InvalidArgumentError(absl::StrCat("not an evaluation line: '", line, "'"));
  }
  LineReader r("evaluation", line);
  EvaluationResult e;
  r.Get("samples", &e.samples);
  r.Get("test_loss", &e.test_loss);
  r.Get("test_accuracy", &e.test_accuracy);
  if (!r.status().ok()) return r.status();
  return e;
}

}  // namespace dion
