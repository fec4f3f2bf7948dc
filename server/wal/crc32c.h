// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final XOR
// 0xFFFFFFFF), the checksum of write-ahead log records. Byte-wise table, no CPU dispatch, so
// every build computes the same value. Published vectors: RFC 3720 section B.4.
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

}  // namespace dion

#endif  // DION_SERVER_WAL_CRC32C_H_
