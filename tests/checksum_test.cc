// The weights checksum (server/checksum.h) against its written definition.
#include "common/checksum.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace dion {
namespace {

// The definition in checksum.h, written out independently: FNV-1a 64 over 64-bit little-endian
// words of the row-major float bytes, odd last float zero-extended, then the float count.
uint64_t DefinitionChecksum(const std::vector<float>& values) {
  std::vector<unsigned char> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  if (bytes.size() % 8 != 0) bytes.resize(bytes.size() + 4, 0);
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < bytes.size(); i += 8) {
    uint64_t w = 0;
    for (int b = 7; b >= 0; --b) w = (w << 8) | bytes[i + b];
    h = (h ^ w) * 1099511628211ull;
  }
  return (h ^ values.size()) * 1099511628211ull;
}

TEST(WeightsChecksum, MatchesTheWrittenDefinition) {
  Matrix odd(1, 3);
  odd << 1.0f, -2.5f, 3.0e-39f;  // includes a denormal
  EXPECT_EQ(WeightsChecksum(odd), DefinitionChecksum({1.0f, -2.5f, 3.0e-39f}));
  Matrix even(2, 2);
  even << 0.5f, 0.25f, -0.0f, 7.0f;
  EXPECT_EQ(WeightsChecksum(even), DefinitionChecksum({0.5f, 0.25f, -0.0f, 7.0f}));
}

TEST(WeightsChecksum, DetectsASingleBitFlipAnywhere) {
  Matrix X = Matrix::Random(7, 5);
  const uint64_t reference = WeightsChecksum(X);
  for (int64_t i = 0; i < X.size(); ++i) {
    Matrix Y = X;
    uint32_t bits;
    std::memcpy(&bits, Y.data() + i, 4);
    bits ^= 1u;
    std::memcpy(Y.data() + i, &bits, 4);
    EXPECT_NE(WeightsChecksum(Y), reference) << "element " << i;
  }
}

TEST(WeightsChecksum, StridedViewHashesLikeItsContiguousCopy) {
  Matrix big = Matrix::Random(6, 9);
  const Matrix block = big.block(1, 2, 4, 5);  // contiguous copy
  EXPECT_EQ(WeightsChecksum(big.block(1, 2, 4, 5)), WeightsChecksum(block));
  const Matrix odd_block = big.block(0, 0, 3, 3);
  EXPECT_EQ(WeightsChecksum(big.block(0, 0, 3, 3)), WeightsChecksum(odd_block));
}

TEST(WeightsChecksum, ShapesDifferingByATrailingZeroDiffer) {
  Matrix a(1, 3);
  a << 1.0f, 2.0f, 3.0f;
  Matrix b(1, 4);
  b << 1.0f, 2.0f, 3.0f, 0.0f;
  EXPECT_NE(WeightsChecksum(a), WeightsChecksum(b));
}

}  // namespace
}  // namespace dion
