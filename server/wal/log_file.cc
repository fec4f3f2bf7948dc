#include "server/wal/log_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/wal/log_format.h"

namespace dion {
namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::ErrnoToStatus(errno, absl::StrCat(what, " ", path));
}

// Writes `header` then `payload` at `offset` with pwritev (no copy of the payload into one
// buffer), resuming after short writes; on error returns the errno status (some bytes may be
// written).
absl::Status PwritevAll(int fd, absl::string_view header, absl::string_view payload,
                        uint64_t offset, const std::string& path) {
  iovec parts[2] = {{const_cast<char*>(header.data()), header.size()},
                    {const_cast<char*>(payload.data()), payload.size()}};
  int first = 0;
  while (first < 2) {
    const ssize_t n = ::pwritev(fd, parts + first, 2 - first, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("write", path);
    offset += static_cast<uint64_t>(n);
    size_t done = static_cast<size_t>(n);
    while (first < 2 && done >= parts[first].iov_len) done -= parts[first++].iov_len;
    if (first < 2) {
      parts[first].iov_base = static_cast<char*>(parts[first].iov_base) + done;
      parts[first].iov_len -= done;
    }
  }
  return absl::OkStatus();
}

// fsync of the directory holding `path`, so that a newly created file's entry is durable.
absl::Status SyncParentDirectory(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("open directory", dir);
  absl::Status status;
  if (::fsync(fd) != 0) status = Errno("fsync directory", dir);
  ::close(fd);
  return status;
}

// Writes the file header of a new (empty) log and makes it and its directory entry durable.
absl::Status InitializeEmptyLog(int fd, const std::string& path) {
  if (absl::Status s = PwritevAll(fd, LogFileHeader(), "", 0, path); !s.ok()) return s;
  if (::fdatasync(fd) != 0) return Errno("fdatasync", path);
  return SyncParentDirectory(path);
}

absl::Status CheckExistingHeader(int fd, uint64_t size, const std::string& path) {
  std::string header(kLogFileHeaderBytes, '\0');
  ssize_t n = size < kLogFileHeaderBytes ? 0 : ::pread(fd, header.data(), header.size(), 0);
  if (n < 0) return Errno("read", path);
  if (static_cast<size_t>(n) != header.size() || header != LogFileHeader()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "write-ahead log ", path, " does not start with the version ", kLogFormatVersion,
        " log header (", size, " bytes); read it with ReadLog and cut it with TruncateTo first"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LogWriter>> LogWriter::Open(const std::string& path,
                                                           LogSync sync) {
  if (sync.mode == LogSync::Mode::kInterval && sync.interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "log sync interval must be > 0, got ", absl::FormatDuration(sync.interval)));
  }
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("open", path);
  struct stat st;
  absl::Status status;
  if (::fstat(fd, &st) != 0) {
    status = Errno("stat", path);
  } else if (st.st_size == 0) {
    status = InitializeEmptyLog(fd, path);
    st.st_size = kLogFileHeaderBytes;
  } else {
    status = CheckExistingHeader(fd, static_cast<uint64_t>(st.st_size), path);
  }
  if (!status.ok()) {
    ::close(fd);
    return status;
  }
  return std::unique_ptr<LogWriter>(
      new LogWriter(path, fd, static_cast<uint64_t>(st.st_size), sync));
}

LogWriter::LogWriter(std::string path, int fd, uint64_t size, LogSync sync)
    : path_(std::move(path)), fd_(fd), sync_(sync), written_(size), synced_(size) {
  if (sync_.mode == LogSync::Mode::kInterval) flusher_ = std::thread([this] { FlushLoop(); });
}

LogWriter::~LogWriter() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  synced_cv_.SignalAll();
  if (flusher_.joinable()) flusher_.join();
  if (sync_.mode != LogSync::Mode::kNone) Sync().IgnoreError();  // best effort at close
  ::close(fd_);
}

namespace {

// A record's header: length, then the checksum over it and the payload
// (server/wal/log_format.h).
std::string RecordHeader(absl::string_view payload) {
  std::string header(kLogRecordHeaderBytes, '\0');
  PutLittleEndian32(static_cast<uint32_t>(payload.size()), header.data());
  PutLittleEndian32(LogRecordChecksum(header.data(), payload), header.data() + 4);
  return header;
}

}  // namespace

