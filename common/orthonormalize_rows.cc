// Row-split forms of the orthonormalization methods (orthonormalize.h, OrthonormalizeRows).
// They are the methods of orthonormalize.cc with every product over the rows of P replaced
// by the owner's rows plus a reduction: the Gram P^T P = sum_s P_s^T P_s and the sketch
// S P = sum_s S_s P_s (S_s: the columns of S for the owner's rows). Triangular factors,
// estimates and decisions are computed by every owner from the same reduced bits.

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/ortho_internal.h"
#include "common/orthonormalize.h"

namespace dion {
namespace {

using ortho_internal::EstimatePassError;
using ortho_internal::kAutoTolerance;
using ortho_internal::kSecondPassLimit;
using ortho_internal::Rollback;
using ortho_internal::Sketch;
using ortho_internal::SketchRows;

// One owner's rows of the split P and the means to sum over the owners.
struct SplitP {
  MatrixRef P;
  RowBlock block;
  int64_t total_rows;
  RowReducer& reducer;
};

// U with U^T U = sum over the owners of P_s^T P_s (float32 SYRK, summed, Cholesky). False
// if the summed Gram is not numerically positive definite or the factor is not finite.
absl::StatusOr<bool> GramCholesky(SplitP& split, Matrix& U) {
  U.setZero(split.P.cols(), split.P.cols());  // SYRK writes only the upper triangle
  SyrkUpperAtA(1.0f, split.P, 0.0f, U);
  if (absl::Status s = split.reducer.AllReduce("gram", U); !s.ok()) return s;
  return CholeskyUpper(U) && AllFinite(U);
}

// One Cholesky QR pass, P := P U^{-1}. False if the Cholesky failed (P untouched). A pass
// whose result overflowed is not detected here (that would be a local decision): the next
// reduction of P (a Gram, or the step's R) carries the Inf to every owner.
absl::StatusOr<bool> CholeskyQrPass(SplitP& split, Rollback& rollback) {
  Matrix U;
  absl::StatusOr<bool> factored = GramCholesky(split, U);
  if (!factored.ok() || !*factored) return factored;
  rollback.Save();
  SolveUpperRight(U, split.P);
  return true;
}

// Randomized Cholesky QR (orthonormalize.cc, RandomizedCholeskyQr) with the sketch summed
// over the owners: each multiplies its rows by its columns of the same k x total_rows S.
absl::StatusOr<bool> RandomizedCholeskyQr(SplitP& split, const OrthoOptions& options,
                                          Rollback& rollback, bool polish,
                                          double* estimated_error) {
  const int64_t r = split.P.cols();
  const int64_t k = SketchRows(r, options.oversample);
  const std::shared_ptr<const Matrix> S = Sketch(k, split.total_rows, options.seed);
  Matrix SP(k, r);
  Gemm(Trans::kNo, Trans::kNo, 1.0f, S->middleCols(split.block.begin, split.block.size()),
       split.P, 0.0f, SP);
  if (absl::Status s = split.reducer.AllReduce("sketch", SP); !s.ok()) return s;
  if (!AllFinite(SP)) return false;
  Matrix U;
  HouseholderQr(SP, &U);
  if (!AllFinite(U) || !(U.diagonal().cwiseAbs().minCoeff() > 0.0f)) return false;
  rollback.Save();
  SolveUpperRight(U, split.P);
  if (!polish) return CholeskyQrPass(split, rollback);
  for (int pass = 0; pass < 2; ++pass) {
    absl::StatusOr<bool> factored = GramCholesky(split, U);
    if (!factored.ok() || !*factored) return factored;
    *estimated_error = EstimatePassError(U);
    if (!(*estimated_error <= kSecondPassLimit)) return false;
    SolveUpperRight(U, split.P);
    if (*estimated_error <= kAutoTolerance) return true;
  }
  return false;
}

// The `auto` policy's Cholesky part (orthonormalize.cc, AutoCholeskyQr).
absl::StatusOr<bool> AutoCholeskyQr(SplitP& split, Rollback& rollback, OrthoReport& report) {
  Matrix U;
  absl::StatusOr<bool> factored = GramCholesky(split, U);
  if (!factored.ok() || !*factored) return factored;
  const double first = EstimatePassError(U);
  if (!(first <= kSecondPassLimit)) return false;  // P untouched
  const bool one_pass = first <= kAutoTolerance;
  if (!one_pass) rollback.Save();
  SolveUpperRight(U, split.P);
  if (one_pass) {
    report.used = OrthoMethod::kCqr;
    report.estimated_error = first;
    return true;
  }
  factored = GramCholesky(split, U);
  if (!factored.ok() || !*factored) return factored;
  const double second = EstimatePassError(U);
  if (!(second <= kAutoTolerance)) return false;
  SolveUpperRight(U, split.P);
  report.used = OrthoMethod::kCqr2;
  report.estimated_error = second;
  return true;
}

// Runs `method` once, without fallback. False when it failed.
absl::StatusOr<bool> RunOnce(OrthoMethod method, bool for_auto, SplitP& split,
                             const OrthoOptions& options, Rollback& rollback,
                             OrthoReport& report) {
  report.used = method;
  report.estimated_error = -1.0;
  switch (method) {
    case OrthoMethod::kAuto:
      return AutoCholeskyQr(split, rollback, report);
    case OrthoMethod::kCqr:
      return CholeskyQrPass(split, rollback);
    case OrthoMethod::kCqr2: {
      absl::StatusOr<bool> first = CholeskyQrPass(split, rollback);
      if (!first.ok() || !*first) return first;
      return CholeskyQrPass(split, rollback);
    }
    case OrthoMethod::kRcqr: {
      double error = -1.0;
      absl::StatusOr<bool> done =
          RandomizedCholeskyQr(split, options, rollback, for_auto, &error);
      if (done.ok() && *done) report.estimated_error = error;
      return done;
    }
    case OrthoMethod::kQr:
      break;  // refused by the caller
  }
  return absl::InternalError("no row-split form of this orthonormalization method");
}

}  // namespace

absl::Status ValidateSplitOrthoMethod(OrthoMethod method) {
  if (method != OrthoMethod::kQr) return absl::OkStatus();
  return absl::InvalidArgumentError(
      "orthonormalization method 'qr' (Householder) cannot run on a parameter split over "
      "several shards: it needs the whole P; expected one of auto, cqr, cqr2, rcqr");
}

absl::StatusOr<OrthoReport> OrthonormalizeRows(MatrixRef P, RowBlock block, int64_t total_rows,
                                               const OrthoOptions& options,
                                               RowReducer& reducer) {
  if (absl::Status s = ValidateSplitOrthoMethod(options.method); !s.ok()) return s;
  if (block.begin < 0 || block.end > total_rows || block.begin > block.end ||
      P.rows() != block.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "row block [", block.begin, ", ", block.end, ") of a P with ", total_rows,
        " rows does not fit: expected 0 <= begin <= end <= ", total_rows, " and ",
        block.size(), " rows in this owner's P, which has ", P.rows()));
  }
  OrthoReport report;
  report.used = options.method;
  if (P.cols() == 0) return report;
  // The chain: the requested method, then rcqr; each attempt restarts from the input.
  OrthoMethod chain[2] = {options.method, OrthoMethod::kRcqr};
  const int length = options.method == OrthoMethod::kRcqr ? 1 : 2;
  const bool for_auto = options.method == OrthoMethod::kAuto;
  SplitP split{P, block, total_rows, reducer};
  Rollback rollback(P);
  for (int i = 0; i < length; ++i) {
    if (i > 0) {
      ++report.fallbacks;
      rollback.Restore();
    }
    absl::StatusOr<bool> done = RunOnce(chain[i], for_auto, split, options, rollback, report);
    if (!done.ok()) return done.status();
    if (*done) return report;
  }
  P.setZero();
  report.ok = false;
  return report;
}

absl::StatusOr<double> OrthogonalityErrorRows(ConstMatrixRef P, RowBlock block,
                                              int64_t total_rows, RowReducer& reducer) {
  const Eigen::Index m = P.rows(), r = P.cols();
  if (r == 0) return 0.0;
  const MatrixD Pd = P.cast<double>();
  MatrixD C = MatrixD::Zero(r, r);
  if (m > 0) {
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(r), static_cast<int>(m),
                1.0, Pd.data(), static_cast<int>(r), 0.0, C.data(), static_cast<int>(r));
  }
  // This owner's share of the identity, so that the float sum carries only the small
  // differences, not entries near 1.
  const double share = static_cast<double>(block.size()) / static_cast<double>(total_rows);
  C.diagonal().array() -= share;
  Matrix deviation = C.cast<float>();
  if (absl::Status s = reducer.AllReduce("ortho_error", deviation); !s.ok()) return s;
  return ortho_internal::MaxAbsUpper(deviation.cast<double>());
}

}  // namespace dion
