#include "common/ortho_internal.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <list>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"
#include "common/rng.h"

namespace dion::ortho_internal {
namespace {

// Drawing the k x m Gaussian sketch takes k * m Box-Muller normals: 86 ms at k = 384,
// m = 4096 (r = 256) and 284 ms at k = 1280 (r = 1024) on the dev machine, more than the
// whole rest of rcqr (~70 ms at r = 256, bench/ortho_bench), while the same (k, m, seed)
// recurs at every step of a parameter. So sketches are shared through a small
// cache. It is bounded in bytes (least recently used evicted first) because a server holds
// many parameter shapes; entries are immutable and handed out as shared_ptr so eviction
// never invalidates a sketch in use. Generation runs outside the lock.
class SketchCache {
 public:
  std::shared_ptr<const Matrix> Get(int64_t k, int64_t m, uint64_t seed) {
    {
      MutexLock lock(&mu_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->k == k && it->m == m && it->seed == seed) {
          entries_.splice(entries_.begin(), entries_, it);  // most recently used first
          return entries_.front().S;
        }
      }
    }
    auto S = std::make_shared<Matrix>(k, m);
    Rng rng(seed);
    rng.FillNormal(*S, std::sqrt(1.0 / static_cast<double>(k)));
    const size_t bytes = static_cast<size_t>(k) * static_cast<size_t>(m) * sizeof(float);
    MutexLock lock(&mu_);
    for (const Entry& e : entries_) {  // another thread may have drawn the same sketch
      if (e.k == k && e.m == m && e.seed == seed) return e.S;
    }
    if (bytes > kMaxBytes) return S;
    while (bytes_ + bytes > kMaxBytes) {
      bytes_ -= entries_.back().bytes;
      entries_.pop_back();
    }
    entries_.push_front(Entry{k, m, seed, bytes, S});
    bytes_ += bytes;
    return S;
  }

 private:
  // Enough for a few 4096 x 1280 sketches (21 MB each).
  static constexpr size_t kMaxBytes = size_t{128} << 20;

  struct Entry {
    int64_t k, m;
    uint64_t seed;
    size_t bytes;
    std::shared_ptr<const Matrix> S;
  };
  Mutex mu_;
  std::list<Entry> entries_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

SketchCache& Sketches() {
  static SketchCache* cache = new SketchCache;  // never destroyed: no exit-time races
  return *cache;
}

}  // namespace

// Rows of the rcqr sketch: oversample * r rounded up to a multiple of 128 (a BLAS-friendly
// block), never fewer than r so that the sketched QR is well defined. oversample is clamped
// to [1, 16] (the range DionConfig accepts) so that k stays meaningful for any input.
int64_t SketchRows(int64_t r, double oversample) {
  oversample = std::isnan(oversample) ? 1.0 : std::clamp(oversample, 1.0, 16.0);
  const double blocks = std::ceil(oversample * static_cast<double>(r) / 128.0);
  return std::max<int64_t>(r, static_cast<int64_t>(blocks) * 128);
}

std::shared_ptr<const Matrix> Sketch(int64_t k, int64_t m, uint64_t seed) {
  return Sketches().Get(k, m, seed);
}

double MaxAbsUpper(const MatrixD& D) {
  double worst = 0.0;
  for (Eigen::Index i = 0; i < D.rows(); ++i) {
    for (Eigen::Index j = i; j < D.cols(); ++j) {
      const double e = std::abs(D(i, j));
      if (std::isnan(e)) return e;
      worst = std::max(worst, e);
    }
  }
  return worst;
}

// Estimated orthogonality error of P U^{-1}, where U^T U is the computed Cholesky factor of
// the float32 Gram P^T P. The Gram and the factorisation carry an error dC ~ u ||P||^2, and
// Q^T Q - I = U^{-T} dC U^{-1}, so the error is about u * cond(U^T U) = u * lmax / lmin,
// plus the pass's own rounding floor.
// lmax and lmin come from a few power / inverse power iterations with U (O(r^2) each, far
// below the O(m r^2) of the pass). Returns +inf (or NaN) when U is (nearly) singular.
double EstimatePassError(const Matrix& U) {
  const Eigen::Index r = U.rows();
  const auto Ut = U.triangularView<Eigen::Upper>();
  // A fixed pseudo-random start: deterministic, and almost surely not orthogonal to the
  // extreme eigenvectors.
  Vector start(r);
  Rng rng(0x5EED);
  for (Eigen::Index i = 0; i < r; ++i) start(i) = static_cast<float>(rng.Normal());
  start.normalize();

  double lmax = 0.0;  // Rayleigh quotient x^T U^T U x, increases towards lmax
  Vector x = start;
  for (int it = 0; it < kEstimateIterations; ++it) {
    const Vector y = Ut * x;
    lmax = std::max(lmax, static_cast<double>(y.squaredNorm()));
    x.noalias() = Ut.transpose() * y;
    const float norm = x.norm();
    if (!(norm > 0.0f) || !std::isfinite(norm)) break;
    x /= norm;
  }
  double inv_lmin = 0.0;  // Rayleigh quotient of (U^T U)^{-1}, increases towards 1 / lmin
  x = start;
  for (int it = 0; it < kEstimateIterations; ++it) {
    Ut.transpose().solveInPlace(x);  // x := U^{-T} x
    inv_lmin = std::max(inv_lmin, static_cast<double>(x.squaredNorm()));
    Ut.solveInPlace(x);  // x := U^{-1} x
    const float norm = x.norm();
    if (!std::isfinite(norm)) return std::numeric_limits<double>::infinity();
    if (!(norm > 0.0f)) break;
    x /= norm;
  }
  return kUnitRoundoff * (lmax * inv_lmin + kPassRoundingFloor);
}

}  // namespace dion::ortho_internal