absl::Status LogWriter::CheckPayload(absl::string_view payload) const {
  if (payload.size() <= kMaxLogPayloadBytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("log record of ", payload.size(),
                                                 " bytes exceeds the maximum of ",
                                                 kMaxLogPayloadBytes, " (", path_, ")"));
}

absl::StatusOr<uint64_t> LogWriter::Append(absl::string_view payload) {
  if (absl::Status s = CheckPayload(payload); !s.ok()) return s;
  const std::string header = RecordHeader(payload);
  MutexLock lock(&mu_);
  const uint64_t offset = written_;
  if (absl::Status s = WriteLocked(header, payload); !s.ok()) return s;
  if (sync_.mode == LogSync::Mode::kAlways) {
    if (absl::Status s = SyncThroughLocked(written_); !s.ok()) return s;
  }
  return offset;
}

absl::StatusOr<uint64_t> LogWriter::Write(absl::string_view payload) {
  if (absl::Status s = CheckPayload(payload); !s.ok()) return s;
  const std::string header = RecordHeader(payload);
  MutexLock lock(&mu_);
  if (absl::Status s = WriteLocked(header, payload); !s.ok()) return s;
  return written_;
}

absl::Status LogWriter::WaitDurable(uint64_t end) {
  MutexLock lock(&mu_);
  if (!status_.ok()) return BrokenLocked();
  if (sync_.mode != LogSync::Mode::kAlways) return absl::OkStatus();
  return SyncThroughLocked(std::min(end, written_));
}

absl::Status LogWriter::Sync() {
  MutexLock lock(&mu_);
  if (!status_.ok()) return BrokenLocked();
  return SyncThroughLocked(written_);
}

uint64_t LogWriter::syncs() const {
  MutexLock lock(&mu_);
  return syncs_;
}

uint64_t LogWriter::end_offset() const {
  MutexLock lock(&mu_);
  return written_;
}

absl::Status LogWriter::BrokenLocked() const {
  return absl::FailedPreconditionError(absl::StrCat("write-ahead log ", path_,
                                                    " refuses appends after an earlier error: ",
                                                    status_.message()));
}

absl::Status LogWriter::WriteLocked(absl::string_view header, absl::string_view payload) {
  if (!status_.ok()) return BrokenLocked();
  absl::Status s = PwritevAll(fd_, header, payload, written_, path_);
  if (!s.ok()) {
    status_ = s;
    return s;
  }
  written_ += header.size() + payload.size();
  return absl::OkStatus();
}

// Group commit: the first caller to find no sync running leads one covering every byte
// written so far (mu_ released during the fdatasync, so others keep writing); the others wait
// for a sync whose end passes theirs, or lead the next one.
absl::Status LogWriter::SyncThroughLocked(uint64_t end) {
  while (synced_ < end) {
    if (!status_.ok()) return BrokenLocked();
    if (sync_in_progress_) {
      synced_cv_.Wait(&mu_);
      continue;
    }
    sync_in_progress_ = true;
    const uint64_t target = written_;
    mu_.Unlock();
    const int rc = ::fdatasync(fd_);
    const int sync_errno = errno;
    mu_.Lock();
    sync_in_progress_ = false;
    ++syncs_;
    if (rc == 0) {
      synced_ = std::max(synced_, target);
    } else {
      status_ = absl::ErrnoToStatus(sync_errno, absl::StrCat("fdatasync ", path_));
    }
    synced_cv_.SignalAll();
    if (rc != 0) return status_;
  }
  return absl::OkStatus();
}

void LogWriter::FlushLoop() {
  MutexLock lock(&mu_);
  absl::Time next = absl::Now() + sync_.interval;
  while (!stop_) {
    const absl::Time now = absl::Now();
    if (now < next) {
      synced_cv_.WaitWithTimeout(&mu_, next - now);  // also woken by syncs and by stop
      continue;
    }
    next = now + sync_.interval;
    if (!status_.ok()) continue;
    // An error is kept in status_ and returned by the next Append or Sync.
    if (synced_ < written_) SyncThroughLocked(written_).IgnoreError();
  }
}

}  // namespace dion
