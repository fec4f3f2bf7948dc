#include "tests/reference.h"

#include <algorithm>
#include <cmath>

#include "common/rng.h"

namespace dion::testing {

MatrixD ReferenceHouseholderQ(const MatrixD& A) {
  const int64_t m = A.rows(), k = A.cols();
  MatrixD R = A;
  std::vector<Eigen::VectorXd> reflectors;
  for (int64_t j = 0; j < k; ++j) {
    Eigen::VectorXd v = R.col(j).tail(m - j);
    const double norm = v.norm();
    Eigen::VectorXd u = v;
    u(0) += (v(0) >= 0 ? norm : -norm);
    const double unorm = u.norm();
    if (unorm > 0) u /= unorm;
    // R := (I - 2 u u^T) R on rows j..m-1.
    for (int64_t c = 0; c < k; ++c) {
      double dot = 0;
      for (int64_t i = 0; i < m - j; ++i) dot += u(i) * R(j + i, c);
      for (int64_t i = 0; i < m - j; ++i) R(j + i, c) -= 2 * u(i) * dot;
    }
    reflectors.push_back(u);
  }
  // Q = H_0 H_1 ... H_{k-1} applied to the first k columns of the identity.
  MatrixD Q = MatrixD::Identity(m, k);
  for (int64_t j = k - 1; j >= 0; --j) {
    const Eigen::VectorXd& u = reflectors[j];
    for (int64_t c = 0; c < k; ++c) {
      double dot = 0;
      for (int64_t i = 0; i < m - j; ++i) dot += u(i) * Q(j + i, c);
      for (int64_t i = 0; i < m - j; ++i) Q(j + i, c) -= 2 * u(i) * dot;
    }
  }
  // Sign convention diag(R) >= 0.
  for (int64_t j = 0; j < k; ++j) {
    if (R(j, j) < 0) Q.col(j) *= -1;
  }
  return Q;
}

void ReferenceDionStep(MatrixD& X, const MatrixD& G, ReferenceDionState& state,
                       const ReferenceDionConfig& config) {
  const int64_t m = X.rows(), n = X.cols();
  const bool transposed = m < n;
  // Work on the tall orientation; transpose back at the end.
  MatrixD B = transposed ? MatrixD((state.M + G).transpose()) : MatrixD(state.M + G);
  MatrixD Q = state.Q;
  MatrixD P, R;
  for (int it = 0; it < config.power_iters; ++it) {
    P = ReferenceHouseholderQ(B * Q);
    R = B.transpose() * P;
    MatrixD Qn = R;
    for (int64_t j = 0; j < R.cols(); ++j) Qn.col(j) = R.col(j) / (R.col(j).norm() + config.eps);
    Q = Qn;
  }
  MatrixD Mw = B - (1 - config.mu) * P * R.transpose();
  MatrixD update = P * Q.transpose();
  state.M = transposed ? MatrixD(Mw.transpose()) : Mw;
  state.Q = Q;
  X *= 1 - config.lr * config.weight_decay;
  const double scale = config.lr * std::sqrt(static_cast<double>(m) / static_cast<double>(n));
  if (transposed) {
    X -= scale * update.transpose();
  } else {
    X -= scale * update;
  }
}

MatrixD GaussianD(int64_t rows, int64_t cols, uint64_t seed, double stddev) {
  Rng rng(seed);
  MatrixD A(rows, cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) A(i, j) = stddev * rng.Normal();
  return A;
}

MatrixD MatrixWithCondition(int64_t m, int64_t k, double condition, uint64_t seed) {
  const MatrixD U = ReferenceHouseholderQ(GaussianD(m, k, seed));
  const MatrixD V = ReferenceHouseholderQ(GaussianD(k, k, seed + 7919));
  Eigen::VectorXd s(k);
  for (int64_t i = 0; i < k; ++i) {
    s(i) = k == 1 ? 1.0 : std::pow(condition, -static_cast<double>(i) / static_cast<double>(k - 1));
  }
  return U * s.asDiagonal() * V.transpose();
}

double MaxRelativeError(const MatrixD& a, const MatrixD& b) {
  const double scale = std::max(b.cwiseAbs().maxCoeff(), 1e-30);
  return (a - b).cwiseAbs().maxCoeff() / scale;
}

double RelativeError(const MatrixD& a, const MatrixD& b) {
  return (a - b).norm() / std::max(b.norm(), 1e-300);
}

}  // namespace dion::testing
