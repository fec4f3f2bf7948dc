// The shard's write-ahead log (docs/server.md, "Write-ahead log"): what the shard acknowledged
// since its last checkpoint, as records (proto/dion/v1/wal.proto) in log files of server/wal/.
//
// Files: <dir>/wal-<N>.log holds the records written after checkpoint N (N = 0: no checkpoint
// yet), so the newest checkpoint N plus the files wal-K, K >= N, in order, are the shard's whole
// state. A checkpoint starts a new file (Rotate); the shard keeps the files of its two newest
// checkpoints (Prune).
//
// Records: a registration (before RegisterModel is acknowledged), a worker id (before it
// counts as registered), every accepted contribution (before ACCEPTED is sent) and every closed
// batch with its members and exact weights (before its step is published), so that recovery
// replays exactly the batches that were applied, bit for bit. Contributions and batches are
// written under their batcher's lock (BatchJournal) and waited for outside it (WaitDurable):
// with LogSync::kAlways concurrent pushes share one fdatasync.
//
// Thread-safety: thread-safe. Replay and Open happen before any other call.
#ifndef DION_SERVER_SHARD_LOG_H_
#define DION_SERVER_SHARD_LOG_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/contribution.h"
#include "common/model_table.h"
#include "common/mutex.h"
#include "server/batcher.h"
#include "server/wal/log_file.h"
#include "server/wal/log_reader.h"

namespace dion {

struct ShardLogOptions {
  std::string dir;                        // created if missing
  LogSync sync = LogSync::Always();
  RecoverMode recover = RecoverMode::kStrict;
};

// What a replay hands back, record by record, in log order. An error stops the replay; it is
// returned naming the file and the record's offset.
struct LogReplayHandler {
  std::function<absl::Status(const ModelTable&)> model;
  std::function<absl::Status(const std::string& worker_id)> worker;
  std::function<absl::Status(Contribution)> contribution;
  std::function<absl::Status(const LoggedBatch&)> batch;
};

struct LogReplayStats {
  std::vector<std::string> files;  // replayed, in order
  int64_t records = 0;
  int64_t contributions = 0;
  int64_t batches = 0;
  uint64_t bytes_cut = 0;          // torn tail or (kTruncate) corrupt rest removed
};

// "always", "interval:<duration>" (> 0, absl duration syntax) or "none"; InvalidArgument
// saying what is accepted otherwise.
absl::StatusOr<LogSync> ParseLogSync(absl::string_view text);

// "wal-<checkpoint, 12 digits>.log".
std::string LogFileName(uint64_t checkpoint);

class ShardLog : public BatchJournal {
 public:
  explicit ShardLog(ShardLogOptions options);
  ~ShardLog() override;

  // Replays wal-K for every K >= `checkpoint` in order (see the file comment), cuts a torn
  // tail (and with RecoverMode::kTruncate a corrupt rest), and opens the last file, or a new
  // wal-<checkpoint>.log, for appending. DataLoss naming the file and offset for a corrupt
  // record (kStrict), for a file that does not end cleanly while a newer one follows, or when
  // newer files exist without wal-<checkpoint>.log.
  absl::StatusOr<LogReplayStats> ReplayAndOpen(uint64_t checkpoint,
                                               const LogReplayHandler& handler)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Durable records (written and waited for). The registration's initial values included.
  absl::Status LogModel(const ModelTable& table) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status LogWorker(absl::string_view worker_id) ABSL_LOCKS_EXCLUDED(mu_);

  // BatchJournal: written, not yet waited for.
  absl::StatusOr<uint64_t> Accepted(const Contribution& contribution) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<uint64_t> Closed(const Batch& batch) override ABSL_LOCKS_EXCLUDED(mu_);

  // LogWriter::WaitDurable on the current file; WaitDurable(end_offset()) covers everything
  // written so far.
  absl::Status WaitDurable(uint64_t end) ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t end_offset() const ABSL_LOCKS_EXCLUDED(mu_);
  // OK, or the error that broke the writer (every later record fails with it).
  absl::Status health() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t syncs() const ABSL_LOCKS_EXCLUDED(mu_);

  // After checkpoint `checkpoint` was written with nothing pending: later records go to a new
  // wal-<checkpoint>.log. REQUIRES: no record is written concurrently.
  absl::Status Rotate(uint64_t checkpoint) ABSL_LOCKS_EXCLUDED(mu_);
  // Deletes wal-K for K < `floor`.
  absl::Status Prune(uint64_t floor) ABSL_LOCKS_EXCLUDED(mu_);

  const ShardLogOptions& options() const { return options_; }

 private:
  // The open writer, or why there is none.
  absl::StatusOr<std::shared_ptr<LogWriter>> writer() const ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<uint64_t> Write(const std::string& record) ABSL_LOCKS_EXCLUDED(mu_);

  const ShardLogOptions options_;
  mutable Mutex mu_;
  std::shared_ptr<LogWriter> writer_ ABSL_GUARDED_BY(mu_);
  uint64_t retired_syncs_ ABSL_GUARDED_BY(mu_) = 0;  // syncs of files rotated away
  absl::Status closed_ ABSL_GUARDED_BY(mu_) =         // why writer_ is null
      absl::FailedPreconditionError("the write-ahead log is not open yet");
};

}  // namespace dion

#endif  // DION_SERVER_SHARD_LOG_H_
