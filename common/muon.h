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

absl::Status ValidateMuonConfig(const MuonConfig& config);
MuonState InitMuonState(int64_t rows, int64_t cols);

// Approximately orthogonalises A (m x n) in place: A := U S' V^T where A = U S V^T and the
// singular values S' lie in the band documented in docs/algorithm.md (about [0.7, 1.2] for
// every singular value not negligibly small). Works on A^T when m > n. All-zero A stays zero.
void NewtonSchulz(MatrixRef A, int steps = 5);

// One Muon step: M = mu M + G; D = nesterov ? G + mu M : M; O = NewtonSchulz(D);
// X = X (1 - lr wd) - lr * sqrt(max(1, m / n)) * O.
// Non-finite G is refused with InvalidArgument and nothing changes.
absl::Status MuonStep(MatrixRef X, ConstMatrixRef G, MuonState& state, const MuonConfig& config);

}  // namespace dion

#endif  // DION_COMMON_MUON_H_
