// The adaptive push rank (ClientOptions::auto_compression_rank, dion-worker
// --compression_rank_fraction=auto; docs/worker.md "Adaptive push rank"): each worker chooses
// the rank of the factors it pushes from the rate its link achieves and the time its own local
// steps take, so that pushing one step's contributions takes at most kAutoRankLinkShare of a
// step. What lower-rank factors leave out stays in the error-feedback residual (it is sent
// later), so the rank only trades how fast a direction reaches the shards against bytes.
//
// One fraction f (the rank of every Dion matrix is CompressionRank(spec, f)) moves along a
// ladder of halvings and doublings of the starting fraction, capped at 1:
//   - shrink, as far as needed, when a push at f costs more than the budget
//     (budget = rate * step time * kAutoRankLinkShare bytes);
//   - grow one rung when a push at 2f sends more bytes and costs at most kAutoRankGrowMargin of
//     the budget.
// Between the two thresholds f stays (hysteresis), and after a change the controller waits for
// kAutoRankSettleWindows fresh rate measurements before deciding again.
//
// The rate is measured end to end: payload bytes acknowledged per second of time during which
// at least one push was in flight (any parameter, any shard), over windows of at least
// kAutoRankWindow, smoothed by an EWMA. On a saturated link that is the link's rate; on an
// idle one it is bytes / round trip, which makes the controller grow the rank only while the
// round trips still fit the budget. The step time is an EWMA of the intervals between Submit
// calls (an interval over 4x the average, e.g. an evaluation pause, counts as 4x).
//
// Thread-safety: PushRankController is safe for concurrent use (one leaf lock: nothing else is
// taken while it is held). The free functions are pure.
#ifndef DION_WORKER_PUSH_RANK_H_
#define DION_WORKER_PUSH_RANK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/contribution.h"
#include "common/mutex.h"
#include "common/param_spec.h"

namespace dion {

inline constexpr double kAutoRankLinkShare = 0.5;   // push time <= this share of a step
inline constexpr double kAutoRankGrowMargin = 0.7;  // grow only when 2f fits in 0.7 budget
inline constexpr absl::Duration kAutoRankWindow = absl::Milliseconds(250);  // of busy time
inline constexpr double kAutoRankEwmaWeight = 0.3;  // of the newest rate or step sample
inline constexpr int kAutoRankSettleWindows = 2;

// Payload bytes of one push of every parameter at fraction f: 4 (m + n) CompressionRank(spec,
// f) for a Dion matrix, 4 m n for the others.
int64_t PushBytesAt(absl::Span<const ParamSpec> specs, double fraction);

// The fraction to use after `current` (in (0, 1]) given `budget_bytes` per push (file
// comment): a halving of `current` repeated until it fits or stops saving bytes, `current` * 2
// (at most 1) when that fits kAutoRankGrowMargin of the budget, else `current`.
double NextRankFraction(absl::Span<const ParamSpec> specs, double current, double budget_bytes);

// Payload bytes of a contribution as PushBytesAt counts them.
int64_t PayloadBytes(const Contribution& c);

// A push-rank setting as dion-worker's --compression_rank_fraction spells it: a fraction in
// [0, 1] (0: the Dion rank fraction), or "auto" (adaptive, fraction 0).
struct PushRankSetting {
  bool adaptive = false;
  double fraction = 0;
};
bool AbslParseFlag(absl::string_view text, PushRankSetting* setting, std::string* error);
std::string AbslUnparseFlag(const PushRankSetting& setting);
// The push rank fraction a worker starts with: `adaptive_start` for auto, the fraction when
// > 0, else the Dion rank fraction `rank_fraction`.
double StartingPushRankFraction(const PushRankSetting& setting, double adaptive_start,
                                double rank_fraction);

class PushRankController {
 public:
  // `specs`: the model's parameters; `start_fraction` in (0, 1], the fraction until the first
  // decision.
  PushRankController(std::vector<ParamSpec> specs, double start_fraction);

  void OnStep(absl::Time now);                   // a local step was submitted
  void OnSent(absl::Time now);                   // a contribution was taken and sent
  void OnSettled(int64_t bytes, absl::Time now);  // one was acknowledged (PayloadBytes)

  struct State {
    double fraction = 0;           // the current push-rank fraction
    double rate_bytes_per_s = 0;   // smoothed push rate; 0 before the first window
    double step_seconds = 0;       // smoothed step time; 0 before two steps
    int64_t changes = 0;           // fraction changes so far
  };
  State state() const;
  double fraction() const;

 private:
  // Closes the rate window when it is long enough, and decides. REQUIRES: mu_.
  void MaybeDecide() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds the busy time since the last event. REQUIRES: mu_.
  void AdvanceClock(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::vector<ParamSpec> specs_;
  mutable Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_event_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time last_step_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Duration window_busy_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  int64_t window_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int windows_since_change_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace dion

#endif  // DION_WORKER_PUSH_RANK_H_
