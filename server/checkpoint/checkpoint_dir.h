// Atomic checkpoint directories: how a shard's state reaches the disk so that a crash never
// leaves a half checkpoint and a restart finds the newest complete, uncorrupted one.
//
// Layout under a root directory:
//   <root>/ckpt-000000000042/            a complete checkpoint (version 42)
//       manifest.json                    version, metadata, and every file's size and checksum
//       <name>.npy ...                   the tensors (numpy.load reads each)
//   <root>/ckpt-000000000043.tmp-1a2b3c4d/   being written, or left by a crash: never restored
//
// A CheckpointWriter writes into the .tmp- directory, fsyncs every file and the directory,
// renames it to its final name and fsyncs the root: the rename is the commit point. What goes
// in (which tensors, which metadata) is the caller's business; this layer only guarantees that
// what it restores is exactly what was committed.
//
// The manifest and its checksum (FNV-1a 64): server/checkpoint/checkpoint_manifest.h.
//
// Thread-safety: a CheckpointWriter is used by one thread at a time. The free functions are
// safe to call concurrently with each other, but RemoveStaleTemporaries and PruneCheckpoints
// delete directories and must not run while a writer of the same root is between Begin and
// Commit (call them at start-up and after Commit).
#ifndef DION_SERVER_CHECKPOINT_DIR_H_
#define DION_SERVER_CHECKPOINT_DIR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/checkpoint/checkpoint_manifest.h"
#include "common/matrix.h"

namespace dion {

// "ckpt-" followed by the version, zero-padded to 12 digits (longer if it needs more).
std::string CheckpointDirName(uint64_t version);

// Writes one checkpoint. Not thread-safe. Destroying an uncommitted writer aborts it (removes
// its temporary directory); a crash leaves the temporary directory, which is never restored.
class CheckpointWriter {
 public:
  // Creates <root> if needed and <root>/ckpt-<version>.tmp-<random>/.
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Begin(const std::string& root,
                                                                 uint64_t version);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Writes and fsyncs one file. INVALID_ARGUMENT for an unsafe or duplicate name (or
  // "manifest.json"), FAILED_PRECONDITION after Commit or Abort.
  absl::Status AddFile(absl::string_view name, absl::string_view bytes);
  // Writes a .npy tensor; streamed from the matrix, without an extra copy of its data.
  absl::Status AddNpy(absl::string_view name, const Matrix& m, bool one_dimensional = false);
  absl::Status AddNpyFloat64(absl::string_view name, const MatrixD& m,
                             bool one_dimensional = false);
  absl::Status AddNpyInt64(absl::string_view name, absl::Span<const int64_t> values);
  // Sets (or replaces) one metadata entry of the manifest.
  void SetMetadata(absl::string_view key, absl::string_view value);

  // Writes manifest.json, fsyncs, renames to <root>/ckpt-<version>/ and fsyncs the root.
  // Returns the final path. If a valid checkpoint of this version already exists:
  // ALREADY_EXISTS and nothing changes; an invalid one (e.g. the corrupt checkpoint a restore
  // skipped) is first renamed aside to ckpt-<version>.invalid-<random>.
  absl::StatusOr<std::string> Commit();
  // Removes the temporary directory. Idempotent.
  void Abort();
  // Stops without removing the temporary directory, which is never restored and is removed by
  // the next RemoveStaleTemporaries (a shutdown out of time has no time for the removal).
  void Abandon() { finished_ = true; }

  const std::string& temp_path() const { return temp_path_; }
  uint64_t version() const { return manifest_.version; }

 private:
  CheckpointWriter(std::string root, std::string temp_path, uint64_t version);
  absl::Status AddChunks(absl::string_view name, absl::string_view header,
                         absl::string_view data);

  std::string root_;
  std::string temp_path_;
  CheckpointManifest manifest_;
  bool finished_ = false;  // committed or aborted
};

struct CheckpointInfo {
  uint64_t version = 0;
  std::string path;  // <root>/ckpt-<version>
};

// Complete (committed) checkpoints, newest first; an absent root is an empty list. Temporary
// and other directories are ignored. Says nothing about validity: see ValidateCheckpoint.
absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(const std::string& root);

// Checks that <dir>/manifest.json parses, records the directory's version, and that every
// listed file exists with the recorded size and checksum (reads every byte). DATA_LOSS with
// the directory, file and expectation in the message otherwise.
absl::StatusOr<CheckpointManifest> ValidateCheckpoint(const std::string& dir);

struct RestorePoint {
  CheckpointInfo checkpoint;
  CheckpointManifest manifest;
  // One line per newer checkpoint that was skipped, with the reason: the caller logs them.
  std::vector<std::string> skipped;
};

// The newest checkpoint that passes ValidateCheckpoint, skipping invalid ones. NOT_FOUND if
// the root holds no checkpoint at all (a fresh start); DATA_LOSS listing every reason if
// checkpoints exist but none is valid.
absl::StatusOr<RestorePoint> FindNewestValidCheckpoint(const std::string& root);

// Deletes ckpt-*.tmp-* directories left by crashed or aborted writers; returns how many.
absl::StatusOr<int> RemoveStaleTemporaries(const std::string& root);

// Retention: keeps the keep_last (>= 1) newest complete checkpoints by version, and those
// whose version is in `also_keep`, and deletes the others; returns how many were deleted. A
// directory is first renamed to a .tmp- name and then removed, so a crash mid-delete never
// leaves something that looks complete.
absl::StatusOr<int> PruneCheckpoints(const std::string& root, int keep_last,
                                     absl::Span<const uint64_t> also_keep = {});

}  // namespace dion

#endif  // DION_SERVER_CHECKPOINT_DIR_H_
