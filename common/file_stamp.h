// Whether a small configuration file changed, and its bytes: what the shard's tokens file and
// a client's token file are re-read by (Kubernetes swaps a mounted Secret's files, which
// changes their inode, size or modification time).
//
// Thread-safety: the functions are thread-safe.
#ifndef DION_COMMON_FILE_STAMP_H_
#define DION_COMMON_FILE_STAMP_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dion {

struct FileStamp {
  int64_t mtime_ns = 0;
  int64_t size = -1;  // -1: the file could not be stat'ed
  int64_t inode = 0;
  bool operator==(const FileStamp& o) const {
    return mtime_ns == o.mtime_ns && size == o.size && inode == o.inode;
  }
};

FileStamp StampOf(const std::string& path);

// The whole file. InvalidArgument "<what>: cannot read '<path>'" when it cannot be opened.
absl::StatusOr<std::string> ReadWholeFile(absl::string_view what, const std::string& path);

}  // namespace dion

#endif  // DION_COMMON_FILE_STAMP_H_
