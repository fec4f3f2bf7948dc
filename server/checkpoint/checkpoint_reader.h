// Reads one shard checkpoint directory (layout: server/checkpoint/checkpoint_encoding.h) back
// into what a shard needs to restore. Every error is DATA_LOSS naming the directory and the
// file or metadata key that is wrong, and what was expected.
//
// Thread-safety: ShardCheckpoint is a plain value; ReadShardCheckpoint keeps no state and is
// safe to call concurrently.
#ifndef DION_SERVER_CHECKPOINT_READER_H_
#define DION_SERVER_CHECKPOINT_READER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_table.h"
#include "server/batcher.h"
#include "server/checkpoint/checkpoint_cut.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "server/checkpoint/checkpoint_manifest.h"
#include "server/parameter_store.h"

namespace dion {

// What a shard needs to restore: a model, the parameters' snapshots and the dedup state.
struct ShardCheckpoint {
  std::string path;                          // the checkpoint directory
  uint64_t sequence = 0;                     // the checkpoint's number (monotonic per shard)
  CutTag tag;                                // run id and cut (server/checkpoint/checkpoint_cut.h)
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

// The content of the checkpoint `info`, whose files passed ValidateCheckpoint with `manifest`.
// Checks everything against everything else: the format, the shard's identity, the model
// table against the manifest, the owned parameters against the layout, each X against its
// recorded checksum, each tensor's dtype and shape against the parameter.
absl::StatusOr<ShardCheckpoint> ReadShardCheckpoint(const CheckpointInfo& info,
                                                    const CheckpointManifest& manifest);

}  // namespace dion

#endif  // DION_SERVER_CHECKPOINT_READER_H_
