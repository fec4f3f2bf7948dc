#include "common/orthonormalize.h"

#include <cblas.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <limits>
#include <list>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/mutex.h"
#include "common/rng.h"

namespace dion {
namespace {

// Unit roundoff of float32, the precision every method computes in.
constexpr double kUnitRoundoff = 0x1.0p-24;

// `auto` accepts a single Cholesky QR pass when its estimated orthogonality error is at most
// this; otherwise it runs a second pass. 1e-5 keeps auto as accurate as the other methods'
// tests demand while leaving well-conditioned P (cond up to ~10) at one pass.
constexpr double kAutoTolerance = 1e-5;

// Above this estimated first-pass error the first pass is too far from orthonormal for a
// second pass to be trusted (CholeskyQR2 needs u * cond(P)^2 below ~1, i.e. cond(P) below
// ~4e3 in float32), so `auto` goes straight to rcqr without touching P. The second pass's
// own estimate is checked too, so a wrong call here costs time, not accuracy.
constexpr double kSecondPassLimit = 1.0;

// Rounding floor of a Cholesky QR pass in units of u: the error of one pass on a P of
// condition 1 to 3, measured at 4 to 12 u for m x r from 300 x 40 to 2000 x 256.
constexpr double kPassRoundingFloor = 10.0;

// Power iterations used to estimate the extreme eigenvalues of U^T U (see EstimatePassError).
constexpr int kEstimateIterations = 4;

// Rows of the rcqr sketch: oversample * r rounded up to a multiple of 128 (a BLAS-friendly
// block), never fewer than r so that the sketched QR is well defined. oversample is clamped
// to [1, 16] (the range DionConfig accepts) so that k stays meaningful for any input.
int64_t SketchRows(int64_t r, double oversample) {
  oversample = std::isnan(oversample) ? 1.0 : std::clamp(oversample, 1.0, 16.0);
  const double blocks = std::ceil(oversample * static_cast<double>(r) / 128.0);
  return std::max<int64_t>(r, static_cast<int64_t>(blocks) * 128);
}

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

// The input of Orthonormalize, copied only right before an attempt that may still fail
// modifies P, so that the common case (`auto` accepting one pass) never pays for the copy.
// Invariant kept by every attempt: P is modified only after Save(), or in a step that
// cannot fail afterwards.
class Rollback {
 public:
  explicit Rollback(MatrixRef P) : P_(P) {}
  void Save() {
    if (!saved_) original_ = P_;
    saved_ = true;
  }
  // Puts the input back into P (a no-op if P was never modified, hence never saved).
  void Restore() {
    if (saved_) P_ = original_;
  }

