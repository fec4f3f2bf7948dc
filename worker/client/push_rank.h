// The adaptive push rank (ClientOptions::auto_compression_rank, dion-worker
// --compression_rank_fraction=auto; docs/worker.md "Adaptive push rank"): each worker chooses
// the rank of the factors it pushes so that its pushes use at most kAutoRankLinkShare of its
// uplink's rate. What lower-rank factors leave out stays in the error-feedback residual (it is
// sent later), so the rank only trades how fast a direction reaches the shards against bytes.
//
// One fraction f (the rank of every Dion matrix is CompressionRank(spec, f)) moves along a
// ladder of halvings and doublings of the starting fraction, which is also its ceiling. Over a
// window the worker pushed S payload bytes/s at f on an uplink of rate L; as the bytes of a push
// round scale with PushBytesAt, a push round may cost budget = PushBytesAt(f) * share * L / S:
//   - shrink, as far as needed, when a push at f costs more than the budget (S > share * L);
//   - grow one rung, up to the starting fraction, when a push at 2f sends more bytes and costs
//     at most kAutoRankGrowMargin of the budget.
// Between the two thresholds f stays (hysteresis), and after a change the controller waits for
// kAutoRankSettleWindows fresh windows before deciding again. The budget is per second of
// pushing, not per local step: a worker pushes when a slot is free (max_in_flight), so one push
// can carry several local steps, and its uplink carries the pushes it makes, not one per step.
// The ceiling is there because bytes are not a push's only cost: the worker's compression and
// every shard's fold grow with the rank (2 m n r flop per contribution), so on a link with room
// the starting fraction (1/16 in dion-worker, chosen on loopback) is the better rank, and the
// controller's job is to come down from it where the uplink cannot carry it.
//
// The rate is the uplink's alone: the TCP delivery rates the kernel measures on the worker's
// connections to its shards (uplink_probe.h), not acknowledgements, whose latency includes the
// shard's queue and the downlink full of broadcasts. Each window of kAutoRankWindow gives the
// lower quartile of its samples, and the rate is the larger of the last two windows'
// quartiles (of this one alone when the previous ended more than a window before it began).
// A low quantile, because the samples of a shaped link are bimodal: most at the link's rate,
// some far above it (the first bytes after an idle spell pass a token bucket's burst at the
// speed of the wire: on the links of `dion local`, 25-50% of the samples of push-sized
// bursts, tests/worker_links_test.cc); the larger of two windows, because one
// window of small, sparse flights can measure less than the link.
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

inline constexpr double kAutoRankLinkShare = 0.5;   // pushes use <= this share of the uplink
inline constexpr double kAutoRankGrowMargin = 0.7;  // grow only when 2f fits in 0.7 budget
inline constexpr absl::Duration kAutoRankWindow = absl::Milliseconds(500);
inline constexpr int kAutoRankSettleWindows = 2;
inline constexpr size_t kAutoRankWindowSamples = 4096;  // kept per window (the first ones)

// Payload bytes of one push of every parameter at fraction f: 4 (m + n) CompressionRank(spec,
// f) for a Dion matrix, 4 m n for the others. A Dion matrix split over k = spec.split_owners >= 2
// shards sends each owner its rows of the tall side's factor and the whole short side's factor:
// 4 (tall + k short) CompressionRank. `specs` must carry the owner counts the layout gives
// (Placement::split.size(), which may be below what the table asked for), as Client's do.
int64_t PushBytesAt(absl::Span<const ParamSpec> specs, double fraction);

// The fraction to use after `current` (in (0, 1]) given `budget_bytes` per push (file
// comment): a halving of `current` repeated until it fits or stops saving bytes, `current` * 2
// (at most `ceiling`, at most 1) when that fits kAutoRankGrowMargin of the budget, else
// `current`.
double NextRankFraction(absl::Span<const ParamSpec> specs, double current, double budget_bytes,
                        double ceiling = 1);

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

// Payload bytes of a contribution as PushBytesAt counts them, for a parameter split over
// `owners` shards (1: whole).
int64_t PayloadBytes(const Contribution& c, int owners = 1);

class PushRankController {
 public:
  // `specs`: the model's parameters; `start_fraction` in (0, 1]: the fraction until the first
  // decision, and the highest the controller goes.
  PushRankController(std::vector<ParamSpec> specs, double start_fraction);

  // A contribution of `payload_bytes` (PayloadBytes) was taken to be pushed.
  void OnSent(int64_t payload_bytes, absl::Time now);
  // Delivery rates (bytes/s) the uplink probe read at `now` (UplinkProbe::Sample).
  void OnDelivery(absl::Span<const double> rates, absl::Time now);

  struct State {
    double fraction = 0;          // the current push-rank fraction
    double rate_bytes_per_s = 0;  // the uplink's rate; 0 before the first window
    double sent_bytes_per_s = 0;  // payload pushed per second in the last window
    int64_t changes = 0;          // fraction changes so far
  };
  State state() const;
  double fraction() const;

 private:
  // Closes the window once it is kAutoRankWindow long, and decides. REQUIRES: mu_.
  void MaybeDecide(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::vector<ParamSpec> specs_;
  const double ceiling_;
  mutable Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_);
  absl::Time window_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::vector<double> window_ ABSL_GUARDED_BY(mu_);    // the open window's rate samples
  int64_t window_sent_ ABSL_GUARDED_BY(mu_) = 0;       // its payload bytes sent
  double previous_quartile_ ABSL_GUARDED_BY(mu_) = 0;  // the last closed window's
  absl::Time previous_end_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int windows_since_change_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace dion

#endif  // DION_WORKER_PUSH_RANK_H_
