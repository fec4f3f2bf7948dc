// Reads a write-ahead log file (format: server/wal/log_format.h) at recovery, record by
// record, and classifies how it ends:
// - clean: the file ends after a whole, valid record;
// - torn tail: the last record is incomplete or fails its checksum and no valid record
//   follows it (a crash during an append). Not an error: valid_end() is where to cut.
// - corrupt: a record fails its checksum or has an impossible length and a valid record
//   follows it. DataLoss naming the file and the offset, unless RecoverMode::kTruncate, which
//   ends the log there (valid_end() is that offset).
// A length is never trusted beyond the bytes left in the file and kMaxLogPayloadBytes.
//
// Thread-safety: a LogReader is used by one thread at a time. The free functions are safe to
// call concurrently, but not while a LogWriter appends to the same file.
#ifndef DION_SERVER_WAL_LOG_READER_H_
#define DION_SERVER_WAL_LOG_READER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dion {

enum class RecoverMode {
  kStrict,    // a corrupt record before the tail is an error
  kTruncate,  // a corrupt record ends the log: it and everything after it are dropped
};

enum class LogEnd { kClean, kTornTail, kCorruptDropped };

struct LogRecordView {
  uint64_t offset = 0;       // of the record's header
  absl::string_view payload;  // valid while the LogReader lives
};

class LogReader {
 public:
  // Maps `path` for reading. DataLoss if it does not start with the log's magic. An empty
  // file is an empty log; a shorter one holding a prefix of the header is a torn tail at 0.
  static absl::StatusOr<std::unique_ptr<LogReader>> Open(const std::string& path,
                                                         RecoverMode mode);
  ~LogReader();
  LogReader(const LogReader&) = delete;
  LogReader& operator=(const LogReader&) = delete;

  // Sets *record to the next record and returns true, or returns false at the end of the
  // valid log (end() and valid_end() then say how it ended). DataLoss for a corrupt record in
  // kStrict mode.
  absl::StatusOr<bool> Next(LogRecordView* record);

  // Meaningful once Next returned false.
  LogEnd end() const { return end_; }
  uint64_t valid_end() const { return pos_; }  // the size the file should be cut to
  uint64_t file_size() const { return size_; }

 private:
  LogReader(std::string path, const char* data, uint64_t size, RecoverMode mode);
  // Empty if a valid record starts at `offset`, else why not; *payload_size is set if valid.
  std::string CheckRecordAt(uint64_t offset, uint32_t* payload_size) const;
  bool ValidRecordAfter(uint64_t offset) const;

  const std::string path_;
  const char* const data_;  // the mapped file (nullptr when empty)
  const uint64_t size_;
  const RecoverMode mode_;
  uint64_t pos_;
  bool done_ = false;
  LogEnd end_ = LogEnd::kClean;
};

// Every valid record of a log, and how it ended.
struct LogContents {
  std::vector<uint64_t> offsets;
  std::vector<std::string> payloads;
  LogEnd end = LogEnd::kClean;
  uint64_t valid_end = 0;  // cut the file to this size (TruncateTo) before appending
  uint64_t file_size = 0;
};
absl::StatusOr<LogContents> ReadLog(const std::string& path, RecoverMode mode);

// Cuts `path` to `size` bytes and fdatasyncs it.
absl::Status TruncateTo(const std::string& path, uint64_t size);

}  // namespace dion

#endif  // DION_SERVER_WAL_LOG_READER_H_
