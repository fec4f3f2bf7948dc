// The lines dion-worker prints for its supervisor (`dion local`, scripts) and their parser: one
// owner for both directions of the format. Absl only, so that `dion` can parse without linking
// the training code (worker/local/CMakeLists.txt says why).
//
// A progress line, every --progress_interval and once more at the end ("final" instead of
// "progress"), on one line:
//   progress worker=0 epoch=1 steps=120 samples=7680 elapsed_s=12.30 samples_per_s=1530.0
//     loss=0.6123 pushes=.. accepted=.. refused=.. resyncs=.. reconnects=.. sent_bytes=..
//     dense_bytes=.. received_bytes=.. received_dense_bytes=.. mean_staleness=0.812
//     staleness_hist=a,b,...,i
//     [test_loss=.. test_accuracy=0.8123 eval_elapsed_s=..]
// Counters are cumulative. The parser ignores unknown keys, so keys may be added without
// breaking older readers.
//
// `dion-worker --mode=evaluate` prints one evaluation line:
//   evaluation samples=N test_loss=L test_accuracy=A
//
// Thread-safety: pure functions.
#ifndef DION_WORKER_TRAIN_PROGRESS_LINE_H_
#define DION_WORKER_TRAIN_PROGRESS_LINE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dion {

struct ProgressLine {
  bool final = false;  // the "final" line after the last step
  int worker = 0;
  int epoch = 0;
  int64_t steps = 0;
  int64_t samples = 0;
  double elapsed_s = 0;      // since the worker's training started
  double samples_per_s = 0;  // over the last progress interval
  double loss = 0;           // mean training loss over the last progress interval
  int64_t pushes = 0;
  int64_t accepted = 0;
  int64_t refused = 0;
  int64_t resyncs = 0;
  int64_t reconnects = 0;
  // Bytes on the wire both ways, and what dense float32 would have cost (ClientStats):
  int64_t sent_bytes = 0;            // pushes' payload
  int64_t dense_bytes = 0;           // the pushes as dense gradients
  int64_t received_bytes = 0;        // versions received (broadcasts, resync pulls); 0 when
  int64_t received_dense_bytes = 0;  // absent (an older worker); those versions as dense
  double mean_staleness = 0;            // over accepted pushes
  std::vector<int64_t> staleness_hist;  // one bin per tau 0.., the last one "and above"
  // The worker's latest test-set evaluation (only on evaluating workers, after the first);
  // test_accuracy and eval_elapsed_s come together.
  std::optional<double> test_loss;
  std::optional<double> test_accuracy;  // in [0, 1]
  std::optional<double> eval_elapsed_s;  // when the evaluated weights were copied
  // With the adaptive push rank (--compression_rank_fraction=auto): the fraction in use and
  // its changes so far (ClientStats).
  std::optional<double> push_rank_fraction;
  std::optional<int64_t> push_rank_changes;
  // And the uplink rate it chose from, in Mbit/s of payload (0 until measured).
  std::optional<double> uplink_rate_mbps;
};

// The line, without a newline. Rounds elapsed_s to 2 decimals, samples_per_s to 1, loss,
// test_loss, test_accuracy and eval_elapsed_s to 4, mean_staleness to 3, push_rank_fraction
// to 6.
std::string FormatProgressLine(const ProgressLine& line);
// True for lines starting with "progress " or "final ".
bool IsProgressLine(absl::string_view line);
// InvalidArgument naming the key when a required key is missing or a value does not parse.
absl::StatusOr<ProgressLine> ParseProgressLine(absl::string_view line);

struct EvaluationResult {
  int64_t samples = 0;
  double test_loss = 0;
  double test_accuracy = 0;
};
// The line, without a newline; test_loss and test_accuracy rounded to 4 decimals.
std::string FormatEvaluationLine(const EvaluationResult& result);
// True for lines starting with "evaluation ".
bool IsEvaluationLine(absl::string_view line);
// InvalidArgument naming the key when a key is missing or a value does not parse.
absl::StatusOr<EvaluationResult> ParseEvaluationLine(absl::string_view line);

}  // namespace dion

#endif  // DION_WORKER_TRAIN_PROGRESS_LINE_H_
