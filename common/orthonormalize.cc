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
#include "common/ortho_internal.h"

namespace dion {
namespace {

using ortho_internal::EstimatePassError;
using ortho_internal::kAutoTolerance;
using ortho_internal::kSecondPassLimit;
using ortho_internal::Rollback;
using ortho_internal::Sketch;
using ortho_internal::SketchRows;

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
  const std::shared_ptr<const Matrix> S = Sketch(k, m, options.seed);
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
  C.diagonal().array() -= 1.0;
  return ortho_internal::MaxAbsUpper(C);
}

}  // namespace dion
