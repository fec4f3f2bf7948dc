// Muon (momentum + Newton-Schulz orthogonalisation), the full-rank comparison algorithm that
// runs on the same server as Dion. Quintic iteration with coefficients (3.4445, -4.7750,
// 2.0315), 5 steps, as in Jordan et al.'s reference implementation.
//
// Thread-safety: safe for concurrent use on distinct parameters.
#ifndef DION_COMMON_MUON_H_
#define DION_COMMON_MUON_H_

#include <cstdint>

#include "absl/status/status.h"
#include "common/matrix.h"

namespace dion {

struct MuonConfig {
  double lr = 0.02;            // learning rate
  double mu = 0.95;            // momentum
  bool nesterov = true;        // use G + mu * M (Nesterov) rather than M as the direction
  double weight_decay = 0.01;  // decoupled weight decay
  int ns_steps = 5;            // Newton-Schulz iterations
};

struct MuonState {
  Matrix M;           // momentum, same shape as X
  int64_t step = 0;
};

// InvalidArgument naming the field unless lr and weight_decay are finite and >= 0,
// 0 <= mu < 1 and ns_steps >= 1.
absl::Status ValidateMuonConfig(const MuonConfig& config);
MuonState InitMuonState(int64_t rows, int64_t cols);

// Approximately orthogonalises A (m x n) in place: A := U S' V^T where A = U S V^T.
// A is first divided by ||A||_F + 1e-7; each singular value x = s / (||A||_F + 1e-7), which
// lies in [0, 1], then goes through p(x) = a x + b x^3 + c x^5 `steps` times. For the default
// 5 steps, measured on a fine grid of x (exact arithmetic; the float result follows the scalar
// map to ~3e-6, see muon_test):
//   x >= 5.2e-3:            S' in [0.6818, 1.1344]
//   1.51e-3 <= x < 5.2e-3:  S' in [0.6818, 1.2024]   (overshoot peaks at x = 4.1e-3)
//   x < 1.51e-3:            453 x <= S' <= 485 x     (about a^5 = 488 times x)
// So every S' <= 1.2024, S' is not monotone in x (only the band is guaranteed), and singular
// values below ~1.5e-3 ||A||_F stay visibly short of the band. All-zero A stays zero.
// The iteration runs on the orientation whose Gram matrix is min(m, n) square (A^T when
// m < n), so the cost is ~ steps * (3 m n k + 2 k^3) flops with k = min(m, n).
// REQUIRES: steps >= 0 (0 only normalises).
void NewtonSchulz(MatrixRef A, int steps = 5);

// One Muon step: M = mu M + G; D = nesterov ? G + mu M : M; O = NewtonSchulz(D);
// X = X (1 - lr wd) - lr * sqrt(max(1, m / n)) * O.
// G and state.M must have the shape of X. A non-finite G, mismatched shapes, an invalid
// config or a momentum that overflows float are refused with InvalidArgument and nothing
// (X, M, step) changes.
absl::Status MuonStep(MatrixRef X, ConstMatrixRef G, MuonState& state, const MuonConfig& config);

}  // namespace dion

#endif  // DION_COMMON_MUON_H_
