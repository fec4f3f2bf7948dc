// The worker side of one parameter's pushes: accumulates local gradients, cuts them into
// contributions, and keeps every contribution until the shard has acknowledged it, so that
// nothing is lost that the shard may still apply (docs/protocol.md, Push).
//
// Units: the accumulator holds *sums* of per-sample gradients (each local step adds
// G * samples, G being the step's mean gradient). A contribution carries the mean over its
// samples, payload = sum / S with sample_count = S, because the shard combines contributions
// as a mean weighted by samples. Restoring a refused contribution adds payload * S back.
//
// Dion matrices go through the LowRankCompressor (residual E, warm-started Qw): payload P R^T
// with R already divided by S; what rank-rw factors did not capture stays in E. Other
// parameters carry their dense mean gradient and keep no residual.
//
// Ages: a contribution's base_version is the oldest base version of what it carries: the
// local steps and the contributions restored into it (a restored contribution keeps its
// original base_version, so the shard bounds and weights its true staleness). Acknowledgements
// settle a contribution one of three ways (AckAction): released (applied, or its fate is out
// of the worker's hands), restored (certainly not applied and may be applied later: shard
// unavailable, shutting down or restarted), or dropped as stale. STALE means the content is
// older than the shard's max_staleness, the bound above which gradients are not applied; with
// its true base it would be refused again on every re-send, so it is dropped (the client
// counts its samples) and never re-sent.
//
// Adaptive local accumulation: the client takes a contribution only while fewer than
// max_in_flight are unacknowledged; until then local steps keep accumulating here, so the
// number of local steps per push grows by itself when the link is slow.
//
// Invariant (tested): sum of released payloads * S + dropped-as-stale payloads * S + in-flight
// payloads * S + residual (+ the not yet taken dense sum) == sum over local steps of
// G * samples, to float rounding.
//
// Differential privacy (set_clip, docs/privacy.md "Clipping"): with a clip C > 0, each local
// step's mean gradient G is clipped to ||G||_F <= C before it enters the error-feedback
// residual (so E only ever holds clipped steps), and each contribution's payload, the mean
// over its samples that the shard receives, is clipped to ||payload||_F <= C after
// compression. What the payload clip removes is dropped, never put back into E: an unclipped
// remainder would otherwise leak out in a later contribution. The invariant above then holds
// for the clipped steps, less what the payload clips dropped.
//
// Thread-safety: not safe for concurrent use; the client holds one lock per accumulator.
#ifndef DION_WORKER_GRADIENT_ACCUMULATOR_H_
#define DION_WORKER_GRADIENT_ACCUMULATOR_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/compressor.h"
#include "common/contribution.h"
#include "common/matrix.h"
#include "common/param_spec.h"

namespace dion {

// The newest sequence taken minus the oldest one still unacknowledged stays below this (Take
// waits otherwise): half the dedup window every shard keeps per worker and parameter (4096,
// server/sequence_window.h). A re-sent sequence therefore never falls below the window, where
// the shard could only answer that it cannot tell whether it was applied.
inline constexpr uint64_t kMaxUnacknowledgedSpan = 2048;

// How an acknowledgement settles a contribution in flight.
enum class AckAction {
  kRelease,    // applied (ACCEPTED, DUPLICATE), or dropped with its fate unknown
  kRestore,    // certainly not applied: back into the residual, keeping its base_version
  kDropStale,  // refused as STALE: dropped, never re-sent
};

class GradientAccumulator {
 public:
  // `compression_rank` is the worker's rank rw for a Dion parameter (clamped into
  // [1, min(m, n)]); ignored for the others. `first_sequence` numbers the first contribution
  // (see ClientOptions: it must grow across restarts of a worker with the same id).
  GradientAccumulator(ParamSpec spec, int compression_rank, uint64_t seed,
                      uint64_t first_sequence);

  // Adds one local step: G (rows x cols, the step's mean gradient) over `samples` > 0
  // samples, computed against `base_version`. InvalidArgument (nothing changed) for a wrong
  // shape, samples <= 0 or non-finite G.
  absl::Status Accumulate(ConstMatrixRef G, int64_t samples, double loss, int64_t base_version);

  // Clip norm C of the differentially private mode (file comment); 0, the default, is off.
  // REQUIRES: clip >= 0, finite; set before the first Accumulate.
  void set_clip(double clip) { clip_ = clip; }
  double clip() const { return clip_; }

  // The rank of the next Take's factors (a Dion parameter; ignored for the others), clamped
  // into [1, min(m, n)]: the adaptive push rank (worker/client/push_rank.h) changes it between
  // contributions. Nothing is lost: the residual E keeps what lower-rank factors leave out,
  // and in-flight contributions of the old rank are restored as they are (file comment).
  void set_compression_rank(int rank) {
    if (compressor_.has_value()) compressor_->SetRank(rank);
  }
  // The rank of the next Take's factors; 0 for a dense parameter.
  int compression_rank() const { return compressor_.has_value() ? compressor_->rank() : 0; }

