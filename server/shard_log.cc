#include "server/shard_log.h"

#include <algorithm>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <map>
#include <system_error>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "dion/v1/wal.pb.h"
#include "common/wire.h"

namespace dion {
namespace {

namespace fs = std::filesystem;

// The log files under `dir` by checkpoint number.
absl::StatusOr<std::map<uint64_t, std::string>> ListLogFiles(const std::string& dir) {
  std::map<uint64_t, std::string> files;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string filename = entry.path().filename().string();
    absl::string_view name = filename;
    uint64_t checkpoint = 0;
    if (absl::ConsumePrefix(&name, "wal-") && absl::ConsumeSuffix(&name, ".log") &&
        absl::SimpleAtoi(name, &checkpoint)) {
      files[checkpoint] = entry.path().string();
    }
  }
  if (error) {
    return absl::UnavailableError(absl::StrCat("cannot list the write-ahead log directory ",
                                               dir, ": ", error.message()));
  }
  return files;
}

absl::StatusOr<CloseReason> CloseReasonFromName(absl::string_view name) {
  for (CloseReason reason : {CloseReason::kSamples, CloseReason::kWorkers, CloseReason::kDeadline,
                             CloseReason::kFull, CloseReason::kFlush}) {
    if (CloseReasonName(reason) == name) return reason;
  }
  return absl::DataLossError(absl::StrCat("unknown batch close reason '", name, "'"));
}

LoggedBatch BatchFromProto(const v1::WalBatch& proto, absl::StatusOr<CloseReason> reason) {
  LoggedBatch batch;
  batch.parameter = proto.parameter();
  batch.version = proto.version();
  batch.reason = *reason;
  batch.noise_seed = proto.noise_seed();
  batch.noise_stddev = proto.noise_stddev();
  batch.members.reserve(proto.members_size());
  for (const v1::WalBatch::Member& m : proto.members()) {
    batch.members.push_back({m.worker_id(), m.sequence(), m.staleness(), m.weight()});
  }
  return batch;
}

void BatchToProto(const LoggedBatch& batch, v1::WalBatch* proto) {
  proto->set_parameter(batch.parameter);
  proto->set_version(batch.version);
  proto->set_reason(std::string(CloseReasonName(batch.reason)));
  proto->set_noise_seed(batch.noise_seed);
  proto->set_noise_stddev(batch.noise_stddev);
  for (const LoggedBatch::Member& member : batch.members) {
    v1::WalBatch::Member* m = proto->add_members();
    m->set_worker_id(member.worker_id);
    m->set_sequence(member.sequence);
    m->set_staleness(member.staleness);
    m->set_weight(member.weight);
  }
}

absl::StatusOr<LoggedSplitStep> SplitStepFromProto(const v1::WalSplitStep& proto) {
  absl::StatusOr<CloseReason> reason = CloseReasonFromName(proto.batch().reason());
  if (!reason.ok()) return reason.status();
  LoggedSplitStep step;
  step.batch = BatchFromProto(proto.batch(), reason);
  step.lr_scale = proto.lr_scale();
  for (const v1::WalSplitStep::Sum& sum : proto.sums()) {
    const v1::Tensor& t = sum.value();
    if (t.shape_size() != 2 || t.shape(0) < 1 || t.shape(1) < 1 ||
        t.data().size() != 4 * static_cast<size_t>(t.shape(0) * t.shape(1))) {
      return absl::DataLossError(absl::StrCat(
          "the split step of '", proto.batch().parameter(), "' from version ",
          proto.batch().version(), ": sum '", sum.tag(), "' has ", t.shape_size(),
          " dimensions and ", t.data().size(),
          " bytes, expected rows x cols >= 1 and 4 bytes per float"));
    }
    Matrix value(t.shape(0), t.shape(1));
    std::memcpy(value.data(), t.data().data(), t.data().size());
    step.sums.push_back({sum.tag(), std::move(value)});
  }
  return step;
}

// Hands one decoded record to the handler.
absl::Status Dispatch(absl::string_view payload, const LogReplayHandler& handler,
                      LogReplayStats& stats) {
  v1::WalRecord record;
  if (!record.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return absl::DataLossError("the record passed its checksum but does not parse");
  }
  switch (record.record_case()) {
    case v1::WalRecord::kModel: {
      absl::StatusOr<ModelTable> table = ModelTableFromProto(record.model());
      if (!table.ok()) return table.status();
      return handler.model(*table);
    }
    case v1::WalRecord::kWorker:
      return handler.worker(record.worker());
    case v1::WalRecord::kContribution: {
      // Values are checked by the shard's validation of the replayed contribution.
      absl::StatusOr<Contribution> c = ContributionFromProto(
          record.contribution(), nullptr, PayloadValues::kLeaveToValidation);
      if (!c.ok()) return c.status();
      ++stats.contributions;
      return handler.contribution(*std::move(c));
    }
    case v1::WalRecord::kBatch: {
      absl::StatusOr<CloseReason> reason = CloseReasonFromName(record.batch().reason());
      if (!reason.ok()) return reason.status();
      ++stats.batches;
      return handler.batch(BatchFromProto(record.batch(), reason));
    }
    case v1::WalRecord::kSplitStep: {
      absl::StatusOr<LoggedSplitStep> step = SplitStepFromProto(record.split_step());
      if (!step.ok()) return step.status();
      if (!handler.split_step) return absl::DataLossError("a split step this shard cannot replay");
      ++stats.split_steps;
      return handler.split_step(*step);
    }
    case v1::WalRecord::RECORD_NOT_SET:
      break;
  }
  return absl::DataLossError("the record holds nothing this shard knows");
}

// Replays one file; returns the size it must be cut to.
absl::StatusOr<uint64_t> ReplayFile(const std::string& path, RecoverMode mode, bool last,
                                    const LogReplayHandler& handler, LogReplayStats& stats) {
  absl::StatusOr<std::unique_ptr<LogReader>> reader = LogReader::Open(path, mode);
  if (!reader.ok()) return reader.status();
  LogRecordView view;
  while (true) {
    absl::StatusOr<bool> next = (*reader)->Next(&view);
    if (!next.ok()) return next.status();
    if (!*next) break;
    ++stats.records;
    if (absl::Status s = Dispatch(view.payload, handler, stats); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("write-ahead log ", path, ", record at offset ",
                                                 view.offset, ": ", s.message()));
    }
  }
  if ((*reader)->end() != LogEnd::kClean && !last && mode == RecoverMode::kStrict) {
    return absl::DataLossError(absl::StrCat(
        "write-ahead log ", path, " ends at offset ", (*reader)->valid_end(), " of ",
        (*reader)->file_size(), " bytes with a broken record, but a newer log follows it; "
        "restart with --wal_recover=truncate to drop the broken rest of this file"));
  }
  stats.bytes_cut += (*reader)->file_size() - (*reader)->valid_end();
  return (*reader)->valid_end();
}

