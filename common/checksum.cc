#include "common/checksum.h"

#include <bit>
#include <cstring>

namespace dion {
namespace {

constexpr uint64_t kOffsetBasis = 14695981039346656037ull;
constexpr uint64_t kPrime = 1099511628211ull;

static_assert(std::endian::native == std::endian::little,
              "the checksum is defined on little-endian words; add a byte swap for this host");

uint32_t FloatBits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

}  // namespace

uint64_t WeightsChecksum(ConstMatrixRef X) {
  uint64_t h = kOffsetBasis;
  const int64_t rows = X.rows();
  const int64_t cols = X.cols();
  const int64_t count = rows * cols;
  if (X.outerStride() == cols) {
    // Contiguous: hash whole words straight from memory.
    const float* data = X.data();
    int64_t i = 0;
    for (; i + 1 < count; i += 2) {
      uint64_t w;
      std::memcpy(&w, data + i, sizeof(w));
      h = (h ^ w) * kPrime;
    }
    if (i < count) h = (h ^ static_cast<uint64_t>(FloatBits(data[i]))) * kPrime;
  } else {
    // Strided rows: pair floats across row boundaries exactly as the contiguous case would.
    bool have_low = false;
    uint64_t low = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const uint64_t bits = FloatBits(X(r, c));
        if (!have_low) {
          low = bits;
          have_low = true;
        } else {
          h = (h ^ (low | (bits << 32))) * kPrime;
          have_low = false;
        }
      }
    }
    if (have_low) h = (h ^ low) * kPrime;
  }
  h = (h ^ static_cast<uint64_t>(count)) * kPrime;
  return h;
}

}  // namespace dion
