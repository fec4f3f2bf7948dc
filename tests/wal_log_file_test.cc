// Tests of server/wal/: the CRC-32C against published vectors, the log's round trip and
// reopen, torn tails cut at every byte, corrupt records refused with their offset (or dropped
// in truncate mode), write errors that break the writer, and group commit under 8 threads.
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/wal/crc32c.h"
#include "server/wal/log_file.h"
#include "server/wal/log_format.h"
#include "server/wal/log_reader.h"

namespace dion {
namespace {

namespace fs = std::filesystem;

::testing::AssertionResult Contains(absl::string_view text, absl::string_view part) {
  if (absl::StrContains(text, part)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Deterministic non-repeating bytes, so no payload accidentally contains a valid record.
std::string Payload(size_t size, uint32_t seed) {
  std::string s(size, '\0');
  uint32_t x = seed * 2654435761u + 12345u;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

// The crc32 instruction and the byte-wise table agree at every length and alignment (the
// fast path handles 8 bytes at a time and the tail byte by byte), also when extending.
TEST(WalCrc32c, FastPathEqualsTheByteWiseTable) {
  const std::string data = Payload(4096 + 7, 11);
  for (size_t start : {size_t{0}, size_t{1}, size_t{3}, size_t{7}}) {
    for (size_t length : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{63},
                          size_t{4096}}) {
      const absl::string_view part(data.data() + start, length);
      EXPECT_EQ(Crc32c(part), Crc32cExtendPortable(0, part)) << start << " " << length;
      EXPECT_EQ(Crc32cExtend(0x12345678u, part), Crc32cExtendPortable(0x12345678u, part));
    }
  }
}

TEST(WalCrc32c, MatchesPublishedVectors) {
  // RFC 3720 section B.4, and the common check value of "123456789".
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending(32, '\0'), descending(32, '\0');
  for (int i = 0; i < 32; ++i) {
    ascending[i] = static_cast<char>(i);
    descending[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(descending), 0x113FDB5Cu);
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32cExtend(Crc32c("1234"), "56789"), 0xE3069283u);
}

class WalLogFile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "wal_log_file_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    path_ = (fs::path(dir_) / "shard.wal").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<LogWriter> OpenWriter(LogSync sync = LogSync::None()) {
    absl::StatusOr<std::unique_ptr<LogWriter>> writer = LogWriter::Open(path_, sync);
    EXPECT_TRUE(writer.ok()) << writer.status();
    return writer.ok() ? std::move(*writer) : nullptr;
  }

  // Writes `payloads` to a fresh log and returns each record's offset.
  std::vector<uint64_t> WriteLog(const std::vector<std::string>& payloads) {
    fs::remove(path_);
    std::unique_ptr<LogWriter> writer = OpenWriter();
    std::vector<uint64_t> offsets;
    for (const std::string& p : payloads) {
      absl::StatusOr<uint64_t> offset = writer->Append(p);
      EXPECT_TRUE(offset.ok()) << offset.status();
      offsets.push_back(offset.value_or(0));
    }
    return offsets;
  }

  std::string dir_;
  std::string path_;
};

std::vector<std::string> FivePayloads() {
  return {Payload(10, 1), Payload(300, 2), Payload(64, 3), Payload(1000, 4), Payload(5, 5)};
}

TEST_F(WalLogFile, RoundTripsRecordsOfVariedSizes) {
  std::vector<std::string> payloads;
  for (size_t size : {0, 1, 7, 8, 9, 255, 4096, 65537, 1 << 20, 0, 3}) {
    payloads.push_back(Payload(size, static_cast<uint32_t>(payloads.size())));
  }
  for (uint32_t i = 0; i < 200; ++i) payloads.push_back(Payload((i * 7919) % 5000, 100 + i));
  std::vector<uint64_t> offsets = WriteLog(payloads);
  EXPECT_EQ(offsets.front(), kLogFileHeaderBytes);

  absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kStrict);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->payloads, payloads);
  EXPECT_EQ(log->offsets, offsets);
  EXPECT_EQ(log->end, LogEnd::kClean);
  EXPECT_EQ(log->valid_end, fs::file_size(path_));
}

