// Checkpoints of one shard: every owned parameter's X and optimizer state, its version and
// counters, the batchers' dedup state, the model table and the shard's identity, in one
// directory per checkpoint (layout: server/checkpoint/checkpoint_encoding.h) written
// atomically by server/checkpoint/checkpoint_dir.h; numbering, pruning and restoring.
//
// Consistency: the caller (the shard) must flush the batchers and stop steps while a
// checkpoint is taken, so that no accepted contribution is both unapplied and marked as seen.
//
// Thread-safety: not safe for concurrent use; the shard serialises calls.
#ifndef DION_SERVER_CHECKPOINTER_H_
#define DION_SERVER_CHECKPOINTER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/batcher.h"
#include "server/checkpoint/checkpoint_reader.h"
#include "server/parameter_store.h"

namespace dion {

struct CheckpointerOptions {
  std::string root;      // directory holding ckpt-* directories; created if missing
  int keep_last = 3;     // older complete checkpoints are deleted after a successful write
};

class Checkpointer {
 public:
  explicit Checkpointer(CheckpointerOptions options);

  // Writes a checkpoint of everything the store owns plus the given batchers' dedup state
  // (batchers in the store's OwnedParameters() order). Returns the directory written.
  // REQUIRES: the store has a registered model; no step runs concurrently (see above).
  absl::StatusOr<std::string> Write(const ParameterStore& store,
                                    const std::vector<const Batcher*>& batchers);

  // The number of the last checkpoint Write wrote (0 before any), and of the oldest complete
  // checkpoint under root after pruning (0 when there is none).
  uint64_t last_written() const { return next_sequence_ == 0 ? 0 : next_sequence_ - 1; }
  absl::StatusOr<uint64_t> OldestKept() const;

  // The newest valid checkpoint under root. NotFound when there is none (fresh start);
  // DataLoss when checkpoints exist but none is valid (the message lists why).
  absl::StatusOr<ShardCheckpoint> LoadNewest() const;

  // Registers the checkpoint's model and workers in an empty store and restores every
  // parameter (the caller imports checkpoint.dedup into its batchers). FailedPrecondition if the
  // checkpoint's shard index / count differ from the store's options.
  static absl::Status RestoreInto(const ShardCheckpoint& checkpoint, ParameterStore& store);

 private:
  CheckpointerOptions options_;
  uint64_t next_sequence_ = 0;
};

}  // namespace dion

#endif  // DION_SERVER_CHECKPOINTER_H_
