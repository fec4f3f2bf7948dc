// Element-wise optimizers for the parameters Dion does not handle: biases, norms,
// embeddings and the output head (AdamW and Lion, as in docs/algorithm.md).
//
// Thread-safety: the functions are safe for concurrent use on distinct parameters; one
// parameter's state must not be stepped concurrently.
#ifndef DION_COMMON_ELEMENTWISE_OPTIMIZERS_H_
#define DION_COMMON_ELEMENTWISE_OPTIMIZERS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "common/matrix.h"

namespace dion {

struct AdamWConfig {
  double lr = 0.001;          // learning rate
  double beta1 = 0.9;         // first-moment decay
  double beta2 = 0.95;        // second-moment decay
  double eps = 1e-8;          // added to the bias-corrected sqrt(v)
  double weight_decay = 0.01; // decoupled weight decay
};

struct AdamWState {
  Matrix m;           // first moment, same shape as X
  Matrix v;           // second moment, same shape as X
  int64_t step = 0;   // t, the number of updates applied
};

// InvalidArgument naming the field unless lr and weight_decay are finite and >= 0,
// 0 <= beta1, beta2 < 1 and eps is finite and > 0.
absl::Status ValidateAdamWConfig(const AdamWConfig& config);
AdamWState InitAdamWState(int64_t rows, int64_t cols);

// One AdamW step: m = b1 m + (1-b1) G; v = b2 v + (1-b2) G^2; t += 1;
// X = X (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
// G, state.m and state.v must have the shape of X. Mismatched shapes, a non-finite G or an
// invalid config are refused with InvalidArgument and nothing (X, state) changes.
absl::Status AdamWStep(MatrixRef X, ConstMatrixRef G, AdamWState& state,
                       const AdamWConfig& config);

struct LionConfig {
  double lr = 0.0001;         // learning rate
  double beta1 = 0.9;         // interpolation for the update direction
  double beta2 = 0.99;        // momentum decay
  double weight_decay = 0.01; // decoupled weight decay
};

struct LionState {
  Matrix m;           // momentum, same shape as X
  int64_t step = 0;
};

// InvalidArgument naming the field unless lr and weight_decay are finite and >= 0 and
// 0 <= beta1, beta2 < 1.
absl::Status ValidateLionConfig(const LionConfig& config);
LionState InitLionState(int64_t rows, int64_t cols);

// One Lion step: u = sign(b1 m + (1-b1) G); X = X (1 - lr wd) - lr u; m = b2 m + (1-b2) G.
// G and state.m must have the shape of X. Mismatched shapes, a non-finite G or an invalid
// config are refused with InvalidArgument and nothing (X, state) changes.
absl::Status LionStep(MatrixRef X, ConstMatrixRef G, LionState& state, const LionConfig& config);

}  // namespace dion

#endif  // DION_COMMON_ELEMENTWISE_OPTIMIZERS_H_
