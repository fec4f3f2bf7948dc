// Coordinated checkpoints (docs/deploy.md, "Restoring all shards to the same cut"). A
// checkpoint written on a coordinator's request (the Checkpoint RPC) carries a run id and a
// cut, the global checkpoint sequence the coordinator gives every shard at once; a checkpoint
// the shard takes itself (timer, shutdown) carries the run id of the last coordinated one and
// no cut. Both live in the manifest's metadata under "run_id" and "cut" (absent: none).
//
// CutIndex is what a checkpointer knows of the coordinated checkpoints under its root, read
// from their manifests at start and updated on every write and prune: the newest cut of each
// run id (to order requests and answer a repeated one), the newest cut overall (Status), and
// which checkpoints are coordinated (retention keeps the newest of them).
//
// Thread-safety: CutTag, CutCheckpoint and CutEntry are plain values; the free functions keep
// no state; CutIndex is safe for concurrent use.
#ifndef DION_SERVER_CHECKPOINT_CUT_H_
#define DION_SERVER_CHECKPOINT_CUT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/mutex.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "server/checkpoint/checkpoint_manifest.h"

namespace dion {

inline constexpr absl::string_view kRunIdKey = "run_id";
inline constexpr absl::string_view kCutKey = "cut";

struct CutTag {
  std::string run_id;  // empty: none
  uint64_t cut = 0;    // 0: not a coordinated checkpoint
};

// A coordinated checkpoint: where it is, its tag, and the owned parameters' versions in it.
struct CutCheckpoint {
  std::string path;
  uint64_t sequence = 0;  // the checkpoint's number (its directory's)
  CutTag tag;
  std::vector<std::pair<std::string, int64_t>> versions;  // owned parameters, table order
  bool already_written = false;  // the answer to a repeated request: nothing new was written
};

// InvalidArgument unless `run_id` is 1 to 128 bytes of [A-Za-z0-9._-].
absl::Status ValidateRunId(absl::string_view run_id);
// A coordinator's request: a valid run id and a cut >= 1 (InvalidArgument otherwise).
absl::Status ValidateCutRequest(const CutTag& tag);

// The tag in a manifest's metadata (absent keys: empty run id, cut 0). DataLoss for a cut that
// is not an integer or a run id ValidateRunId refuses.
absl::StatusOr<CutTag> ReadCutTag(const CheckpointManifest& manifest);

// One coordinated checkpoint found under a root.
struct CutEntry {
  CheckpointInfo info;
  CutTag tag;
  std::vector<std::pair<std::string, int64_t>> versions;
};

// The coordinated checkpoints under `root`, newest first, read from their manifest.json only
// (tensors are not read or checked). A checkpoint whose manifest does not parse is left out:
// it cannot be restored either. Errors: those of ListCheckpoints.
absl::StatusOr<std::vector<CutEntry>> ListCuts(const std::string& root);

// "run r1: cuts 1, 2; run r2: cut 7" (each run's cuts ascending), or "none".
std::string DescribeCuts(const std::vector<CutEntry>& cuts);

class CutIndex {
 public:
  // Starts from the coordinated checkpoints under `root`; `last_run_id` is the run id of the
  // newest checkpoint that has one. A root that cannot be read gives an empty index (the
  // checkpointer's own calls report that error).
  void Load(const std::string& root) ABSL_LOCKS_EXCLUDED(mu_);

  // How a request for `tag` (ValidateCutRequest holds) relates to what was written: nullopt
  // when the cut is new for its run id; the earlier checkpoint (already_written) when it is the
  // newest cut of that run id; FailedPrecondition naming both cuts when it is lower.
  absl::StatusOr<std::optional<CutCheckpoint>> Check(const CutTag& tag) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // The newest cut of `run_id`, or nullopt.
  std::optional<CutCheckpoint> Find(absl::string_view run_id) const ABSL_LOCKS_EXCLUDED(mu_);
  // Records a checkpoint just written: coordinated when written.tag.cut >= 1.
  void Record(const CutCheckpoint& written) ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets the coordinated checkpoints not in `present` (retention deleted them).
  void KeepOnly(const std::vector<CheckpointInfo>& present) ABSL_LOCKS_EXCLUDED(mu_);

  // The run id a checkpoint the shard takes itself carries (empty: none).
  std::string last_run_id() const ABSL_LOCKS_EXCLUDED(mu_);
  // The tag of the newest coordinated checkpoint (by sequence), or an empty tag.
  CutTag newest() const ABSL_LOCKS_EXCLUDED(mu_);
  // The sequences of the `n` newest coordinated checkpoints present.
  std::vector<uint64_t> NewestSequences(size_t n) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void RecordLocked(const CutCheckpoint& written) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  std::map<std::string, CutCheckpoint> newest_by_run_ ABSL_GUARDED_BY(mu_);  // highest cut
  std::map<uint64_t, CutTag> present_ ABSL_GUARDED_BY(mu_);  // coordinated, by sequence
  CutTag newest_ ABSL_GUARDED_BY(mu_);
  uint64_t newest_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_run_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dion

#endif  // DION_SERVER_CHECKPOINT_CUT_H_
