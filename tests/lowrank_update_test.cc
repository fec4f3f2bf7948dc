// The deterministic rank-r update (common/lowrank_update.h): its accuracy against a plain
// double-precision triple loop, and its bits against the documented sequence of float32
// operations emulated independently of any vector unit or compiler contraction.
#include "common/lowrank_update.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/checksum.h"
#include "common/rng.h"

namespace dion {
namespace {

Matrix Random(int64_t m, int64_t n, uint64_t seed) {
  Matrix M(m, n);
  Rng(seed).FillNormal(M);
  return M;
}

// float32 a op b, computed in double and rounded once to float: exact IEEE float32 rounding,
// since double has more than 2 * 24 + 2 significand bits (the double rounding is innocuous).
// The volatile store keeps the compiler from narrowing the double expression back to float
// and fusing a multiply into the next add (GCC does both by default).
float Round(double x) {
  volatile float rounded = static_cast<float>(x);
  return rounded;
}
float Mul(float a, float b) { return Round(static_cast<double>(a) * b); }
float Add(float a, float b) { return Round(static_cast<double>(a) + b); }
float Sub(float a, float b) { return Round(static_cast<double>(a) - b); }

uint32_t Bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

struct Case {
  int64_t m, n, r;
};
// Tile edges: rows not a multiple of the kernel's row tile, columns not a multiple of its
// column tile or fewer than one tile, rank 1, and the shapes of a run.
constexpr Case kCases[] = {{1, 1, 1},   {7, 5, 3},    {13, 17, 1},   {6, 16, 4},
                           {31, 33, 9}, {100, 10, 10}, {784, 256, 16}, {256, 784, 64}};

TEST(LowRankUpdate, MatchesADoublePrecisionTripleLoop) {
  for (const Case& c : kCases) {
    const Matrix X0 = Random(c.m, c.n, 1), A = Random(c.m, c.r, 2), B = Random(c.n, c.r, 3);
    const float decay = 0.999f, scale = 0.03f;
    Matrix X = X0;
    LowRankUpdate(X, decay, scale, A, B);
    // Recursive float32 summation of r products then two scalings and a subtraction: each
    // element is within (r + 3) u of the sum of its terms' magnitudes, u = 2^-24.
    const double u = std::ldexp(1.0, -24);
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < c.n; ++j) {
        double dot = 0, magnitude = 0;
        for (int64_t k = 0; k < c.r; ++k) {
          dot += static_cast<double>(A(i, k)) * B(j, k);
          magnitude += std::abs(static_cast<double>(A(i, k)) * B(j, k));
        }
        const double expected = static_cast<double>(decay) * X0(i, j) - double{scale} * dot;
        const double bound = (c.r + 3) * u *
                             (std::abs(double{decay} * X0(i, j)) + double{scale} * magnitude);
        ASSERT_NEAR(X(i, j), expected, bound)
            << c.m << " x " << c.n << " r " << c.r << " at (" << i << ", " << j << ")";
      }
    }
  }
}

// The header's definition, one element at a time: every build on every CPU must give these
// bits, whatever its vector width.
TEST(LowRankUpdate, ComputesExactlyTheDocumentedFloat32Sequence) {
  for (const Case& c : kCases) {
    const Matrix X0 = Random(c.m, c.n, 4), A = Random(c.m, c.r, 5), B = Random(c.n, c.r, 6);
    const float decay = 0.99f, scale = 0.7f;
    Matrix X = X0;
    LowRankUpdate(X, decay, scale, A, B);
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < c.n; ++j) {
        float s = 0.0f;
        for (int64_t k = 0; k < c.r; ++k) s = Add(s, Mul(A(i, k), B(j, k)));
        const float expected = Sub(Mul(decay, X0(i, j)), Mul(scale, s));
        ASSERT_EQ(Bits(X(i, j)), Bits(expected))
            << c.m << " x " << c.n << " r " << c.r << " at (" << i << ", " << j << "): " << X(i, j)
            << " vs " << expected;
      }
    }
  }
}

// Large enough to be split over threads (the kernel splits calls of 2^23 multiply-adds per
// thread and more; this one has 3.15 * 2^23), with a column count that leaves a partial tile:
// every thread count gives the documented bits, whichever thread computed an element.
TEST(LowRankUpdate, ThreadCountChangesNoBit) {
  const int64_t m = 190, n = 331, r = 420;
  const Matrix X0 = Random(m, n, 10), A = Random(m, r, 11), B = Random(n, r, 12);
  const float decay = 0.999f, scale = 0.01f;
  Matrix expected(m, n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (int64_t k = 0; k < r; ++k) s = Add(s, Mul(A(i, k), B(j, k)));
      expected(i, j) = Sub(Mul(decay, X0(i, j)), Mul(scale, s));
    }
  }
  for (int threads : {1, 2, 3, 8}) {
    Matrix X = X0;
    LowRankUpdate(X, decay, scale, A, B, threads);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        ASSERT_EQ(Bits(X(i, j)), Bits(expected(i, j)))
            << threads << " threads, at (" << i << ", " << j << ")";
      }
    }
  }
}

// Views with a row stride (a block of a larger matrix, as the shard's flat buffers give):
// the block is updated as a matrix of its own, everything around it is left as it was.
TEST(LowRankUpdate, UpdatesABlockAndNothingAroundIt) {
  Matrix big = Random(40, 50, 7);
  const Matrix before = big;
  const Matrix A = Random(30, 5, 8), B = Random(20, 5, 9);
  Matrix block = big.block(3, 4, 30, 20);
  LowRankUpdate(block, 0.5f, 0.25f, A, B);
  LowRankUpdate(big.block(3, 4, 30, 20), 0.5f, 0.25f, A, B);
  EXPECT_EQ(WeightsChecksum(big.block(3, 4, 30, 20)), WeightsChecksum(block));
  big.block(3, 4, 30, 20) = before.block(3, 4, 30, 20);
  EXPECT_EQ(WeightsChecksum(big), WeightsChecksum(before));
}

}  // namespace
}  // namespace dion
