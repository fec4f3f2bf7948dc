// The on-disk format of a write-ahead log file, shared by LogWriter (log_file.h) and
// LogReader (log_reader.h). All integers are little-endian.
//
//   file   := file_header record*
//   file_header (8 bytes) := "DWAL" | version u32 (= 1)
//   record := length u32 | crc u32 | payload (length bytes)
//   crc    := CRC-32C (server/wal/crc32c.h) of the 4 length bytes followed by the payload
//
// length <= kMaxLogPayloadBytes. A record's offset is the byte offset of its length field.
// An all-zero header never checks (the CRC-32C of four zero bytes is not zero), so zeros
// left by a crash read as a torn tail, not as an empty record.
//
// Thread-safety: constants and pure functions.
#ifndef DION_SERVER_WAL_LOG_FORMAT_H_
#define DION_SERVER_WAL_LOG_FORMAT_H_

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/string_view.h"
#include "server/wal/crc32c.h"

namespace dion {

inline constexpr uint32_t kLogFormatVersion = 1;
inline constexpr size_t kLogFileHeaderBytes = 8;
inline constexpr size_t kLogRecordHeaderBytes = 8;
inline constexpr uint32_t kMaxLogPayloadBytes = 1u << 30;  // 1 GiB

// The 8 bytes every log file starts with.
inline std::string LogFileHeader() {
  return std::string("DWAL\x01\x00\x00\x00", kLogFileHeaderBytes);
}

inline void PutLittleEndian32(uint32_t value, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xFF);
}

inline uint32_t GetLittleEndian32(const char* in) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= uint32_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return value;
}

// The crc field of a record whose length field bytes are `length_bytes` (4 bytes).
inline uint32_t LogRecordChecksum(const char* length_bytes, absl::string_view payload) {
  return Crc32cExtend(Crc32c(absl::string_view(length_bytes, 4)), payload);
}

}  // namespace dion

#endif  // DION_SERVER_WAL_LOG_FORMAT_H_
