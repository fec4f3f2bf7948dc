// A worker's copy of one parameter, kept in step with the owning shard by the versions it
// broadcasts (common/version_update.h). A low-rank step applies only to the version right
// before it; a full value replaces the copy at any version (on subscription, for a lagging
// subscriber, and after a shard restarted from an older checkpoint). Every version carries the
// checksum of the server's weights after it; a copy that no longer matches must be replaced by
// a full pull (NeedsResync). Until it is, in_sync() is false: the copy holds a version number
// but not that version's bits, so it must not be announced as held (Subscribe's `have`), or
// the shard would never send the full value that repairs it.
//
// A split parameter (common/layout.h) is assembled from its owners' row blocks of the tall
// side (X's rows when rows >= cols, else X's columns): each block has its own version,
// checksum and sync state, updated only by its owner's versions (VersionUpdate::rows) and
// values (SetBlock). The replica's version is the minimum over its blocks.
//
// Thread-safety: not safe for concurrent use; the client guards each replica with a lock.
#ifndef DION_WORKER_REPLICA_H_
#define DION_WORKER_REPLICA_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/matrix.h"
#include "common/param_spec.h"
#include "common/row_reduce.h"
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
  // cost of a second m x n matrix and two element-wise passes per version. `blocks`: empty for
  // a whole parameter; for a split one, its owners' rows of the tall side in row order.
  // REQUIRES: the blocks cover the tall side (Placement::split of the layout).
  explicit Replica(ParamSpec spec, bool track_last_step = false,
                   std::vector<RowBlock> blocks = {});

  // Applies `update` (to the block its rows name, for a split parameter). InvalidArgument
  // (nothing changed) when the update is for another parameter, names no block of this one
  // (or names one of a whole parameter), or its shapes do not fit.
  absl::StatusOr<ReplicaEvent> Apply(const VersionUpdate& update, bool verify_checksum = true);
  // Replaces the copy of a whole parameter with a pulled value. InvalidArgument for the wrong
  // shape or a split parameter, DataLoss when X does not match `checksum`; either way nothing
  // changes.
  absl::Status Set(int64_t version, const Matrix& X, uint64_t checksum);
  // The same for the block `rows` of a split parameter: `value` is X's rows of the block, or
  // X's columns when the parameter is wide, and `checksum` the block's. InvalidArgument when
  // `rows` is not a block of this parameter.
  absl::Status SetBlock(RowBlock rows, int64_t version, const Matrix& value, uint64_t checksum);

  const ParamSpec& spec() const { return spec_; }
  bool is_split() const { return split_; }
  // The minimum over the blocks (the one version of a whole parameter).
  int64_t version() const;
  bool has_value() const { return version() >= 0; }
  // Holds version() bit for bit as far as it knows: false after a checksum mismatch, until a
  // full value replaces the copy (of a split parameter: any block's).
  bool in_sync() const;
  // A split parameter's block `rows`: its version (-1 for rows that are no block) and whether
  // it is in sync.
  int64_t block_version(RowBlock rows) const;
  bool block_in_sync(RowBlock rows) const;
  // Counts every change of the copy (a resync uses it to notice an update that arrived while
  // it was pulling).
  uint64_t changes() const { return changes_; }
  const Matrix& value() const { return X_; }
  // The value extrapolated `steps` versions ahead along the last step: X + steps (X - X_prev),
  // where X_prev is the copy before the last version it applied; after a full value d > 1
  // versions ahead of an in-sync copy, the mean step (X - X_prev) / d; zero change after a value
  // that went back or repaired a copy out of sync. A trainer's lookahead
  // (worker/train/trainer.h). steps = 0, or a replica that does not track its last step, gives
  // value().
  void Extrapolate(double steps, Matrix* out) const;
  // The same into a view of the parameter's shape. REQUIRES: out is rows x cols.
  void Extrapolate(double steps, MatrixRef out) const;
  bool tracks_last_step() const { return track_last_step_; }

 private:
  // One block of a split parameter, or the whole parameter (rows {0, 0}).
  struct Block {
    RowBlock rows;
    int64_t version = -1;
    bool in_sync = false;
  };
  // The block `rows` names, or null. A whole parameter's one block is named by {0, 0}.
  Block* Find(RowBlock rows);
  const Block* Find(RowBlock rows) const;
  // X's part that `block` covers (its rows, or columns when the parameter is wide).
  MatrixRef View(Matrix& X, const Block& block) const;
  absl::Status SetIn(Block& block, int64_t version, const Matrix& value, uint64_t checksum);
  absl::StatusOr<ReplicaEvent> ApplyStep(Block& block, const VersionUpdate& update,
                                         bool verify_checksum);

  ParamSpec spec_;
  Matrix X_;
  bool track_last_step_;
  Matrix last_step_;  // X after the last version minus X before it; empty when not tracked
  bool split_ = false;
  bool wide_ = false;         // rows < cols: the blocks are X's columns
  std::vector<Block> blocks_;  // in row order; one {0, 0} for a whole parameter
  uint64_t changes_ = 0;
};

}  // namespace dion

#endif  // DION_WORKER_REPLICA_H_
