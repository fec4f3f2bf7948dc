// Checkpoints of one shard: every owned parameter's X and optimizer state (as .npy tensors:
// X, M, Q for Dion; m, v for AdamW; m for Lion; M for Muon), its version and counters, the
// batchers' dedup state, the model table and the shard's identity, in one directory per
// checkpoint written atomically by server/checkpoint/checkpoint_dir.h.
//
// Consistency: the caller (the shard) must flush the batchers and stop steps while a
// checkpoint is taken, so that no accepted contribution is both unapplied and marked as seen.
//
// Thread-safety: not safe for concurrent use; the shard serialises calls.
#ifndef DION_SERVER_CHECKPOINTER_H_
#define DION_SERVER_CHECKPOINTER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/batcher.h"
#include "common/model_table.h"
#include "server/parameter_store.h"

namespace dion {

struct CheckpointerOptions {
  std::string root;      // directory holding ckpt-* directories; created if missing
  int keep_last = 3;     // older complete checkpoints are deleted after a successful write
};

// What a shard needs to restore: a model, the parameters' snapshots and the dedup state.
struct ShardCheckpoint {
  std::string path;                          // the checkpoint directory
  uint64_t sequence = 0;                     // the checkpoint's number (monotonic per shard)
  int shard_index = 0;
  int num_shards = 1;
  ModelTable table;                          // the registered model, without initial values
  // Per table parameter: the checksum of its explicit initial value, or nullopt. The values
  // themselves are not kept (a shard does not hold them); ParameterStore::RegisterRestoredModel
  // keeps the model's identity with these.
  std::vector<std::optional<uint64_t>> initial_value_checksums;
  std::vector<ParameterSnapshot> parameters; // owned parameters, with optimizer state
  // Dedup state per parameter, same order as `parameters`.
  std::vector<std::vector<WorkerDedupState>> dedup;
  std::vector<std::string> workers;          // registered workers
  std::vector<std::string> skipped;          // newer checkpoints skipped, with the reason
};

class Checkpointer {
 public:
  explicit Checkpointer(CheckpointerOptions options);

  // Writes a checkpoint of everything the store owns plus the given batchers' dedup state
  // (batchers in the store's OwnedParameters() order). Returns the directory written.
  // REQUIRES: the store has a registered model; no step runs concurrently (see above).
  absl::StatusOr<std::string> Write(const ParameterStore& store,
                                    const std::vector<const Batcher*>& batchers);

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