std::string Serialized(const v1::WalRecord& record) {
  std::string bytes;
  record.SerializeToString(&bytes);
  return bytes;
}

}  // namespace

absl::StatusOr<LogSync> ParseLogSync(absl::string_view text) {
  if (text == "always") return LogSync::Always();
  if (text == "none") return LogSync::None();
  absl::string_view rest = text;
  absl::Duration every;
  if (absl::ConsumePrefix(&rest, "interval:") && absl::ParseDuration(rest, &every) &&
      every > absl::ZeroDuration() && every != absl::InfiniteDuration()) {
    return LogSync::Interval(every);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--wal_sync must be 'always', 'interval:<duration>' with a positive duration such as "
      "interval:100ms, or 'none'; got '", text, "'"));
}

std::string LogFileName(uint64_t checkpoint) {
  return absl::StrFormat("wal-%012d.log", checkpoint);
}

ShardLog::ShardLog(ShardLogOptions options) : options_(std::move(options)) {}

ShardLog::~ShardLog() = default;

absl::StatusOr<LogReplayStats> ShardLog::ReplayAndOpen(uint64_t checkpoint,
                                                       const LogReplayHandler& handler) {
  std::error_code error;
  fs::create_directories(options_.dir, error);
  if (error) {
    return absl::UnavailableError(absl::StrCat("cannot create the write-ahead log directory ",
                                               options_.dir, ": ", error.message()));
  }
  absl::StatusOr<std::map<uint64_t, std::string>> files = ListLogFiles(options_.dir);
  if (!files.ok()) return files.status();
  auto first = files->lower_bound(checkpoint);
  if (first != files->end() && first->first != checkpoint) {
    return absl::DataLossError(absl::StrCat(
        "write-ahead log ", first->second, " follows checkpoint ", first->first,
        ", but the shard restored checkpoint ", checkpoint, " and its log ",
        LogFileName(checkpoint), " is missing: the records in between are lost; move the "
        "newer logs away to start from checkpoint ", checkpoint, " alone"));
  }
  LogReplayStats stats;
  std::string last_path = absl::StrCat(options_.dir, "/", LogFileName(checkpoint));
  uint64_t last_number = checkpoint;
  for (auto it = first; it != files->end(); ++it) {
    const bool last = std::next(it) == files->end();
    absl::StatusOr<uint64_t> valid_end =
        ReplayFile(it->second, options_.recover, last, handler, stats);
    if (!valid_end.ok()) return valid_end.status();
    stats.files.push_back(it->second);
    if (absl::Status s = TruncateTo(it->second, *valid_end); !s.ok()) return s;
    last_path = it->second;
    last_number = it->first;
  }
  absl::StatusOr<std::unique_ptr<LogWriter>> writer = LogWriter::Open(last_path, options_.sync);
  if (!writer.ok()) return writer.status();
  MutexLock lock(&mu_);
  writer_ = *std::move(writer);
  file_number_ = last_number;
  return stats;
}

