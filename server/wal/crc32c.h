// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final XOR
// 0xFFFFFFFF), the checksum of write-ahead log records. With SSE4.2 (checked at run time) the
// crc32 instruction computes it 8 bytes at a time (~20x the byte-wise table, which the log's
// 512 KiB records needed: a fifth of a replay's time); elsewhere the byte-wise table. Both give
// the same value, being the same function. Published vectors: RFC 3720 section B.4.
//
// Thread-safety: pure functions.
#ifndef DION_SERVER_WAL_CRC32C_H_
#define DION_SERVER_WAL_CRC32C_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace dion {

// The CRC-32C of `data`.
uint32_t Crc32c(absl::string_view data);

// The CRC-32C of A followed by `data`, given crc = Crc32c(A).
uint32_t Crc32cExtend(uint32_t crc, absl::string_view data);

// The byte-wise table implementation (what Crc32cExtend uses without SSE4.2), for tests.
uint32_t Crc32cExtendPortable(uint32_t crc, absl::string_view data);

}  // namespace dion

#endif  // DION_SERVER_WAL_CRC32C_H_
