#include "server/wal/log_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/wal/log_format.h"

namespace dion {
namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::ErrnoToStatus(errno, absl::StrCat(what, " ", path));
}

// Maps the whole file read-only; *data is nullptr for an empty file.
absl::Status MapFile(const std::string& path, const char** data, uint64_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open", path);
  struct stat st;
  absl::Status status;
  *data = nullptr;
  *size = 0;
  if (::fstat(fd, &st) != 0) {
    status = Errno("stat", path);
  } else if (st.st_size > 0) {
    void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      status = Errno("mmap", path);
    } else {
      *data = static_cast<const char*>(p);
      *size = static_cast<uint64_t>(st.st_size);
    }
  }
  ::close(fd);
  return status;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LogReader>> LogReader::Open(const std::string& path,
                                                           RecoverMode mode) {
  const char* data = nullptr;
  uint64_t size = 0;
  if (absl::Status s = MapFile(path, &data, &size); !s.ok()) return s;
  std::unique_ptr<LogReader> reader(new LogReader(path, data, size, mode));
  const std::string expected = LogFileHeader();
  const absl::string_view head(data, std::min<uint64_t>(size, expected.size()));
  if (head != absl::string_view(expected).substr(0, head.size())) {
    return absl::DataLossError(absl::StrCat(
        "write-ahead log ", path, " does not start with the log header \"",
        absl::CHexEscape(expected), "\" (format version ", kLogFormatVersion, "): found \"",
        absl::CHexEscape(head), "\""));
  }
  if (size < expected.size()) {  // empty, or a crash while the header was written
    reader->done_ = true;
    reader->end_ = size == 0 ? LogEnd::kClean : LogEnd::kTornTail;
  } else {
    reader->pos_ = expected.size();
  }
  return reader;
}

LogReader::LogReader(std::string path, const char* data, uint64_t size, RecoverMode mode)
    : path_(std::move(path)), data_(data), size_(size), mode_(mode), pos_(0) {}

LogReader::~LogReader() {
  if (data_ != nullptr) ::munmap(const_cast<char*>(data_), static_cast<size_t>(size_));
}

std::string LogReader::CheckRecordAt(uint64_t offset, uint32_t* payload_size) const {
  const uint64_t left = size_ - offset;
  if (left < kLogRecordHeaderBytes) {
    return absl::StrCat("the file ends inside the record header (", left, " of ",
                        kLogRecordHeaderBytes, " bytes)");
  }
  const char* header = data_ + offset;
  const uint32_t length = GetLittleEndian32(header);
  if (length > kMaxLogPayloadBytes || length > left - kLogRecordHeaderBytes) {
    return absl::StrCat("length ", length, " exceeds the ", left - kLogRecordHeaderBytes,
                        " bytes left in the file (maximum ", kMaxLogPayloadBytes, ")");
  }
  const absl::string_view payload(header + kLogRecordHeaderBytes, length);
  if (LogRecordChecksum(header, payload) != GetLittleEndian32(header + 4)) {
    return absl::StrCat("checksum mismatch over ", length, " payload bytes");
  }
  *payload_size = length;
  return "";
}

// Whether any byte offset after `offset` starts a valid record: what tells a corrupt record
// in the middle (valid data follows) from a torn tail (nothing valid follows).
bool LogReader::ValidRecordAfter(uint64_t offset) const {
  uint32_t unused;
  for (uint64_t at = offset + 1; at + kLogRecordHeaderBytes <= size_; ++at) {
    if (CheckRecordAt(at, &unused).empty()) return true;
  }
  return false;
}

absl::StatusOr<bool> LogReader::Next(LogRecordView* record) {
  if (done_) return false;
  if (pos_ == size_) {
    done_ = true;
    return false;
  }
  uint32_t length = 0;
  const std::string problem = CheckRecordAt(pos_, &length);
  if (problem.empty()) {
    record->offset = pos_;
    record->payload = absl::string_view(data_ + pos_ + kLogRecordHeaderBytes, length);
    pos_ += kLogRecordHeaderBytes + length;
    return true;
  }
  done_ = true;
  if (!ValidRecordAfter(pos_)) {
    end_ = LogEnd::kTornTail;
  } else if (mode_ == RecoverMode::kTruncate) {
    end_ = LogEnd::kCorruptDropped;
  } else {
    return absl::DataLossError(absl::StrCat(
        "write-ahead log ", path_, ": corrupt record at byte offset ", pos_, " (", problem,
        ") with valid records after it; recovering in truncate mode drops it and everything "
        "after it"));
  }
  return false;
}

absl::StatusOr<LogContents> ReadLog(const std::string& path, RecoverMode mode) {
  absl::StatusOr<std::unique_ptr<LogReader>> reader = LogReader::Open(path, mode);
  if (!reader.ok()) return reader.status();
  LogContents contents;
  LogRecordView record;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(&record);
    if (!more.ok()) return more.status();
    if (!*more) break;
    contents.offsets.push_back(record.offset);
    contents.payloads.emplace_back(record.payload);
  }
  contents.end = (*reader)->end();
  contents.valid_end = (*reader)->valid_end();
  contents.file_size = (*reader)->file_size();
  return contents;
}

absl::Status TruncateTo(const std::string& path, uint64_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open", path);
  absl::Status status;
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    status = Errno(absl::StrCat("truncate to ", size, " bytes"), path);
  } else if (::fdatasync(fd) != 0) {
    status = Errno("fdatasync", path);
  }
  ::close(fd);
  return status;
}

}  // namespace dion