absl::Status ShardLog::LogModel(const ModelTable& table) {
  v1::WalRecord record;
  ModelTableToProto(table, record.mutable_model());
  absl::StatusOr<uint64_t> end = Write(Serialized(record));
  if (!end.ok()) return end.status();
  return WaitDurable(*end);
}

absl::Status ShardLog::LogWorker(absl::string_view worker_id) {
  v1::WalRecord record;
  record.set_worker(std::string(worker_id));
  absl::StatusOr<uint64_t> end = Write(Serialized(record));
  if (!end.ok()) return end.status();
  return WaitDurable(*end);
}

absl::StatusOr<uint64_t> ShardLog::Accepted(const Contribution& contribution) {
  v1::WalRecord record;
  ContributionToProto(contribution, record.mutable_contribution());
  return Write(Serialized(record));
}

absl::StatusOr<uint64_t> ShardLog::Closed(const Batch& batch) {
  v1::WalRecord record;
  v1::WalBatch* proto = record.mutable_batch();
  proto->set_parameter(batch.parameter);
  proto->set_version(batch.version);
  proto->set_reason(std::string(CloseReasonName(batch.reason)));
  proto->set_noise_seed(batch.noise_seed);
  proto->set_noise_stddev(batch.noise_stddev);
  for (const WeightedContribution& entry : batch.entries) {
    v1::WalBatch::Member* m = proto->add_members();
    m->set_worker_id(entry.contribution->worker_id);
    m->set_sequence(entry.contribution->sequence);
    m->set_staleness(entry.staleness);
    m->set_weight(entry.weight);
  }
  return Write(Serialized(record));
}

absl::StatusOr<uint64_t> ShardLog::SplitStep(const LoggedSplitStep& step) {
  v1::WalRecord record;
  v1::WalSplitStep* proto = record.mutable_split_step();
  BatchToProto(step.batch, proto->mutable_batch());
  proto->set_lr_scale(step.lr_scale);
  for (const LoggedSplitStep::Sum& sum : step.sums) {
    v1::WalSplitStep::Sum* s = proto->add_sums();
    s->set_tag(sum.tag);
    s->mutable_value()->add_shape(sum.value.rows());
    s->mutable_value()->add_shape(sum.value.cols());
    s->mutable_value()->set_data(reinterpret_cast<const char*>(sum.value.data()),
                                 sizeof(float) * sum.value.size());
  }
  return Write(Serialized(record));
}

absl::Status ShardLog::WaitDurable(uint64_t end) {
  std::vector<std::shared_ptr<LogWriter>> older;  // retired files holding bytes before `end`
  std::shared_ptr<LogWriter> current;
  uint64_t base = 0;
  {
    MutexLock lock(&mu_);
    for (const Segment& segment : retired_) {
      if (segment.base < end) older.push_back(segment.writer);
    }
    if (writer_ == nullptr && older.empty()) return closed_;
    current = writer_;
    base = base_;
  }
  for (const std::shared_ptr<LogWriter>& w : older) {
    if (absl::Status s = w->Sync(); !s.ok()) return s;
  }
  if (current == nullptr || end <= base) return absl::OkStatus();
  return current->WaitDurable(end - base);
}

uint64_t ShardLog::end_offset() const {
  absl::StatusOr<Segment> w = writer();
  return w.ok() ? w->base + w->writer->end_offset() : 0;
}