 private:
  MatrixRef P_;
  Matrix original_;
  bool saved_ = false;
};

// U with U^T U = P^T P (float32 SYRK + Cholesky). False if the Gram is not numerically
// positive definite or the factor is not finite.
bool GramCholesky(ConstMatrixRef P, Matrix& U) {
  U.setZero(P.cols(), P.cols());  // SYRK writes only the upper triangle; AllFinite reads all
  SyrkUpperAtA(1.0f, P, 0.0f, U);
  return CholeskyUpper(U) && AllFinite(U);
}

// One Cholesky QR pass, P := P U^{-1}. False if it failed; P is modified only once the
// Cholesky succeeded, after rollback.Save().
bool CholeskyQrPass(MatrixRef P, Rollback& rollback) {
  Matrix U;
  if (!GramCholesky(P, U)) return false;
  rollback.Save();
  SolveUpperRight(U, P);
  return AllFinite(P);
}

// Randomized Cholesky QR: U = R of QR(S P) with S a k x m Gaussian sketch, P := P U^{-1}
// (now well conditioned whatever cond(P) was: S embeds span(P) with distortion about
// (1 + sqrt(r / k)) / (1 - sqrt(r / k))), then one Cholesky QR pass. If `polish`, one more
// pass runs when the estimated error of that pass exceeds kAutoTolerance, and
// *estimated_error receives the final estimate.
bool RandomizedCholeskyQr(MatrixRef P, const OrthoOptions& options, Rollback& rollback,
                          bool polish, double* estimated_error) {
  const int64_t m = P.rows(), r = P.cols();
  const int64_t k = SketchRows(r, options.oversample);
  const std::shared_ptr<const Matrix> S = Sketches().Get(k, m, options.seed);
  Matrix SP(k, r);
  Gemm(Trans::kNo, Trans::kNo, 1.0f, *S, P, 0.0f, SP);
  if (!AllFinite(SP)) return false;
  Matrix U;
  HouseholderQr(SP, &U);  // only U is needed; SP is overwritten by the sketch's Q
  if (!AllFinite(U) || !(U.diagonal().cwiseAbs().minCoeff() > 0.0f)) return false;
  rollback.Save();
  SolveUpperRight(U, P);
  if (!AllFinite(P)) return false;
  if (!polish) return CholeskyQrPass(P, rollback);
  for (int pass = 0; pass < 2; ++pass) {
    if (!GramCholesky(P, U)) return false;
    *estimated_error = EstimatePassError(U);
    if (!(*estimated_error <= kSecondPassLimit)) return false;
    SolveUpperRight(U, P);
    if (!AllFinite(P)) return false;
    if (*estimated_error <= kAutoTolerance) return true;
  }
  return false;
}

// The `auto` policy's Cholesky part: one pass, a second one only if the first is estimated
// to be inaccurate. False when the caller must fall back.
bool AutoCholeskyQr(MatrixRef P, Rollback& rollback, OrthoReport& report) {
  Matrix U;
  if (!GramCholesky(P, U)) return false;
  const double first = EstimatePassError(U);
  if (!(first <= kSecondPassLimit)) return false;  // P untouched
  const bool one_pass = first <= kAutoTolerance;
  // An accepted single pass cannot fail: U is finite and cond(U^T U) <= kAutoTolerance / u,
  // so P U^{-1} is bounded. Only a pass that a second one may have to undo saves the input.
  if (!one_pass) rollback.Save();
  SolveUpperRight(U, P);
  if (!AllFinite(P)) return false;
  if (one_pass) {
    report.used = OrthoMethod::kCqr;
    report.estimated_error = first;
    return true;
  }
  if (!GramCholesky(P, U)) return false;
  const double second = EstimatePassError(U);
  if (!(second <= kAutoTolerance)) return false;
  SolveUpperRight(U, P);
  if (!AllFinite(P)) return false;
  report.used = OrthoMethod::kCqr2;
  report.estimated_error = second;
  return true;
}

// Runs `method` once, without fallback. False when it failed. When `for_auto`, rcqr is
// polished as auto's accuracy target demands.
bool RunOnce(OrthoMethod method, bool for_auto, MatrixRef P, const OrthoOptions& options,
             Rollback& rollback, OrthoReport& report) {
  report.used = method;
  report.estimated_error = -1.0;
  switch (method) {
    case OrthoMethod::kAuto:
      return AutoCholeskyQr(P, rollback, report);
    case OrthoMethod::kQr:
      HouseholderQr(P, nullptr);  // the last resort: nothing to roll back to
      return AllFinite(P);
    case OrthoMethod::kCqr:
      return CholeskyQrPass(P, rollback);
    case OrthoMethod::kCqr2:
      return CholeskyQrPass(P, rollback) && CholeskyQrPass(P, rollback);
    case OrthoMethod::kRcqr: {
      double error = -1.0;
      if (!RandomizedCholeskyQr(P, options, rollback, for_auto, &error)) return false;
      report.estimated_error = error;
      return true;
    }
  }
  return false;
}

}  // namespace

absl::string_view OrthoMethodName(OrthoMethod method) {
  switch (method) {
    case OrthoMethod::kAuto: return "auto";
    case OrthoMethod::kQr: return "qr";
    case OrthoMethod::kCqr: return "cqr";
    case OrthoMethod::kCqr2: return "cqr2";
    case OrthoMethod::kRcqr: return "rcqr";
  }
  return "unknown";
}

absl::StatusOr<OrthoMethod> ParseOrthoMethod(absl::string_view name) {
  for (OrthoMethod method : {OrthoMethod::kAuto, OrthoMethod::kQr, OrthoMethod::kCqr,
                             OrthoMethod::kCqr2, OrthoMethod::kRcqr}) {
    if (name == OrthoMethodName(method)) return method;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown orthonormalization method '", name,
      "'; expected one of auto, qr, cqr, cqr2, rcqr"));
}

OrthoReport Orthonormalize(MatrixRef P, const OrthoOptions& options) {
  OrthoReport report;
  report.used = options.method;
  if (!AllFinite(P)) {
    P.setZero();
    report.ok = false;
    return report;
  }
  assert(P.rows() >= P.cols());
  if (P.cols() == 0) return report;
  // Square P: the Gram is as large as P, so Cholesky-based methods save nothing, and
  // Householder QR is the stable choice.
  if (P.rows() == P.cols()) {
    report.used = OrthoMethod::kQr;
    HouseholderQr(P, nullptr);
    if (!AllFinite(P)) {
      P.setZero();
      report.ok = false;
    }
    return report;
  }

  // Fallback chain: the requested method, then rcqr (stable at any condition number a float
  // matrix can have), then Householder QR (stable, also for rank-deficient P). Each attempt
  // restarts from the input.
  OrthoMethod chain[3] = {options.method};
  int length = 1;
  if (options.method != OrthoMethod::kRcqr && options.method != OrthoMethod::kQr) {
    chain[length++] = OrthoMethod::kRcqr;
  }
  if (options.method != OrthoMethod::kQr) chain[length++] = OrthoMethod::kQr;
  const bool for_auto = options.method == OrthoMethod::kAuto;
  Rollback rollback(P);
  for (int i = 0; i < length; ++i) {
    if (i > 0) {
      ++report.fallbacks;
      rollback.Restore();
    }
    if (RunOnce(chain[i], for_auto, P, options, rollback, report)) return report;
  }
  P.setZero();
  report.ok = false;
  return report;
}

double OrthogonalityError(ConstMatrixRef P) {
  const Eigen::Index m = P.rows(), r = P.cols();
  if (r == 0) return 0.0;
  const MatrixD Pd = P.cast<double>();
  MatrixD C = MatrixD::Zero(r, r);
  if (m > 0) {
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(r), static_cast<int>(m),
                1.0, Pd.data(), static_cast<int>(r), 0.0, C.data(), static_cast<int>(r));
  }
  double worst = 0.0;
  for (Eigen::Index i = 0; i < r; ++i) {
    for (Eigen::Index j = i; j < r; ++j) {
      const double e = std::abs(C(i, j) - (i == j ? 1.0 : 0.0));
      if (std::isnan(e)) return e;
      worst = std::max(worst, e);
    }
  }
  return worst;
}

}  // namespace dion