TEST_F(WalLogFile, ReopenAppendsAfterExistingRecords) {
  std::vector<std::string> payloads = FivePayloads();
  WriteLog({payloads[0], payloads[1]});
  for (size_t i = 2; i < payloads.size(); ++i) {
    std::unique_ptr<LogWriter> writer = OpenWriter(LogSync::Always());
    ASSERT_NE(writer, nullptr);
    EXPECT_EQ(writer->end_offset(), fs::file_size(path_));
    ASSERT_TRUE(writer->Append(payloads[i]).ok());
    EXPECT_EQ(writer->syncs(), 1u);  // kAlways: the append returned after its own sync
  }
  absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kStrict);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->payloads, payloads);
}

TEST_F(WalLogFile, TornTailAtEveryByteOfTheLastRecordIsCut) {
  std::vector<std::string> payloads = {Payload(20, 1), Payload(33, 2), Payload(40, 3)};
  std::vector<uint64_t> offsets = WriteLog(payloads);
  const std::string whole = ReadFile(path_);
  const uint64_t last = offsets.back();
  for (uint64_t cut = last + 1; cut < whole.size(); ++cut) {
    SCOPED_TRACE(absl::StrCat("file cut to ", cut, " bytes"));
    WriteFile(path_, absl::string_view(whole).substr(0, cut));
    absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kStrict);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_EQ(log->payloads, std::vector<std::string>(payloads.begin(), payloads.end() - 1));
    EXPECT_EQ(log->end, LogEnd::kTornTail);
    ASSERT_EQ(log->valid_end, last);
    // Cut, then appending continues as if the torn record had never been written.
    ASSERT_TRUE(TruncateTo(path_, log->valid_end).ok());
    ASSERT_TRUE(OpenWriter()->Append("after").ok());
    log = ReadLog(path_, RecoverMode::kStrict);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_EQ(log->end, LogEnd::kClean);
    ASSERT_EQ(log->payloads.size(), 3u);
    EXPECT_EQ(log->payloads[2], "after");
  }
}

TEST_F(WalLogFile, BitFlipInTheLastRecordIsATornTail) {
  std::vector<uint64_t> offsets = WriteLog(FivePayloads());
  std::string bytes = ReadFile(path_);
  bytes[bytes.size() - 1] ^= 0x10;
  WriteFile(path_, bytes);
  absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kStrict);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->payloads.size(), 4u);
  EXPECT_EQ(log->end, LogEnd::kTornTail);
  EXPECT_EQ(log->valid_end, offsets.back());
}

TEST_F(WalLogFile, TornFileHeaderIsCutToAnEmptyLog) {
  const std::string header = LogFileHeader();
  for (size_t cut = 0; cut < header.size(); ++cut) {
    WriteFile(path_, header.substr(0, cut));
    absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kStrict);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_TRUE(log->payloads.empty());
    EXPECT_EQ(log->end, cut == 0 ? LogEnd::kClean : LogEnd::kTornTail);
    EXPECT_EQ(log->valid_end, 0u);
    ASSERT_TRUE(TruncateTo(path_, 0).ok());
    ASSERT_TRUE(OpenWriter()->Append("first").ok());
    log = ReadLog(path_, RecoverMode::kStrict);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_EQ(log->payloads, std::vector<std::string>{"first"});
  }
}

// Every single-bit flip anywhere in record 2 (header or payload): refused in strict mode with
// the file and the offset in the message; truncate mode keeps records 0 and 1.
TEST_F(WalLogFile, BitFlipInAMiddleRecordIsRefusedWithItsOffset) {
  const std::vector<std::string> payloads = FivePayloads();
  std::vector<uint64_t> offsets = WriteLog(payloads);
  const std::string whole = ReadFile(path_);
  for (uint64_t byte = offsets[2]; byte < offsets[3]; ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      SCOPED_TRACE(absl::StrCat("bit ", bit, " of byte ", byte));
      std::string bytes = whole;
      bytes[byte] ^= static_cast<char>(1 << bit);
      WriteFile(path_, bytes);
      absl::StatusOr<LogContents> strict = ReadLog(path_, RecoverMode::kStrict);
      ASSERT_EQ(strict.status().code(), absl::StatusCode::kDataLoss) << strict.status();
      EXPECT_TRUE(Contains(strict.status().message(), path_));
      EXPECT_TRUE(Contains(strict.status().message(), absl::StrCat("byte offset ", offsets[2])));
      absl::StatusOr<LogContents> cut = ReadLog(path_, RecoverMode::kTruncate);
      ASSERT_TRUE(cut.ok()) << cut.status();
      EXPECT_EQ(cut->payloads, std::vector<std::string>(payloads.begin(), payloads.begin() + 2));
      EXPECT_EQ(cut->end, LogEnd::kCorruptDropped);
      EXPECT_EQ(cut->valid_end, offsets[2]);
    }
  }
}

