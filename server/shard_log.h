// The shard's write-ahead log (docs/server.md, "Write-ahead log"): what the shard acknowledged
// since its last checkpoint, as records (proto/dion/v1/wal.proto) in log files of server/wal/.
//
// Files: <dir>/wal-<N>.log holds the records written after the cut of checkpoint N (N = 0: no
// checkpoint yet), so the newest checkpoint N plus the files wal-K, K >= N, in order, are the
// shard's whole state. A checkpoint starts a new file at its cut (OpenNext, then SwitchTo while
// no record is written), before the checkpoint itself is written; the shard keeps the files of
// its two newest checkpoints (Prune).
//
// Offsets (Write's results, WaitDurable, end_offset) count across files: a file starts where
// the one before it ended, so a record written to a file that was switched away from is still
// waited for in that file (its writer is kept until SyncRetired made it durable).
//
// Records: a registration (before RegisterModel is acknowledged), a worker id (before it
// counts as registered), every accepted contribution (before ACCEPTED is sent) and every closed
// batch with its members and exact weights (before its step is published), so that recovery
// replays exactly the batches that were applied, bit for bit; and the steps of split
// parameters with their reductions' sums (a leader's commit of its batch, a follower's step:
// docs/server.md, "Split parameters"). Contributions and batches are
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
#include "server/split_peers.h"
#include "server/wal/log_file.h"
#include "server/wal/log_reader.h"

namespace dion {

struct ShardLogOptions {
  std::string dir;                        // created if missing
  LogSync sync = LogSync::Always();
  RecoverMode recover = RecoverMode::kStrict;
};

// A step of a split parameter, as logged (proto/dion/v1/wal.proto WalSplitStep).
struct LoggedSplitStep {
  using Sum = StepSum;
  LoggedBatch batch;  // version: the one the step applied to
  double lr_scale = 1.0;
  std::vector<Sum> sums;  // in call order
};

// What a replay hands back, record by record, in log order. An error stops the replay; it is
// returned naming the file and the record's offset.
struct LogReplayHandler {
  std::function<absl::Status(const ModelTable&)> model;
  std::function<absl::Status(const std::string& worker_id)> worker;
  std::function<absl::Status(Contribution)> contribution;
  std::function<absl::Status(const LoggedBatch&)> batch;
  std::function<absl::Status(const LoggedSplitStep&)> split_step;
};

struct LogReplayStats {
  std::vector<std::string> files;  // replayed, in order
  int64_t records = 0;
  int64_t contributions = 0;
  int64_t batches = 0;
  int64_t split_steps = 0;
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
  // A step of a split parameter: a follower's, after it applied it and before it answers its
  // leader; the leader's commit, before it publishes the step. Returns the offset that must
  // be durable first.
  absl::StatusOr<uint64_t> SplitStep(const LoggedSplitStep& step) ABSL_LOCKS_EXCLUDED(mu_);

  // Returns once every record ending at or before `end` is durable (LogWriter::WaitDurable on
  // the file holding it; files switched away from are synced whole); WaitDurable(end_offset())
  // covers everything written so far.
  absl::Status WaitDurable(uint64_t end) ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t end_offset() const ABSL_LOCKS_EXCLUDED(mu_);
  // OK, or the error that broke the writer (every later record fails with it).
  absl::Status health() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t syncs() const ABSL_LOCKS_EXCLUDED(mu_);

  // A number above every log file in the directory and the open one: what the next
  // checkpoint's number must be at least, so that its file is new.
  absl::StatusOr<uint64_t> NextFileNumber() const ABSL_LOCKS_EXCLUDED(mu_);
  // Creates wal-<checkpoint>.log (a leftover of that name holds nothing and is replaced), ready
  // for SwitchTo. Disk work: call it before holding records off.
  absl::StatusOr<std::unique_ptr<LogWriter>> OpenNext(uint64_t checkpoint) const;
  // Later records go to `next`, OpenNext(checkpoint)'s writer; the current file is kept until SyncRetired. REQUIRES: no record
  // is written concurrently (the shard holds its gate).
  void SwitchTo(std::unique_ptr<LogWriter> next, uint64_t checkpoint) ABSL_LOCKS_EXCLUDED(mu_);
  // Makes the files switched away from durable and closes them. Their error, if any; they are
  // kept then, so that every WaitDurable on them reports it.
  absl::Status SyncRetired() ABSL_LOCKS_EXCLUDED(mu_);
  // OpenNext and SwitchTo at once; on an error nothing more is accepted (every record fails).
  absl::Status Rotate(uint64_t checkpoint) ABSL_LOCKS_EXCLUDED(mu_);
  // Deletes wal-K for K < `floor`.
  absl::Status Prune(uint64_t floor) ABSL_LOCKS_EXCLUDED(mu_);

  const ShardLogOptions& options() const { return options_; }

 private:
  // A file's writer and the offset its byte 0 has in the count across files.
  struct Segment {
    std::shared_ptr<LogWriter> writer;
    uint64_t base = 0;
  };
  // The open writer, or why there is none.
  absl::StatusOr<Segment> writer() const ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<uint64_t> Write(const std::string& record) ABSL_LOCKS_EXCLUDED(mu_);

  const ShardLogOptions options_;
  mutable Mutex mu_;
  std::shared_ptr<LogWriter> writer_ ABSL_GUARDED_BY(mu_);
  uint64_t base_ ABSL_GUARDED_BY(mu_) = 0;        // writer_'s byte 0 across files
  uint64_t file_number_ ABSL_GUARDED_BY(mu_) = 0;  // writer_ is wal-<file_number_>.log
  std::vector<Segment> retired_ ABSL_GUARDED_BY(mu_);  // switched away from, not yet synced
  uint64_t retired_syncs_ ABSL_GUARDED_BY(mu_) = 0;  // syncs of files rotated away
  absl::Status closed_ ABSL_GUARDED_BY(mu_) =         // why writer_ is null
      absl::FailedPreconditionError("the write-ahead log is not open yet");
};

}  // namespace dion

#endif  // DION_SERVER_SHARD_LOG_H_
