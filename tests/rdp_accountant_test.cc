// The accountant against an independent reference: the Rényi divergence of the sampled
// Gaussian mechanism integrated numerically in double (trapezoid rule on a fine grid), not the
// binomial expansion the accountant uses.
#include "common/privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace dion {
namespace {

// log of the normal density N(mean, sigma^2) at z.
double LogNormalPdf(double z, double mean, double sigma) {
  const double d = (z - mean) / sigma;
  return -0.5 * d * d - std::log(sigma * std::sqrt(2.0 * M_PI));
}

// RDP at order alpha by integrating mu0^(1-alpha) ((1-q) mu0 + q mu1)^alpha, mu0 = N(0,
// sigma^2), mu1 = N(1, sigma^2), over z in [-12 sigma - 1, alpha + 12 sigma + 1] (the
// integrand's mass sits between 0 and alpha) with step sigma / 200, in log space.
double IntegratedRdp(double q, double sigma, int alpha) {
  const double lo = -12.0 * sigma - 1.0, hi = alpha + 12.0 * sigma + 1.0;
  const double h = sigma / 200.0;
  const int64_t n = static_cast<int64_t>(std::ceil((hi - lo) / h));
  std::vector<double> log_f(n + 1);
  for (int64_t i = 0; i <= n; ++i) {
    const double z = lo + i * h;
    const double l0 = LogNormalPdf(z, 0.0, sigma), l1 = LogNormalPdf(z, 1.0, sigma);
    const double hi_l = std::max(l0, l1);
    const double log_mix =
        hi_l + std::log((1.0 - q) * std::exp(l0 - hi_l) + q * std::exp(l1 - hi_l));
    log_f[i] = (1.0 - alpha) * l0 + alpha * log_mix;
  }
  const double top = *std::max_element(log_f.begin(), log_f.end());
  double sum = 0.0;
  for (int64_t i = 0; i <= n; ++i) {
    sum += (i == 0 || i == n ? 0.5 : 1.0) * std::exp(log_f[i] - top);
  }
  return (top + std::log(sum * h)) / (alpha - 1);
}

// epsilon from the integrated RDP: min over the same orders of T rdp + log(1/delta)/(alpha-1).
double ReferenceEpsilon(double q, double sigma, int64_t steps, double delta) {
  double best = std::numeric_limits<double>::infinity();
  for (int alpha : RdpOrders()) {
    best = std::min(best, steps * IntegratedRdp(q, sigma, alpha) +
                              std::log(1.0 / delta) / (alpha - 1));
  }
  return best;
}

struct Point {
  double q, sigma;
  int64_t steps;
};

TEST(RdpAccountantTest, EpsilonMatchesNumericalIntegrationWithinOnePercent) {
  for (const Point& p : {Point{0.01, 1.1, 10000}, Point{0.1, 2.0, 500}, Point{0.5, 1.0, 50},
                         Point{1.0, 0.8, 10}, Point{0.05, 0.7, 200}}) {
    const SampledGaussian m{p.q, p.sigma, 1e-5};
    ASSERT_TRUE(ValidateSampledGaussian(m).ok());
    const double reference = ReferenceEpsilon(p.q, p.sigma, p.steps, 1e-5);
    const PrivacySpent spent = EpsilonAfter(m, p.steps);
    EXPECT_NEAR(spent.epsilon, reference, 0.01 * reference)
        << "q=" << p.q << " sigma=" << p.sigma << " steps=" << p.steps;
    EXPECT_GE(spent.order, 2);
  }
}

TEST(RdpAccountantTest, PerOrderRdpMatchesIntegration) {
  for (int alpha : {2, 3, 8, 32, 64}) {
    const double reference = IntegratedRdp(0.02, 0.9, alpha);
    EXPECT_NEAR(SampledGaussianRdp(0.02, 0.9, alpha), reference, 1e-6 + 1e-4 * reference)
        << "alpha=" << alpha;
  }
}

TEST(RdpAccountantTest, CompositionOfTwoShardsMatchesIntegration) {
  // Two shards with their own settings: the RDP of both adds up before the conversion.
  double reference = std::numeric_limits<double>::infinity();
  for (int alpha : RdpOrders()) {
    reference = std::min(reference, 300 * IntegratedRdp(0.05, 1.0, alpha) +
                                        40 * IntegratedRdp(0.2, 2.0, alpha) +
                                        std::log(1e5) / (alpha - 1));
  }
  const PrivacySpent spent = EpsilonOfComposition({{0.05, 1.0, 300}, {0.2, 2.0, 40}}, 1e-5);
  EXPECT_NEAR(spent.epsilon, reference, 0.01 * reference);
  // The same settings on two shards are one mechanism over all their steps.
  const double one = EpsilonAfter({0.1, 1.0, 1e-5}, 100).epsilon;
  EXPECT_NEAR(EpsilonOfComposition({{0.1, 1.0, 30}, {0.1, 1.0, 70}}, 1e-5).epsilon, one,
              1e-12 * one);
}

TEST(RdpAccountantTest, FullSamplingIsTheGaussianMechanism) {
  // q = 1: RDP of N(0, sigma^2) vs N(1, sigma^2) is alpha / (2 sigma^2).
  EXPECT_DOUBLE_EQ(SampledGaussianRdp(1.0, 2.0, 10), 10.0 / 8.0);
}

TEST(RdpAccountantTest, EpsilonGrowsWithStepsAndShrinksWithNoise) {
  const SampledGaussian m{0.1, 1.0, 1e-5};
  EXPECT_EQ(EpsilonAfter(m, 0).epsilon, 0.0);
  EXPECT_LT(EpsilonAfter(m, 10).epsilon, EpsilonAfter(m, 100).epsilon);
  EXPECT_GT(EpsilonAfter(m, 100).epsilon, EpsilonAfter({0.1, 2.0, 1e-5}, 100).epsilon);
  EXPECT_GT(EpsilonAfter(m, 100).epsilon, EpsilonAfter({0.01, 1.0, 1e-5}, 100).epsilon);
}

TEST(RdpAccountantTest, RefusesOutOfRangeSettings) {
  EXPECT_FALSE(ValidateSampledGaussian({0.0, 1.0, 1e-5}).ok());
  EXPECT_FALSE(ValidateSampledGaussian({1.5, 1.0, 1e-5}).ok());
  EXPECT_FALSE(ValidateSampledGaussian({0.5, 0.0, 1e-5}).ok());
  EXPECT_FALSE(ValidateSampledGaussian({0.5, 1.0, 0.0}).ok());
  EXPECT_FALSE(ValidateSampledGaussian({0.5, 1.0, 1.0}).ok());
  EXPECT_FALSE(ValidateSampledGaussian({std::nan(""), 1.0, 1e-5}).ok());
}

}  // namespace
}  // namespace dion
