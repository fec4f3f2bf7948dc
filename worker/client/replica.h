// A worker's copy of one parameter, kept in step with the owning shard by the versions it
// broadcasts (common/version_update.h). A low-rank step applies only to the version right
// before it; a full value replaces the copy at any version (on subscription, for a lagging
// subscriber, and after a shard restarted from an older checkpoint). Every version carries the
// checksum of the server's weights after it; a copy that no longer matches must be replaced by
// a full pull (NeedsResync). Until it is, in_sync() is false: the copy holds a version number
// but not that version's bits, so it must not be announced as held (Subscribe's `have`), or
// the shard would never send the full value that repairs it.
//
// Thread-safety: not safe for concurrent use; the client guards each replica with a lock.
#ifndef DION_WORKER_REPLICA_H_
#define DION_WORKER_REPLICA_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/matrix.h"
#include "common/param_spec.h"
#include "common/version_update.h"

namespace dion {

// What Apply did.
enum class ReplicaEvent {
  kApplied,           // a low-rank step from version - 1; checksum verified (when enabled)
  kReplaced,          // a full value at a newer version (or the first one)
  kWentBack,          // a full value at an older version: the shard restarted from a checkpoint
  kIgnored,           // a low-rank step for a version the copy already has
  kGap,               // a low-rank step beyond version + 1: a version was missed; resync
  kChecksumMismatch,  // the copy differs from the server's after this version; resync
                      // (also a low-rank step applied to a copy already out of sync)
};
absl::string_view ReplicaEventName(ReplicaEvent event);
// kGap and kChecksumMismatch: the copy must be replaced by a pulled full value.
inline bool NeedsResync(ReplicaEvent e) {
  return e == ReplicaEvent::kGap || e == ReplicaEvent::kChecksumMismatch;
}

class Replica {
 public:
  // Starts at version -1 (nothing held) with zeros; the first full value sets it. With
  // `track_last_step`, it also keeps the change made by the last version (Extrapolate), at the
  // cost of a second m x n matrix and two element-wise passes per version.
  explicit Replica(ParamSpec spec, bool track_last_step = false);

  // Applies `update`. InvalidArgument (nothing changed) when the update is for another
  // parameter or its shapes do not fit this parameter.
  absl::StatusOr<ReplicaEvent> Apply(const VersionUpdate& update, bool verify_checksum = true);
  // Replaces the copy with a pulled value. InvalidArgument for the wrong shape, DataLoss when X
  // does not match `checksum`; either way nothing changes.
  absl::Status Set(int64_t version, const Matrix& X, uint64_t checksum);

  const ParamSpec& spec() const { return spec_; }
  int64_t version() const { return version_; }
  bool has_value() const { return version_ >= 0; }
  // Holds version() bit for bit as far as it knows: false after a checksum mismatch, until a
  // full value replaces the copy.
  bool in_sync() const { return has_value() && in_sync_; }
  // Counts every change of the copy (a resync uses it to notice an update that arrived while
  // it was pulling).
  uint64_t changes() const { return changes_; }
  const Matrix& value() const { return X_; }
  // The value extrapolated `steps` versions ahead along the last step: X + steps (X - X_prev),
  // where X_prev is the copy before the last version it applied (zero change after a full value
  // that did not follow the in-sync previous version directly). A trainer's lookahead
  // (worker/train/trainer.h). steps = 0, or a replica that does not track its last step, gives
  // value().
  void Extrapolate(double steps, Matrix* out) const;
  // The same into a view of the parameter's shape. REQUIRES: out is rows x cols.
  void Extrapolate(double steps, MatrixRef out) const;
  bool tracks_last_step() const { return track_last_step_; }

 private:
  ParamSpec spec_;
  Matrix X_;
  bool track_last_step_;
  Matrix last_step_;  // X after the last version minus X before it; empty when not tracked
  int64_t version_ = -1;
  bool in_sync_ = false;
  uint64_t changes_ = 0;
};

}  // namespace dion

#endif  // DION_WORKER_REPLICA_H_
