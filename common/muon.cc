#include "common/muon.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/blas.h"

namespace dion {
namespace {

// Quintic Newton-Schulz coefficients of Jordan et al.: chosen to push small singular values
// up fast (slope a at 0) at the price of not converging exactly to 1.
constexpr float kA = 3.4445f;
constexpr float kB = -4.7750f;
constexpr float kC = 2.0315f;
// Added to ||A||_F so that an all-zero A divides by a positive number and stays zero.
constexpr double kNormEps = 1e-7;

}  // namespace

absl::Status ValidateMuonConfig(const MuonConfig& config) {
  if (!(std::isfinite(config.lr) && config.lr >= 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MuonConfig.lr must be finite and >= 0, got ", config.lr));
  }
  if (!(config.mu >= 0.0 && config.mu < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MuonConfig.mu must be in [0, 1), got ", config.mu));
  }
  if (!(std::isfinite(config.weight_decay) && config.weight_decay >= 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MuonConfig.weight_decay must be finite and >= 0, got ", config.weight_decay));
  }
  if (config.ns_steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("MuonConfig.ns_steps must be >= 1, got ", config.ns_steps));
  }
  return absl::OkStatus();
}

MuonState InitMuonState(int64_t rows, int64_t cols) {
  MuonState state;
  state.M = Matrix::Zero(rows, cols);
  return state;
}

void NewtonSchulz(MatrixRef A, int steps) {
  const Eigen::Index rows = A.rows(), cols = A.cols();
  if (rows == 0 || cols == 0) return;
  // Iterate on the tall orientation T (l x k, l >= k) so that the Gram matrix T^T T is the
  // small k x k side. For T the wide-form update X = a X + (b S + c S^2) X, S = X X^T,
  // becomes T = T (a I + b S + c S^2) with S = T^T T.
  const bool transposed = rows < cols;
  const Eigen::Index k = std::min(rows, cols), l = std::max(rows, cols);
  // The norm is accumulated in double so that large entries cannot overflow it.
  const float inv_norm = static_cast<float>(1.0 / (A.cast<double>().norm() + kNormEps));
  Matrix T(l, k);
  if (transposed) {
    T = inv_norm * A.transpose();
  } else {
    T = inv_norm * A;
  }
  Matrix next(l, k), S(k, k), poly(k, k);
  for (int step = 0; step < steps; ++step) {
    SyrkUpperAtA(1.0f, T, 0.0f, S);
    for (Eigen::Index i = 1; i < k; ++i)  // syrk wrote only the upper triangle
      for (Eigen::Index j = 0; j < i; ++j) S(i, j) = S(j, i);
    poly = S;
    Gemm(Trans::kNo, Trans::kNo, kC, S, S, kB, poly);  // poly = b S + c S^2
    poly.diagonal().array() += kA;
    Gemm(Trans::kNo, Trans::kNo, 1.0f, T, poly, 0.0f, next);
    T.swap(next);
  }
  if (transposed) {
    A = T.transpose();
  } else {
    A = T;
  }
}

absl::Status MuonStep(MatrixRef X, ConstMatrixRef G, MuonState& state, const MuonConfig& config) {
  if (absl::Status s = ValidateMuonConfig(config); !s.ok()) return s;
  if (G.rows() != X.rows() || G.cols() != X.cols()) {
    return absl::InvalidArgumentError(absl::StrCat("MuonStep: G is ", G.rows(), "x", G.cols(),
                                                   ", expected the shape of X, ", X.rows(),
                                                   "x", X.cols()));
  }
  if (state.M.rows() != X.rows() || state.M.cols() != X.cols()) {
    return absl::InvalidArgumentError(
        absl::StrCat("MuonStep: momentum M is ", state.M.rows(), "x", state.M.cols(),
                     ", expected the shape of X, ", X.rows(), "x", X.cols()));
  }
  if (!AllFinite(G)) {
    return absl::InvalidArgumentError("MuonStep: G contains NaN or Inf; expected finite values");
  }
  const float mu = static_cast<float>(config.mu);
  // The new momentum is built aside and committed only once the whole step is known to be
  // finite, so that a refused step leaves M and X as they were.
  Matrix M = mu * state.M + G;
  Matrix O = config.nesterov ? Matrix(G + mu * M) : M;
  if (!AllFinite(M) || !AllFinite(O)) {
    return absl::InvalidArgumentError(
        "MuonStep: momentum overflowed float range; expected gradients of finite magnitude");
  }
  NewtonSchulz(O, config.ns_steps);
  const double shape_scale =
      std::sqrt(std::max(1.0, static_cast<double>(X.rows()) / static_cast<double>(X.cols())));
  const float decay = static_cast<float>(1.0 - config.lr * config.weight_decay);
  const float scale = static_cast<float>(config.lr * shape_scale);
  state.M.swap(M);
  X = decay * X - scale * O;
  state.step += 1;
  return absl::OkStatus();
}

}  // namespace dion
