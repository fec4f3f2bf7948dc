#include "common/lowrank_update.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstdint>
#include <memory>
#include <system_error>
#include <thread>
#include <vector>

namespace dion {
namespace {

// Sixteen floats operated on lane by lane (GCC and Clang vector extension): the build's
// instruction set decides how many lanes one instruction does (one AVX-512 register, two AVX
// or four SSE2 registers), never what a lane computes.
// aligned(4): loads and stores may be unaligned; may_alias: they read and write floats.
typedef float Lanes __attribute__((vector_size(64), aligned(4), may_alias));
constexpr int kLanes = 16;

// A tile of X is kTileRows x kTileCols elements whose sums stay in registers while k runs
// over the rank; each step of k reads kTileCols packed values of B once for kTileRows rows.
constexpr int kTileRows = 6;
constexpr int kTileVectors = 2;
constexpr int kTileCols = kTileVectors * kLanes;

// Rows of A a block holds: about this many bytes of A, so that a block stays in the L2 cache
// while the strips of packed B pass over it.
constexpr int64_t kBlockBytes = 256 * 1024;

// Strips a thread packs and updates at a time: 256 columns of X.
constexpr int64_t kMaxGroupStrips = 8;

// Multiply-adds below which a call runs on the calling thread alone (starting a thread costs
// tens of microseconds).
constexpr int64_t kMinWorkPerThread = int64_t{1} << 23;

// B (n x r) repacked as strips of kTileCols of its rows: strip s holds, for k = 0, ..., r - 1,
// the values B(s * kTileCols + c, k) for c = 0, ..., kTileCols - 1 contiguously, so that a
// tile reads its r x kTileCols operand as one stream; rows past n are zero. Packs the strips
// [first, first + count) into `packed`.
void PackStrips(ConstMatrixRef B, int64_t first, int64_t count, float* packed) {
  const int64_t n = B.rows(), r = B.cols();
  std::fill(packed, packed + count * r * kTileCols, 0.0f);
  const int64_t end = std::min(n, (first + count) * kTileCols);
  for (int64_t j = first * kTileCols; j < end; ++j) {
    float* strip = packed + (j / kTileCols - first) * r * kTileCols + j % kTileCols;
    const float* row = B.data() + j * B.outerStride();
    for (int64_t k = 0; k < r; ++k) strip[k * kTileCols] = row[k];
  }
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

// The columns of strips [first, first + count) of X, all rows: packs those strips, then runs
// the tiles block of rows by block of rows, each block of A passing over every strip.
void UpdateStrips(MatrixRef X, float decay, float scale, ConstMatrixRef A, ConstMatrixRef B,
                  int64_t first, int64_t count) {
  const int64_t m = X.rows(), n = X.cols(), r = A.cols();
  const std::unique_ptr<float[]> packed(new float[count * r * kTileCols]);
  PackStrips(B, first, count, packed.get());
  const int64_t lda = A.outerStride(), ldx = X.outerStride();
  const int64_t block_rows =
      std::max<int64_t>(1, kBlockBytes / (std::max<int64_t>(r, 1) * int64_t{sizeof(float)}) / kTileRows) * kTileRows;
  for (int64_t i0 = 0; i0 < m; i0 += block_rows) {
    const int64_t i1 = std::min(m, i0 + block_rows);
    for (int64_t s = 0; s < count; ++s) {
      const float* strip = packed.get() + s * r * kTileCols;
      const int64_t col = (first + s) * kTileCols;
      const int cols = static_cast<int>(std::min<int64_t>(kTileCols, n - col));
      float* x = X.data() + col;
      const float* a = A.data();
      int64_t i = i0;
      for (; i + kTileRows <= i1; i += kTileRows) {
        Tile<kTileRows>(a + i * lda, lda, strip, r, decay, scale, x + i * ldx, ldx, cols);
      }
      for (; i < i1; ++i) Tile<1>(a + i * lda, lda, strip, r, decay, scale, x + i * ldx, ldx, cols);
    }
  }
}

}  // namespace

void LowRankUpdate(MatrixRef X, float decay, float scale, ConstMatrixRef A, ConstMatrixRef B,
                   int threads) {
  const int64_t m = X.rows(), n = X.cols(), r = A.cols();
  assert(A.rows() == m && B.rows() == n && B.cols() == r);
  if (m == 0 || n == 0) return;
  const int64_t strips = (n + kTileCols - 1) / kTileCols;
  const int64_t work = m * n * std::max<int64_t>(r, 1);
  const int64_t parts = std::clamp<int64_t>(
      std::min<int64_t>(threads, work / kMinWorkPerThread), 1, strips);
  // The threads take groups of strips from a shared counter until none is left, so that a
  // thread the OS preempts on a loaded machine holds up no other; which thread computes an
  // element decides nothing about how it is computed.
  const int64_t group = std::clamp<int64_t>(strips / (4 * parts), 1, kMaxGroupStrips);
  std::atomic<int64_t> next{0};
  const auto run = [&] {
    for (int64_t first = next.fetch_add(group); first < strips; first = next.fetch_add(group)) {
      UpdateStrips(X, decay, scale, A, B, first, std::min(group, strips - first));
    }
  };
  std::vector<std::thread> helpers;
  for (int64_t p = 1; p < parts; ++p) {
    try {
      helpers.emplace_back(run);
    } catch (const std::system_error&) {
      break;  // no thread to be had: the calling thread takes what is left
    }
  }
  run();
  for (std::thread& t : helpers) t.join();
}

}  // namespace dion
