// Orthonormalization of the columns of a tall matrix P (m x r): the numerically delicate
// heart of a Dion step. See docs/orthonormalization.md for the methods, the `auto` policy
// and measured speed / accuracy of each.
//
// Thread-safety: the functions are safe for concurrent use on distinct matrices. The
// sketch cache used by rcqr is internally synchronised.
#ifndef DION_COMMON_ORTHONORMALIZE_H_
#define DION_COMMON_ORTHONORMALIZE_H_

#include <cstdint>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "common/row_reduce.h"

namespace dion {

enum class OrthoMethod {
  kAuto,   // Cholesky QR; a second pass only when the first one's estimated orthogonality
           // error exceeds 1e-5; rcqr, then qr, when Cholesky fails or cond(P) is too large
  kQr,     // Householder QR (LAPACK sgeqrf + sorgqr): stable, slowest
  kCqr,    // Cholesky QR: P := P U^{-1}, U^T U = P^T P; falls back to rcqr if Cholesky
           // fails. Error ~ u cond(P)^2: within 1e-5 only up to cond ~10
  kCqr2,   // Cholesky QR twice (same fallback): accurate up to cond ~3e3
  kRcqr,   // randomized Cholesky QR (sketch S P, QR, solve, one Cholesky QR pass); falls
           // back to qr. Accurate at any cond up to 1e7
};

absl::string_view OrthoMethodName(OrthoMethod method);
// Parses "auto", "qr", "cqr", "cqr2", "rcqr".
absl::StatusOr<OrthoMethod> ParseOrthoMethod(absl::string_view name);

struct OrthoOptions {
  OrthoMethod method = OrthoMethod::kAuto;  // algorithm to use
  double oversample = 1.25;                 // rcqr sketch rows k = ceil(oversample r / 128) 128
                                            // (clamped to [1, 16]; k >= r always)
  uint64_t seed = 0;                        // seed of the rcqr sketch matrix S
};

// What Orthonormalize actually did, for metrics and tests.
struct OrthoReport {
  // The method whose result was returned. `auto` reports what it ran: kCqr (one pass),
  // kCqr2 (two), kRcqr or kQr (fallbacks). kQr whenever m == r.
  OrthoMethod used = OrthoMethod::kAuto;
  int fallbacks = 0;                      // how many times a method failed and another ran
  bool ok = true;                         // false if no method produced finite output
  // Cheap estimate of ||P^T P - I|| from the last Cholesky factor (u * cond(U^T U)), filled
  // only by `auto` (free there: O(r^2)); -1 otherwise. An order-of-magnitude indicator for
  // monitoring, not a bound: use OrthogonalityError for the measured value.
  double estimated_error = -1.0;
};

// Replaces P (m x r) by a matrix with orthonormal columns spanning the same space (for full
// column rank P). REQUIRES m >= r. When m == r, plain Householder QR is used whatever the
// method. Never leaves NaN or Inf in P: if every method fails (e.g. P itself is not finite),
// P is set to zero and report.ok is false.
OrthoReport Orthonormalize(MatrixRef P, const OrthoOptions& options = {});

// ||P^T P - I||_max, computed in double precision (NaN if P holds NaN). Costs a double copy
// of P and one m x r x r double SYRK: 23 ms at 4096 x 256 and 380 ms at 4096 x 1024 on the
// dev machine, i.e. 3% and ~13% of the GEMMs of a 4096 x 4096 Dion step. Sample it (every
// N steps) rather than calling it every step; OrthoReport::estimated_error is free.
double OrthogonalityError(ConstMatrixRef P);

// Orthonormalization of a P split by rows over several owners (docs/algorithm.md, "One
// matrix over many shards"): this owner holds the rows `block` of a P with `total_rows` rows
// and r columns, and every owner calls OrthonormalizeRows at the same time with the same
// options; the r x r Grams (and rcqr's k x r sketch) are summed through `reducer`, everything
// else is local, and each owner ends with its rows of one P with orthonormal columns.
// Methods: cqr, cqr2 and rcqr as Orthonormalize runs them, and auto with the same policy,
// except that there is no Householder fallback (it would need all of P): when rcqr fails
// too, report.ok is false and P is zero, as when every method fails in Orthonormalize. A
// square P is done like any other (Orthonormalize uses Householder QR there). Every decision
// (accept a pass, fall back) is taken from reduced values, so all owners take the same one.
// Errors: kQr (InvalidArgument, ValidateSplitOrthoMethod), a block outside [0, total_rows),
// or the reducer's error: the owners must then abandon the step, and P is unspecified.
absl::StatusOr<OrthoReport> OrthonormalizeRows(MatrixRef P, RowBlock block, int64_t total_rows,
                                               const OrthoOptions& options,
                                               RowReducer& reducer);

// OK for the methods OrthonormalizeRows runs; InvalidArgument for qr, naming the others.
absl::Status ValidateSplitOrthoMethod(OrthoMethod method);

// OrthogonalityError of the whole row-split P, every owner calling it together (one
// reduction, tag "ortho_error"). Each owner's double Gram minus its share of the identity is
// summed in float, which adds at most ~1e-7 to the error measured.
absl::StatusOr<double> OrthogonalityErrorRows(ConstMatrixRef P, RowBlock block,
                                              int64_t total_rows, RowReducer& reducer);

}  // namespace dion

#endif  // DION_COMMON_ORTHONORMALIZE_H_