TEST_F(WalLogFile, WrongLengthFieldIsRefusedInTheMiddleAndCutAtTheEnd) {
  const std::vector<std::string> payloads = FivePayloads();
  std::vector<uint64_t> offsets = WriteLog(payloads);
  const std::string whole = ReadFile(path_);
  for (uint32_t length : {0u, 1u, 299u, 301u, 1u << 20, kMaxLogPayloadBytes + 1, 0xFFFFFFFFu}) {
    SCOPED_TRACE(absl::StrCat("length field ", length));
    std::string bytes = whole;
    PutLittleEndian32(length, bytes.data() + offsets[1]);  // record 1 holds 300 bytes
    WriteFile(path_, bytes);
    absl::StatusOr<LogContents> strict = ReadLog(path_, RecoverMode::kStrict);
    ASSERT_EQ(strict.status().code(), absl::StatusCode::kDataLoss) << strict.status();
    EXPECT_TRUE(Contains(strict.status().message(), absl::StrCat("byte offset ", offsets[1])));

    bytes = whole;
    PutLittleEndian32(length, bytes.data() + offsets[4]);  // the last record holds 5 bytes
    WriteFile(path_, bytes);
    absl::StatusOr<LogContents> tail = ReadLog(path_, RecoverMode::kStrict);
    ASSERT_TRUE(tail.ok()) << tail.status();
    EXPECT_EQ(tail->payloads.size(), 4u);
    EXPECT_EQ(tail->end, LogEnd::kTornTail);
    EXPECT_EQ(tail->valid_end, offsets[4]);
  }
}

TEST_F(WalLogFile, WrongMagicIsRefusedNamingTheFile) {
  WriteLog(FivePayloads());
  std::string bytes = ReadFile(path_);
  bytes[0] = 'X';
  WriteFile(path_, bytes);
  absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kTruncate);
  EXPECT_EQ(log.status().code(), absl::StatusCode::kDataLoss) << log.status();
  EXPECT_TRUE(Contains(log.status().message(), path_));
  absl::StatusOr<std::unique_ptr<LogWriter>> writer = LogWriter::Open(path_, LogSync::None());
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kFailedPrecondition) << writer.status();
  EXPECT_TRUE(Contains(writer.status().message(), path_));
}

TEST_F(WalLogFile, WriteErrorNamesTheFileAndBreaksTheWriter) {
  std::unique_ptr<LogWriter> writer = OpenWriter(LogSync::Always());
  ASSERT_TRUE(writer->Append("kept").ok());
  // A file size limit makes the next write fail part-way (EFBIG instead of SIGXFSZ).
  struct rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto previous_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limited = saved;
  limited.rlim_cur = writer->end_offset() + 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  absl::StatusOr<uint64_t> failed = writer->Append(Payload(100, 9));
  absl::StatusOr<uint64_t> refused = writer->Append("x");
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, previous_handler);

  ASSERT_FALSE(failed.ok());
  EXPECT_TRUE(Contains(failed.status().message(), path_));
  EXPECT_TRUE(Contains(failed.status().message(), "File too large"));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_TRUE(Contains(refused.status().message(), "File too large"));
  EXPECT_EQ(writer->Sync().code(), absl::StatusCode::kFailedPrecondition);
  writer.reset();
  absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kStrict);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->payloads, std::vector<std::string>{"kept"});
  EXPECT_EQ(log->end, LogEnd::kTornTail);  // the partial record
}

TEST_F(WalLogFile, OpenErrorNamesTheFileAndTheErrno) {
  absl::StatusOr<std::unique_ptr<LogWriter>> writer =
      LogWriter::Open(dir_ + "/missing/shard.wal", LogSync::Always());
  ASSERT_FALSE(writer.ok());
  EXPECT_TRUE(Contains(writer.status().message(), dir_ + "/missing/shard.wal"));
  EXPECT_TRUE(Contains(writer.status().message(), "No such file or directory"));
}

