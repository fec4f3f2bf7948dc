#include "common/privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace dion {
namespace {

// log(exp(a) + exp(b)) without overflow; a or b may be -infinity.
double LogAdd(double a, double b) {
  if (a == -std::numeric_limits<double>::infinity()) return b;
  if (b == -std::numeric_limits<double>::infinity()) return a;
  const double hi = std::max(a, b), lo = std::min(a, b);
  return hi + std::log1p(std::exp(lo - hi));
}

// log Gamma(x) without std::lgamma's write of the global signgam (a data race between the
// shards' compute threads); the sign is positive for the x >= 1 used here.
double LogGamma(double x) {
  int sign = 0;
  return ::lgamma_r(x, &sign);
}

// log binom(n, k) through log Gamma: exact enough (relative 1e-15) for n <= 512.
double LogBinomial(int n, int k) {
  return LogGamma(n + 1.0) - LogGamma(k + 1.0) - LogGamma(n - k + 1.0);
}

}  // namespace

const std::vector<int>& RdpOrders() {
  static const std::vector<int>* const orders = [] {
    auto* o = new std::vector<int>;
    for (int alpha = 2; alpha <= 64; ++alpha) o->push_back(alpha);
    for (int alpha : {80, 96, 128, 256, 512}) o->push_back(alpha);
    return o;
  }();
  return *orders;
}

absl::Status ValidateSampledGaussian(const SampledGaussian& m) {
  if (!(m.sampling_rate > 0.0 && m.sampling_rate <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the sampling rate q must be in (0, 1], got ", m.sampling_rate));
  }
  if (!(m.noise_multiplier > 0.0 && std::isfinite(m.noise_multiplier))) {
    return absl::InvalidArgumentError(
        absl::StrCat("the noise multiplier sigma must be > 0 and finite, got ",
                     m.noise_multiplier));
  }
  if (!(m.delta > 0.0 && m.delta < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("delta must be in (0, 1), got ", m.delta));
  }
  return absl::OkStatus();
}

double SampledGaussianRdp(double q, double sigma, int alpha) {
  if (q >= 1.0) return alpha / (2.0 * sigma * sigma);  // the Gaussian mechanism itself
  const double log_q = std::log(q), log_1mq = std::log1p(-q);
  double log_a = -std::numeric_limits<double>::infinity();
  for (int k = 0; k <= alpha; ++k) {
    const double term = LogBinomial(alpha, k) + (alpha - k) * log_1mq + k * log_q +
                        (static_cast<double>(k) * k - k) / (2.0 * sigma * sigma);
    log_a = LogAdd(log_a, term);
  }
  return std::max(0.0, log_a) / (alpha - 1);  // A_alpha >= 1; rounding must not go below
}

PrivacySpent EpsilonAfter(const SampledGaussian& m, int64_t steps) {
  return EpsilonOfComposition({{m.sampling_rate, m.noise_multiplier, steps}}, m.delta);
}

PrivacySpent EpsilonOfComposition(const std::vector<MechanismSteps>& parts, double delta) {
  int64_t total_steps = 0;
  for (const MechanismSteps& part : parts) total_steps += std::max<int64_t>(0, part.steps);
  if (total_steps == 0) return {};
  PrivacySpent best{std::numeric_limits<double>::infinity(), 0};
  const double log_inv_delta = std::log(1.0 / delta);
  for (int alpha : RdpOrders()) {
    double rdp = 0.0;
    for (const MechanismSteps& part : parts) {
      if (part.steps <= 0) continue;
      rdp += static_cast<double>(part.steps) *
             SampledGaussianRdp(part.sampling_rate, part.noise_multiplier, alpha);
    }
    const double epsilon = rdp + log_inv_delta / (alpha - 1);
    if (epsilon < best.epsilon) best = {epsilon, alpha};
  }
  return best;
}

}  // namespace dion
