// Pieces of the orthonormalization methods shared by the whole-matrix methods
// (orthonormalize.cc) and their row-split forms (orthonormalize_rows.cc). Internal to
// common/: not an API.
//
// Thread-safety: the functions are safe for concurrent use (the sketch cache is internally
// synchronised); Rollback is a plain value type.
#ifndef DION_COMMON_ORTHO_INTERNAL_H_
#define DION_COMMON_ORTHO_INTERNAL_H_

#include <cstdint>
#include <memory>

#include "common/matrix.h"

namespace dion::ortho_internal {

// Unit roundoff of float32, the precision every method computes in.
inline constexpr double kUnitRoundoff = 0x1.0p-24;

// `auto` accepts a single Cholesky QR pass when its estimated orthogonality error is at most
// this; otherwise it runs a second pass. 1e-5 keeps auto as accurate as the other methods'
// tests demand while leaving well-conditioned P (cond up to ~10) at one pass.
inline constexpr double kAutoTolerance = 1e-5;

// Above this estimated first-pass error the first pass is too far from orthonormal for a
// second pass to be trusted (CholeskyQR2 needs u * cond(P)^2 below ~1, i.e. cond(P) below
// ~4e3 in float32), so `auto` goes straight to rcqr without touching P. The second pass's
// own estimate is checked too, so a wrong call here costs time, not accuracy.
inline constexpr double kSecondPassLimit = 1.0;

// Rounding floor of a Cholesky QR pass in units of u: the error of one pass on a P of
// condition 1 to 3, measured at 4 to 12 u for m x r from 300 x 40 to 2000 x 256.
inline constexpr double kPassRoundingFloor = 10.0;

// Power iterations used to estimate the extreme eigenvalues of U^T U (see EstimatePassError).
inline constexpr int kEstimateIterations = 4;

// Rows of the rcqr sketch: oversample * r rounded up to a multiple of 128 (a BLAS-friendly
// block), never fewer than r so that the sketched QR is well defined. oversample is clamped
// to [1, 16] (the range DionConfig accepts) so that k stays meaningful for any input.
int64_t SketchRows(int64_t r, double oversample);

// The k x m Gaussian sketch of rcqr drawn from Rng(seed) with N(0, 1 / k) entries, shared
// through a small cache (ortho_internal.cc says why). Entries are immutable.
std::shared_ptr<const Matrix> Sketch(int64_t k, int64_t m, uint64_t seed);

// max |D_ij| over the upper triangle (j >= i) of a square D; NaN as soon as one is NaN. With
// D = P^T P - I, the orthogonality error.
double MaxAbsUpper(const MatrixD& D);

// Estimated orthogonality error of P U^{-1}, where U^T U is the computed Cholesky factor of
// the float32 Gram P^T P. The Gram and the factorisation carry an error dC ~ u ||P||^2, and
// Q^T Q - I = U^{-T} dC U^{-1}, so the error is about u * cond(U^T U) = u * lmax / lmin,
// plus the pass's own rounding floor.
// lmax and lmin come from a few power / inverse power iterations with U (O(r^2) each, far
// below the O(m r^2) of the pass). Returns +inf (or NaN) when U is (nearly) singular.
double EstimatePassError(const Matrix& U);

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

}  // namespace dion::ortho_internal

#endif  // DION_COMMON_ORTHO_INTERNAL_H_
