#include "common/privacy/clip.h"

#include <algorithm>
#include <cmath>

namespace dion {
namespace {

// The factor that brings `norm` down to `clip`, as a float slightly below the exact ratio so
// float rounding of the scaled matrix cannot leave it above clip; 1 when no scaling is needed.
float ScaleFor(double norm, double clip) {
  if (!(norm > clip)) return 1.0f;
  return static_cast<float>(clip / norm * (1.0 - 1e-6));
}

}  // namespace

double FrobeniusNorm(ConstMatrixRef A) {
  return std::sqrt(A.cast<double>().squaredNorm());
}

double FrobeniusNorm(const LowRankFactors& f) {
  const Eigen::MatrixXd P = f.P.cast<double>(), R = f.R.cast<double>();
  const Eigen::MatrixXd PtP = P.transpose() * P, RtR = R.transpose() * R;
  return std::sqrt(std::max(0.0, PtP.cwiseProduct(RtR).sum()));
}

double ClipToNorm(MatrixRef A, double clip) {
  const double norm = FrobeniusNorm(A);
  const float scale = ScaleFor(norm, clip);
  if (scale != 1.0f) A *= scale;
  return norm;
}

double ClipToNorm(LowRankFactors& f, double clip) {
  const double norm = FrobeniusNorm(f);
  const float scale = ScaleFor(norm, clip);
  if (scale != 1.0f) f.R *= scale;
  return norm;
}

}  // namespace dion
