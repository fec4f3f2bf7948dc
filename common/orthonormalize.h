// Orthonormalization of the columns of a tall matrix P (m x r): the numerically delicate
// heart of a Dion step. See docs/algorithm.md for the methods and when each is used.
//
// Thread-safety: the functions are safe for concurrent use on distinct matrices. The
// sketch cache used by rcqr is internally synchronised.
#ifndef DION_COMMON_ORTHONORMALIZE_H_
#define DION_COMMON_ORTHONORMALIZE_H_

#include <cstdint>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "common/matrix.h"

namespace dion {

enum class OrthoMethod {
  kAuto,   // Cholesky QR, a second pass when the first was inaccurate, rcqr/qr on failure
  kQr,     // Householder QR (LAPACK sgeqrf + sorgqr): stable, slowest
  kCqr,    // Cholesky QR: P := P U^{-1}, U^T U = P^T P; falls back to rcqr if Cholesky fails
  kCqr2,   // Cholesky QR twice
  kRcqr,   // randomized Cholesky QR (sketch S P, QR, solve, one Cholesky QR pass)
};

absl::string_view OrthoMethodName(OrthoMethod method);
// Parses "auto", "qr", "cqr", "cqr2", "rcqr".
absl::StatusOr<OrthoMethod> ParseOrthoMethod(absl::string_view name);

struct OrthoOptions {
  OrthoMethod method = OrthoMethod::kAuto;  // algorithm to use
  double oversample = 1.25;                 // rcqr sketch rows k = ceil(oversample r / 128) 128
  uint64_t seed = 0;                        // seed of the rcqr sketch matrix S
};

// What Orthonormalize actually did, for metrics and tests.
struct OrthoReport {
  OrthoMethod used = OrthoMethod::kAuto;  // the method whose result was returned
  int fallbacks = 0;                      // how many times a method failed and another ran
  bool ok = true;                         // false if no method produced finite output
};

// Replaces P (m x r) by a matrix with orthonormal columns spanning the same space (for full
// column rank P). REQUIRES m >= r. When m == r, plain Householder QR is used whatever the
// method. Never leaves NaN or Inf in P: if every method fails (e.g. P itself is not finite),
// P is set to zero and report.ok is false.
OrthoReport Orthonormalize(MatrixRef P, const OrthoOptions& options = {});

// ||P^T P - I||_max, computed in double precision. Costs one m x r x r product.
double OrthogonalityError(ConstMatrixRef P);

}  // namespace dion

#endif  // DION_COMMON_ORTHONORMALIZE_H_