TEST_F(WalLogFile, IntervalModeSyncsInTheBackgroundAndNoneNever) {
  {
    std::unique_ptr<LogWriter> writer = OpenWriter(LogSync::None());
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(writer->Append("n").ok());
    absl::SleepFor(absl::Milliseconds(20));
    EXPECT_EQ(writer->syncs(), 0u);
  }
  std::unique_ptr<LogWriter> writer = OpenWriter(LogSync::Interval(absl::Milliseconds(10)));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(writer->Append("i").ok());
  // The flusher syncs without being asked, then stops once nothing is left unsynced: the
  // count settles (unchanged over 5 intervals) within the deadline.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  uint64_t settled = 0;
  while (absl::Now() < deadline) {
    const uint64_t before = writer->syncs();
    absl::SleepFor(absl::Milliseconds(50));
    if (before >= 1 && writer->syncs() == before) {
      settled = before;
      break;
    }
  }
  EXPECT_GE(settled, 1u) << "the flusher never synced, or kept syncing an idle log";
  writer.reset();
  absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kStrict);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->payloads.size(), 20u);
}

// Write orders records without syncing; WaitDurable then syncs them all at once in kAlways
// mode and not at all in the others.
TEST_F(WalLogFile, WriteDefersTheSyncToWaitDurable) {
  {
    std::unique_ptr<LogWriter> writer = OpenWriter(LogSync::Always());
    uint64_t end = 0;
    for (int i = 0; i < 5; ++i) {
      absl::StatusOr<uint64_t> e = writer->Write(Payload(10, i));
      ASSERT_TRUE(e.ok()) << e.status();
      EXPECT_GT(*e, end);
      end = *e;
    }
    EXPECT_EQ(end, writer->end_offset());
    EXPECT_EQ(writer->syncs(), 0u);
    ASSERT_TRUE(writer->WaitDurable(end).ok());
    EXPECT_EQ(writer->syncs(), 1u);
    ASSERT_TRUE(writer->WaitDurable(end).ok());  // already durable: no second sync
    EXPECT_EQ(writer->syncs(), 1u);
  }
  {
    std::unique_ptr<LogWriter> writer = OpenWriter(LogSync::None());
    absl::StatusOr<uint64_t> e = writer->Write("n");
    ASSERT_TRUE(e.ok());
    ASSERT_TRUE(writer->WaitDurable(*e).ok());
    EXPECT_EQ(writer->syncs(), 0u);
  }
  absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kStrict);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_EQ(log->payloads.size(), 6u);
  EXPECT_EQ(log->payloads[0], Payload(10, 0));
  EXPECT_EQ(log->payloads[5], "n");
}

// 8 threads x 200 appends with kAlways: every record is readable exactly once, each thread's
// records in its order, and group commit makes the fdatasyncs fewer than the appends. Whether
// appends overlap depends on scheduling, so a run without any shared sync is retried (twice);
// on a disk where fdatasync takes ~1 ms nearly every sync is shared.
TEST_F(WalLogFile, ConcurrentAlwaysAppendsShareSyncs) {
  constexpr int kThreads = 8;
  constexpr int kAppends = 200;
  uint64_t syncs = 0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    fs::remove(path_);
    std::unique_ptr<LogWriter> writer = OpenWriter(LogSync::Always());
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kAppends; ++i) {
          if (!writer->Append(absl::StrCat(t, ":", i)).ok()) failures.fetch_add(1);
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    ASSERT_EQ(failures.load(), 0);
    syncs = writer->syncs();
    writer.reset();

    absl::StatusOr<LogContents> log = ReadLog(path_, RecoverMode::kStrict);
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_EQ(log->payloads.size(), static_cast<size_t>(kThreads * kAppends));
    std::map<int, int> next;  // thread -> next expected index
    for (const std::string& p : log->payloads) {
      int t = -1, i = -1;
      ASSERT_EQ(std::sscanf(p.c_str(), "%d:%d", &t, &i), 2) << p;
      ASSERT_EQ(i, next[t]) << "thread " << t;
      ++next[t];
    }
    EXPECT_EQ(next.size(), static_cast<size_t>(kThreads));
    std::printf("attempt %d: %llu fdatasyncs for %d appends\n", attempt,
                static_cast<unsigned long long>(syncs), kThreads * kAppends);
    ASSERT_LE(syncs, static_cast<uint64_t>(kThreads * kAppends));
    if (syncs < static_cast<uint64_t>(kThreads * kAppends)) break;
  }
  EXPECT_LT(syncs, static_cast<uint64_t>(kThreads * kAppends));
}

}  // namespace
}  // namespace dion