  // Local steps (and samples) accumulated since the last contribution was taken.
  int pending_steps() const { return pending_steps_; }
  int64_t pending_samples() const { return pending_samples_; }
  int in_flight() const { return static_cast<int>(in_flight_.size()); }

  // Cuts the next contribution (sequence numbers increase by one) from everything accumulated
  // and records it as in flight at `now`. Its base_version is the oldest base version of the
  // local steps and restored contributions in it, capped at `current_version` (the replica's
  // version: only above it when the replica went back with a shard restarted from an older
  // checkpoint, where a base from the abandoned future would be refused as OUT_OF_RANGE
  // forever). When the compressor captures nothing (a zero residual), the contribution has
  // zero rank-1 factors: it still carries the samples, whose mean gradient is zero, so nothing
  // stays pending for ever. Null when nothing is pending, or when taking one more would put
  // kMaxUnacknowledgedSpan sequences between the oldest unacknowledged one and the new one.
  // The pointer stays valid until that sequence is acknowledged (no copy of the factors per
  // push).
  const Contribution* Take(const std::string& worker_id, int64_t current_version,
                           absl::Time now);
  // Like Take, but for a worker about to exit: the contribution carries the pending samples
  // and, for a Dion matrix, the residual E exactly, as a full-rank factorisation (P = E,
  // R = I / S when n <= m; P = I, R = E^T / S otherwise), at most `max_rank` >= 1 columns of it
  // (the first non-zero ones; the rest stays in E for the next call, so a matrix whose whole
  // factorisation would exceed the message limit goes out in parts). S is the pending sample
  // count, or 1 when only the residual is left: E's samples were counted by the contributions
  // that left it behind, and 1 is the smallest count the protocol allows. Null when nothing is
  // pending and E is zero, or as for Take. Dense parameters: the same as Take.
  const Contribution* TakeWhole(const std::string& worker_id, int64_t current_version,
                                absl::Time now, int64_t max_rank);
  // True when TakeWhole would have something to send (pending samples or a non-zero E).
  bool HasAnythingToFlush() const;

  // The shard acknowledged `sequence`; `action` says how it settles (AckAction). Returns the
  // contribution and when it was taken, or NotFound for a sequence not in flight (e.g.
  // acknowledged twice after a re-send). A contribution to restore that cannot be put back
  // (non-finite once scaled) gives the compressor's error and is dropped from in flight.
  struct Acknowledged {
    Contribution contribution;
    absl::Time taken;
  };
  absl::StatusOr<Acknowledged> Acknowledge(uint64_t sequence, AckAction action);
  // Every in-flight contribution, oldest first (to resend on a new stream, same sequences).
  std::vector<const Contribution*> InFlight() const;

  // Sum of everything that is neither in flight nor accepted, in sum units: the compressor's
  // residual plus (dense) the gradient sum not taken yet. For tests and metrics.
  Matrix Outstanding() const;
  // Everything not settled yet, in sum units: Outstanding() plus every in-flight payload * S,
  // and the samples pending or in flight: what a worker exiting now would lose.
  Matrix Unsettled() const;
  int64_t unsettled_samples() const;
  const ParamSpec& spec() const { return spec_; }
  // Numbers sent per contribution vs a dense gradient: rows * cols / numbers in the payload.
  double compression_ratio() const;

 private:
  absl::Status PutBack(const Contribution& contribution);
  // Records `c`, filled with a payload, as the next sequence in flight with `samples` samples
  // and resets what is pending. Take's and TakeWhole's common end.
  const Contribution* Seal(Contribution c, int64_t samples, const std::string& worker_id,
                           int64_t current_version, absl::Time now);
  bool SpanFull() const;
  // The payload clip of the file comment (no-op when clip_ is 0).
  void ClipPayload(Contribution& c) const;
  // The next full-rank block of E (TakeWhole), removed from E; zero rank-1 factors when E is 0.
  LowRankFactors TakeResidualBlock(int64_t max_rank);

  ParamSpec spec_;
  std::optional<LowRankCompressor> compressor_;  // Dion parameters
  Matrix dense_sum_;                             // the others: sum of G * samples since Take
  Matrix scaled_;                                // scratch: G * samples
  uint64_t next_sequence_;
  double clip_ = 0.0;                            // 0: no clipping
  int pending_steps_ = 0;
  int64_t pending_samples_ = 0;
  double pending_loss_sum_ = 0.0;                // sum of loss * samples of fresh steps
  int64_t pending_loss_samples_ = 0;             // samples of fresh steps
  int64_t pending_base_version_ = -1;            // oldest base version of what is pending
  struct Sent {
    Contribution contribution;
    absl::Time taken;
  };
  std::map<uint64_t, Sent> in_flight_;
};

}  // namespace dion

#endif  // DION_WORKER_GRADIENT_ACCUMULATOR_H_
