#include "common/lowrank_update.h"

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <memory>

namespace dion {
namespace {

// Eight floats operated on lane by lane (GCC and Clang vector extension): the build's
// instruction set decides how many lanes one instruction does (two SSE2 registers at the
// x86-64 baseline, one AVX register with -march=native), never what a lane computes.
// aligned(4): loads and stores may be unaligned; may_alias: they read and write floats.
typedef float Lanes __attribute__((vector_size(32), aligned(4), may_alias));
constexpr int kLanes = 8;

// A tile of X is kTileRows x kTileCols elements whose sums stay in registers while k runs
// over the rank; each step of k reads kTileCols packed values of B once for kTileRows rows.
constexpr int kTileRows = 6;
constexpr int kTileVectors = 2;
constexpr int kTileCols = kTileVectors * kLanes;

// B (n x r) repacked as strips of kTileCols of its rows: strip s holds, for k = 0, ..., r - 1,
// the values B(s * kTileCols + c, k) for c = 0, ..., kTileCols - 1 contiguously, so that a
// tile reads its r x kTileCols operand as one stream; rows past n are zero.
std::unique_ptr<float[]> PackStrips(ConstMatrixRef B, int64_t strips) {
  const int64_t n = B.rows(), r = B.cols();
  auto packed = std::make_unique<float[]>(strips * r * kTileCols);  // zero-initialised
  for (int64_t j = 0; j < n; ++j) {
    float* strip = packed.get() + (j / kTileCols) * r * kTileCols + j % kTileCols;
    const float* row = B.data() + j * B.outerStride();
    for (int64_t k = 0; k < r; ++k) strip[k * kTileCols] = row[k];
  }
  return packed;
}

// X(i, c) = decay X(i, c) - scale sum_k a(i, k) strip(k, c) for Rows rows of X and its first
// `cols` columns, the sum in k order from +0 (lanes past `cols` are computed and dropped).
template <int Rows>
void Tile(const float* a, int64_t lda, const float* strip, int64_t r, float decay, float scale,
          float* x, int64_t ldx, int cols) {
  Lanes acc[Rows][kTileVectors] = {};
  for (int64_t k = 0; k < r; ++k) {
    const Lanes* b = reinterpret_cast<const Lanes*>(strip + k * kTileCols);
    for (int i = 0; i < Rows; ++i) {
      const float aik = a[i * lda + k];
      for (int v = 0; v < kTileVectors; ++v) acc[i][v] += aik * b[v];
    }
  }
  for (int i = 0; i < Rows; ++i) {
    float* xi = x + i * ldx;
    if (cols == kTileCols) {
      Lanes* xv = reinterpret_cast<Lanes*>(xi);
      for (int v = 0; v < kTileVectors; ++v) xv[v] = decay * xv[v] - scale * acc[i][v];
    } else {
      const float* sums = reinterpret_cast<const float*>(acc[i]);
      for (int c = 0; c < cols; ++c) xi[c] = decay * xi[c] - scale * sums[c];
    }
  }
}

}  // namespace

void LowRankUpdate(MatrixRef X, float decay, float scale, ConstMatrixRef A, ConstMatrixRef B) {
  const int64_t m = X.rows(), n = X.cols(), r = A.cols();
  assert(A.rows() == m && B.rows() == n && B.cols() == r);
  if (m == 0 || n == 0) return;
  const int64_t strips = (n + kTileCols - 1) / kTileCols;
  const std::unique_ptr<float[]> packed = PackStrips(B, strips);
  const int64_t lda = A.outerStride(), ldx = X.outerStride();
  // Strip by strip, so that one strip of packed B (r x kTileCols) stays in the L1 cache while
  // every row of A passes over it.
  for (int64_t s = 0; s < strips; ++s) {
    const float* strip = packed.get() + s * r * kTileCols;
    const int cols = static_cast<int>(std::min<int64_t>(kTileCols, n - s * kTileCols));
    float* x = X.data() + s * kTileCols;
    int64_t i = 0;
    for (; i + kTileRows <= m; i += kTileRows) {
      Tile<kTileRows>(A.data() + i * lda, lda, strip, r, decay, scale, x + i * ldx, ldx, cols);
    }
    for (; i < m; ++i) {
      Tile<1>(A.data() + i * lda, lda, strip, r, decay, scale, x + i * ldx, ldx, cols);
    }
  }
}

}  // namespace dion
