// The manifest of one checkpoint directory: its version, the caller's metadata, and every
// file's name, size and checksum, stored as manifest.json. What a manifest is and how it reads
// and writes as JSON; server/checkpoint/checkpoint_dir.h writes and validates checkpoints with
// it. No file system access here.
//
// Checksum: FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3, one byte at a
// time) over each file's complete bytes, recorded as 16 lower-case hex digits. Chosen because
// it is tiny, standard and checkable from Python in three lines; it detects corruption, not
// tampering.
//
// Thread-safety: Fnv1a64, ManifestFile and CheckpointManifest are plain values: one thread at
// a time per object, any number of objects concurrently. The free functions keep no state and
// are safe to call concurrently.
#ifndef DION_SERVER_CHECKPOINT_MANIFEST_H_
#define DION_SERVER_CHECKPOINT_MANIFEST_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dion {

// Streaming FNV-1a 64 (see the file comment).
class Fnv1a64 {
 public:
  void Update(absl::string_view bytes);
  uint64_t digest() const { return state_; }
  static uint64_t Of(absl::string_view bytes);
  static std::string Hex(uint64_t digest);  // 16 lower-case hex digits

 private:
  uint64_t state_ = 0xcbf29ce484222325ULL;
};

struct ManifestFile {
  std::string name;     // relative to the checkpoint directory: [A-Za-z0-9._+-], no leading '.'
  int64_t bytes = 0;    // exact file size
  uint64_t fnv1a64 = 0; // checksum of the whole file
};

struct CheckpointManifest {
  uint64_t version = 0;                         // equals the directory's number
  std::map<std::string, std::string> metadata;  // free-form, chosen by the caller (UTF-8)
  std::vector<ManifestFile> files;              // in the order they were added

  // The entry for `name`, or nullptr.
  const ManifestFile* Find(absl::string_view name) const;
};

inline constexpr absl::string_view kManifestFileName = "manifest.json";

// True if `name` may be a ManifestFile name: 1 to 255 characters of [A-Za-z0-9._+-], not
// starting with '.', so it can never leave the checkpoint directory. Does not exclude
// kManifestFileName: callers refuse that name themselves.
bool IsSafeManifestFileName(absl::string_view name);

// JSON text of the manifest, and its inverse. ParseManifest accepts any JSON with the same
// fields (whitespace, key order and unknown keys are free) and refuses unsafe file names.
std::string SerializeManifest(const CheckpointManifest& manifest);
absl::StatusOr<CheckpointManifest> ParseManifest(absl::string_view json,
                                                 absl::string_view source = "manifest");

}  // namespace dion

#endif  // DION_SERVER_CHECKPOINT_MANIFEST_H_
