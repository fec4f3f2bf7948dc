#include "common/elementwise_optimizers.h"

#include <cmath>
#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace dion {
namespace {

absl::Status CheckLearningRate(absl::string_view owner, double lr) {
  if (std::isfinite(lr) && lr >= 0.0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(owner, ".lr must be finite and >= 0, got ", lr));
}

absl::Status CheckBeta(absl::string_view owner, absl::string_view field, double beta) {
  if (beta >= 0.0 && beta < 1.0) return absl::OkStatus();  // also false for NaN
  return absl::InvalidArgumentError(
      absl::StrCat(owner, ".", field, " must be in [0, 1), got ", beta));
}

absl::Status CheckWeightDecay(absl::string_view owner, double weight_decay) {
  if (std::isfinite(weight_decay) && weight_decay >= 0.0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(owner, ".weight_decay must be finite and >= 0, got ", weight_decay));
}

// Shared argument checks of a step: X, G and every state buffer have one shape and G is
// finite. Runs before anything is written, so a refused step changes nothing.
absl::Status CheckStepInputs(absl::string_view step, ConstMatrixRef X, ConstMatrixRef G,
                             std::initializer_list<const Matrix*> state) {
  if (G.rows() != X.rows() || G.cols() != X.cols()) {
    return absl::InvalidArgumentError(absl::StrCat(step, ": G is ", G.rows(), "x", G.cols(),
                                                   ", expected the shape of X, ", X.rows(),
                                                   "x", X.cols()));
  }
  for (const Matrix* buffer : state) {
    if (buffer->rows() != X.rows() || buffer->cols() != X.cols()) {
      return absl::InvalidArgumentError(
          absl::StrCat(step, ": optimizer state is ", buffer->rows(), "x", buffer->cols(),
                       ", expected the shape of X, ", X.rows(), "x", X.cols(),
                       " (initialise it with the parameter's shape)"));
    }
  }
  if (!AllFinite(G)) {
    return absl::InvalidArgumentError(
        absl::StrCat(step, ": G contains NaN or Inf; expected finite values"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAdamWConfig(const AdamWConfig& config) {
  if (absl::Status s = CheckLearningRate("AdamWConfig", config.lr); !s.ok()) return s;
  if (absl::Status s = CheckBeta("AdamWConfig", "beta1", config.beta1); !s.ok()) return s;
  if (absl::Status s = CheckBeta("AdamWConfig", "beta2", config.beta2); !s.ok()) return s;
  if (!(std::isfinite(config.eps) && config.eps > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamWConfig.eps must be finite and > 0, got ", config.eps));
  }
  return CheckWeightDecay("AdamWConfig", config.weight_decay);
}

AdamWState InitAdamWState(int64_t rows, int64_t cols) {
  AdamWState state;
  state.m = Matrix::Zero(rows, cols);
  state.v = Matrix::Zero(rows, cols);
  return state;
}

absl::Status AdamWStep(MatrixRef X, ConstMatrixRef G, AdamWState& state,
                       const AdamWConfig& config) {
  if (absl::Status s = ValidateAdamWConfig(config); !s.ok()) return s;
  if (absl::Status s = CheckStepInputs("AdamWStep", X, G, {&state.m, &state.v}); !s.ok()) {
    return s;
  }
  const double t = static_cast<double>(state.step + 1);
  // Scalars are formed in double and rounded once, so 1 - b2^t stays accurate for b2 near 1.
  const double bias1 = 1.0 - std::pow(config.beta1, t);
  const double bias2 = 1.0 - std::pow(config.beta2, t);
  const float b1 = static_cast<float>(config.beta1);
  const float one_minus_b1 = static_cast<float>(1.0 - config.beta1);
  const float b2 = static_cast<float>(config.beta2);
  const float one_minus_b2 = static_cast<float>(1.0 - config.beta2);
  const float decay = static_cast<float>(1.0 - config.lr * config.weight_decay);
  const float step_size = static_cast<float>(config.lr / bias1);
  const float inv_sqrt_bias2 = static_cast<float>(1.0 / std::sqrt(bias2));
  const float eps = static_cast<float>(config.eps);

  auto m = state.m.array();
  auto v = state.v.array();
  const auto g = G.array();
  m = b1 * m + one_minus_b1 * g;
  v = b2 * v + one_minus_b2 * g.square();
  // (m / bias1) / (sqrt(v / bias2) + eps), with the bias corrections folded into scalars.
  X.array() = decay * X.array() - step_size * m / (v.sqrt() * inv_sqrt_bias2 + eps);
  state.step += 1;
  return absl::OkStatus();
}

absl::Status ValidateLionConfig(const LionConfig& config) {
  if (absl::Status s = CheckLearningRate("LionConfig", config.lr); !s.ok()) return s;
  if (absl::Status s = CheckBeta("LionConfig", "beta1", config.beta1); !s.ok()) return s;
  if (absl::Status s = CheckBeta("LionConfig", "beta2", config.beta2); !s.ok()) return s;
  return CheckWeightDecay("LionConfig", config.weight_decay);
}

LionState InitLionState(int64_t rows, int64_t cols) {
  LionState state;
  state.m = Matrix::Zero(rows, cols);
  return state;
}

absl::Status LionStep(MatrixRef X, ConstMatrixRef G, LionState& state, const LionConfig& config) {
  if (absl::Status s = ValidateLionConfig(config); !s.ok()) return s;
  if (absl::Status s = CheckStepInputs("LionStep", X, G, {&state.m}); !s.ok()) return s;
  const float b1 = static_cast<float>(config.beta1);
  const float one_minus_b1 = static_cast<float>(1.0 - config.beta1);
  const float b2 = static_cast<float>(config.beta2);
  const float one_minus_b2 = static_cast<float>(1.0 - config.beta2);
  const float decay = static_cast<float>(1.0 - config.lr * config.weight_decay);
  const float lr = static_cast<float>(config.lr);

  auto m = state.m.array();
  const auto g = G.array();
  // The update direction uses the momentum from before this step's decay (Chen et al. 2023).
  X.array() = decay * X.array() - lr * (b1 * m + one_minus_b1 * g).sign();
  m = b2 * m + one_minus_b2 * g;
  state.step += 1;
  return absl::OkStatus();
}

}  // namespace dion
