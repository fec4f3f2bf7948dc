// LogWriter appends records (format: server/wal/log_format.h) to one write-ahead log file and
// makes them durable according to its LogSync mode.
//
// kAlways uses group commit: Append writes its record, then either becomes the leader that
// fdatasyncs everything written so far, or waits for the leader whose sync covers its record;
// concurrent appenders thus share one fdatasync. kInterval fdatasyncs from a background
// thread at most once per interval (a crash loses up to one interval of appended records);
// kNone never syncs (a crash of the machine, not of the process, loses what the OS had not
// written back).
//
// After a failed write or sync the writer is broken: every later Append or Sync returns
// FailedPrecondition with the first error, so the file never holds a hole followed by records.
//
// Thread-safety: thread-safe; Append and Sync may be called concurrently from any threads.
#ifndef DION_SERVER_WAL_LOG_FILE_H_
#define DION_SERVER_WAL_LOG_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/mutex.h"

namespace dion {

// When appended records reach the disk.
struct LogSync {
  enum class Mode { kAlways, kInterval, kNone };
  Mode mode = Mode::kAlways;
  absl::Duration interval = absl::ZeroDuration();  // kInterval only; > 0

  static LogSync Always() { return {Mode::kAlways, absl::ZeroDuration()}; }
  static LogSync Interval(absl::Duration every) { return {Mode::kInterval, every}; }
  static LogSync None() { return {Mode::kNone, absl::ZeroDuration()}; }
};

class LogWriter {
 public:
  // Opens `path` for appending, creating it (with its file header, synced, and the directory
  // entry synced) if it does not exist or is empty. An existing file must start with a valid
  // file header and end after a whole record: run ReadLog and TruncateTo (log_reader.h) on it
  // first. Errors name the file and the errno text.
  static absl::StatusOr<std::unique_ptr<LogWriter>> Open(const std::string& path,
                                                         LogSync sync);
  // Stops the background flusher, fdatasyncs what is unsynced (kAlways, kInterval), closes.
  ~LogWriter();
  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;

  // Appends one record holding `payload` and returns its offset; with kAlways it is on disk
  // when this returns. InvalidArgument for a payload over kMaxLogPayloadBytes; the errno of a
  // failed write or fdatasync; FailedPrecondition once the writer is broken.
  absl::StatusOr<uint64_t> Append(absl::string_view payload);

  // Appends one record without waiting for the disk, whatever the mode, and returns the
  // file's end offset after it; WaitDurable(end) then waits as Append would. Lets a caller
  // order records under its own lock and wait for the sync outside it.
  absl::StatusOr<uint64_t> Write(absl::string_view payload);
  // kAlways: returns once every byte before `end` is on disk (group commit, as Append).
  // kInterval, kNone: returns at once. The writer's error once it is broken.
  absl::Status WaitDurable(uint64_t end);

  // Makes every record appended so far durable, whatever the mode.
  absl::Status Sync();

  // fdatasync calls made for appended records (not the one creating the file).
  uint64_t syncs() const;
  // The file size after the records appended so far.
  uint64_t end_offset() const;
  const std::string& path() const { return path_; }

 private:
  LogWriter(std::string path, int fd, uint64_t size, LogSync sync);
  absl::Status CheckPayload(absl::string_view payload) const;
  // Writes one record (header, payload) at the end; breaks the writer on an error.
  absl::Status WriteLocked(absl::string_view header, absl::string_view payload)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns once `end` is synced (leading a sync or waiting for one), or the error.
  absl::Status SyncThroughLocked(uint64_t end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status BrokenLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FlushLoop();

  // Constant after construction.
  const std::string path_;
  const int fd_;
  const LogSync sync_;

  mutable Mutex mu_;
  CondVar synced_cv_;  // signalled when a sync ends (synced_ or status_ changed) or on stop
  // State below is protected by mu_.
  uint64_t written_ ABSL_GUARDED_BY(mu_);  // file size: bytes written by write()
  uint64_t synced_ ABSL_GUARDED_BY(mu_);   // prefix known to be on disk
  bool sync_in_progress_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t syncs_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status status_ ABSL_GUARDED_BY(mu_);  // first write or sync error
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  std::thread flusher_;  // kInterval only
};

}  // namespace dion

#endif  // DION_SERVER_WAL_LOG_FILE_H_
