// Checkpoints of one shard: every owned parameter's X and optimizer state, its version and
// counters, the batchers' dedup state, the model table and the shard's identity, in one
// directory per checkpoint (layout: server/checkpoint/checkpoint_encoding.h) written
// atomically by server/checkpoint/checkpoint_dir.h; numbering, pruning and restoring.
//
// Consistency: Write(store, batchers) reads the live store, so the caller must flush the
// batchers and stop steps meanwhile, so that no accepted contribution is both unapplied and
// marked as seen. WriteContents writes what the caller took at one cut (CheckpointContents),
// parameter by parameter, while the shard goes on (server/snapshot_slot.h).
//
// Coordinated checkpoints carry a run id and a cut (server/checkpoint/checkpoint_cut.h);
// retention keeps the keep_last newest checkpoints and, besides, the keep_last newest
// coordinated ones, so that a cut every shard has survives the shards' own checkpoints.
//
// Thread-safety: not safe for concurrent use; the shard serialises calls. cuts() is the
// exception: it may be read from any thread at any time.
#ifndef DION_SERVER_CHECKPOINTER_H_
#define DION_SERVER_CHECKPOINTER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/batcher.h"
#include "server/checkpoint/checkpoint_cut.h"
#include "server/checkpoint/checkpoint_reader.h"
#include "server/parameter_store.h"

namespace dion {

struct CheckpointerOptions {
  std::string root;      // directory holding ckpt-* directories; created if missing
  int keep_last = 3;     // older complete checkpoints are deleted after a successful write
};

// A checkpoint's content, taken by the caller at one cut.
struct CheckpointContents {
  std::vector<std::string> workers;                  // registered at the cut
  std::vector<std::vector<WorkerDedupState>> dedup;  // OwnedParameters() order
  // Parameter i (OwnedParameters() order, with optimizer state) at the cut; asked for once
  // each, in order, and written before the next is asked for.
  std::function<absl::StatusOr<ParameterSnapshot>(size_t i)> parameter;
  // Asked before each parameter; an error abandons the checkpoint (nothing is committed; its
  // temporary directory is left for the next write to remove) and is returned.
  std::function<absl::Status()> keep_going = [] { return absl::OkStatus(); };
};

class Checkpointer {
 public:
  explicit Checkpointer(CheckpointerOptions options);

  // Writes a checkpoint of everything the store owns plus the given batchers' dedup state
  // (batchers in the store's OwnedParameters() order). Returns the directory written.
  // With cut.cut == 0 the checkpoint carries cuts().last_run_id() and no cut; otherwise it is
  // the coordinated checkpoint `cut` (ValidateCutRequest: InvalidArgument), which must be new
  // for its run id: FailedPrecondition for a lower cut, AlreadyExists for the same one (ask
  // cuts().Check() first to answer a repeated request).
  // REQUIRES: the store has a registered model; no step runs concurrently (see above).
  absl::StatusOr<std::string> Write(const ParameterStore& store,
                                    const std::vector<const Batcher*>& batchers,
                                    const CutTag& cut = {});

  // A number for the next checkpoint, above every checkpoint under root, every number this
  // checkpointer wrote or reserved, and at least `at_least`; it is used up even if the write
  // of it fails. Removes temporaries left by an interrupted write first.
  absl::StatusOr<uint64_t> ReserveSequence(uint64_t at_least = 0);
  // Writes checkpoint `sequence` (ReserveSequence) of `contents`; the model and the shard's
  // identity come from `store`. Cut and errors as Write; DeadlineExceeded or whatever
  // contents.keep_going returned when it stopped the write.
  absl::StatusOr<std::string> WriteContents(uint64_t sequence, const ParameterStore& store,
                                            const CheckpointContents& contents,
                                            const CutTag& cut = {});

  // The number of the last checkpoint Write wrote (0 before any), and of the second-newest
  // complete checkpoint under root (the newest when there is one, 0 when there is none): the
  // write-ahead logs from it on are what a fallback to it needs.
  uint64_t last_written() const { return last_written_; }
  absl::StatusOr<uint64_t> SecondNewest() const;

  // The newest valid checkpoint under root. NotFound when there is none (fresh start);
  // DataLoss when checkpoints exist but none is valid (the message lists why).
  absl::StatusOr<ShardCheckpoint> LoadNewest() const;
  // The newest valid checkpoint of `cut` (>= 1) and `run_id` (empty: whichever run has that
  // cut, which must be one). FailedPrecondition naming the cuts present when there is none, or
  // naming the runs when several have the cut; DataLoss when every copy is damaged;
  // InvalidArgument for cut 0 or a malformed run id.
  absl::StatusOr<ShardCheckpoint> LoadCut(absl::string_view run_id, uint64_t cut) const;
  // LoadCut when cut >= 1, else LoadNewest.
  absl::StatusOr<ShardCheckpoint> Load(absl::string_view run_id, uint64_t cut) const {
    return cut == 0 ? LoadNewest() : LoadCut(run_id, cut);
  }

  // The coordinated checkpoints written or found under root. Thread-safe.
  const CutIndex& cuts() const { return cuts_; }

  // Registers the checkpoint's model and workers in an empty store and restores every
  // parameter (the caller imports checkpoint.dedup into its batchers). FailedPrecondition if the
  // checkpoint's shard index / count differ from the store's options.
  static absl::Status RestoreInto(const ShardCheckpoint& checkpoint, ParameterStore& store);

 private:
  // Deletes what retention does not keep (see the file comment).
  absl::Status Prune(const std::string& written);

  CheckpointerOptions options_;
  uint64_t next_sequence_ = 0;  // above every number written or reserved
  uint64_t last_written_ = 0;
  CutIndex cuts_;
};

}  // namespace dion

#endif  // DION_SERVER_CHECKPOINTER_H_
