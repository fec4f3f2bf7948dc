// Shard::CheckpointCut: a coordinated checkpoint (server/shard.h), kept apart from shard.cc,
// whose checkpoints it shares (CheckpointLocked).
#include <optional>
#include <string>

#include "server/checkpoint/checkpointer.h"
#include "server/shard.h"

namespace dion {

absl::StatusOr<CutCheckpoint> Shard::CheckpointCut(const CutTag& cut) {
  if (absl::Status s = ValidateCutRequest(cut); !s.ok()) return s;
  MutexLock checkpoint_lock(&checkpoint_mu_);
  if (checkpointer_ != nullptr) {  // a refusal or a repeat before the batches are flushed
    absl::StatusOr<std::optional<CutCheckpoint>> earlier = cuts_->Check(cut);
    if (!earlier.ok()) return earlier.status();
    if (earlier->has_value()) return **earlier;
  }
  absl::StatusOr<std::string> path = CheckpointLocked(cut);
  if (!path.ok()) return path.status();
  return cuts_->Find(cut.run_id).value();  // the one just written
}

}  // namespace dion