absl::Status ShardLog::health() const {
  absl::StatusOr<Segment> w = writer();
  if (!w.ok()) return w.status();
  return w->writer->WaitDurable(0);  // never syncs: 0 is always durable; reports a broken writer
}

uint64_t ShardLog::syncs() const {
  MutexLock lock(&mu_);
  uint64_t syncs = retired_syncs_ + (writer_ == nullptr ? 0 : writer_->syncs());
  for (const Segment& segment : retired_) syncs += segment.writer->syncs();
  return syncs;
}

absl::StatusOr<uint64_t> ShardLog::NextFileNumber() const {
  absl::StatusOr<std::map<uint64_t, std::string>> files = ListLogFiles(options_.dir);
  uint64_t next = 0;
  if (files.ok() && !files->empty()) next = files->rbegin()->first + 1;
  MutexLock lock(&mu_);
  if (writer_ != nullptr) next = std::max(next, file_number_ + 1);
  return next;
}

absl::StatusOr<std::unique_ptr<LogWriter>> ShardLog::OpenNext(uint64_t checkpoint) const {
  std::error_code error;
  fs::create_directories(options_.dir, error);
  const std::string path = absl::StrCat(options_.dir, "/", LogFileName(checkpoint));
  fs::remove(path, error);  // a leftover of an earlier run with the same number holds nothing
  return LogWriter::Open(path, options_.sync);
}

void ShardLog::SwitchTo(std::unique_ptr<LogWriter> next, uint64_t checkpoint) {
  MutexLock lock(&mu_);
  if (writer_ != nullptr) {
    const uint64_t end = base_ + writer_->end_offset();
    retired_.push_back({std::move(writer_), base_});
    base_ = end;
  }
  writer_ = std::move(next);
  file_number_ = checkpoint;
}

absl::Status ShardLog::SyncRetired() {
  std::vector<Segment> retired;
  {
    MutexLock lock(&mu_);
    retired = retired_;
  }
  for (const Segment& segment : retired) {
    if (absl::Status s = segment.writer->Sync(); !s.ok()) return s;
  }
  MutexLock lock(&mu_);
  for (const Segment& segment : retired) {
    retired_syncs_ += segment.writer->syncs();
    retired_.erase(std::find_if(retired_.begin(), retired_.end(), [&](const Segment& s) {
      return s.writer == segment.writer;
    }));
  }
  return absl::OkStatus();  // each file closes as the last reference to its writer goes
}

absl::Status ShardLog::Rotate(uint64_t checkpoint) {
  absl::StatusOr<std::unique_ptr<LogWriter>> writer = OpenNext(checkpoint);
  if (!writer.ok()) {
    MutexLock lock(&mu_);
    // Records appended to the old file would be ignored after the new checkpoint: accept none.
    if (writer_ != nullptr) retired_.push_back({std::move(writer_), base_});
    closed_ = absl::UnavailableError(absl::StrCat(
        "the write-ahead log could not start a new file after a checkpoint, so nothing more is "
        "accepted; restart the shard: ", writer.status().message()));
    return closed_;
  }
  SwitchTo(*std::move(writer), checkpoint);
  return SyncRetired();
}

absl::Status ShardLog::Prune(uint64_t floor) {
  absl::StatusOr<std::map<uint64_t, std::string>> files = ListLogFiles(options_.dir);
  if (!files.ok()) return files.status();
  for (const auto& [checkpoint, path] : *files) {
    if (checkpoint >= floor) break;
    std::error_code error;
    if (!fs::remove(path, error) && error) {
      return absl::UnavailableError(
          absl::StrCat("cannot remove the old write-ahead log ", path, ": ", error.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ShardLog::Segment> ShardLog::writer() const {
  MutexLock lock(&mu_);
  if (writer_ == nullptr) return closed_;
  return Segment{writer_, base_};
}

absl::StatusOr<uint64_t> ShardLog::Write(const std::string& record) {
  absl::StatusOr<Segment> w = writer();
  if (!w.ok()) return w.status();
  absl::StatusOr<uint64_t> end = w->writer->Write(record);
  if (!end.ok()) {
    return absl::UnavailableError(absl::StrCat("the write-ahead log cannot be written, so "
                                               "nothing more is accepted; restart the shard "
                                               "once the disk is fixed: ", end.status().message()));
  }
  return w->base + *end;
}

}  // namespace dion
