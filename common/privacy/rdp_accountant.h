// Privacy accounting of the differentially private mode (docs/privacy.md): the Rényi
// differential privacy (RDP) of the sampled Gaussian mechanism (Mironov, Talwar and Zhang
// 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism", Section 3.3), composed
// over steps and converted to (epsilon, delta).
//
// One step: a sum of per-member terms of L2 norm <= C, each member present independently with
// probability q, plus N(0, sigma^2 C^2) noise per coordinate. At an integer order alpha >= 2
// its RDP is exactly
//   eps_step(alpha) = log A_alpha / (alpha - 1),
//   A_alpha = sum_{k=0..alpha} binom(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2)).
// T steps compose to T * eps_step(alpha), and (Mironov 2017, Proposition 3)
//   epsilon(delta) = min over alpha of T * eps_step(alpha) + log(1 / delta) / (alpha - 1).
// Only integer orders are used (kRdpOrders); a fractional order could only lower epsilon a
// little, so the reported epsilon is an upper bound of the one over all orders >= 2.
//
// Thread-safety: pure functions, safe for concurrent use. No OpenBLAS, no gRPC: `dion` links it.
#ifndef DION_COMMON_PRIVACY_RDP_ACCOUNTANT_H_
#define DION_COMMON_PRIVACY_RDP_ACCOUNTANT_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace dion {

// The orders alpha the accountant minimises over: 2..64, then 80, 96, 128, 256, 512 (large
// orders give the bound when there are few steps with much noise).
const std::vector<int>& RdpOrders();

// What the accountant needs.
struct SampledGaussian {
  double sampling_rate = 1.0;     // q in (0, 1]
  double noise_multiplier = 0.0;  // sigma > 0 (noise std over the clip norm C)
  double delta = 1e-5;            // in (0, 1)
};

// InvalidArgument naming the field and its range.
absl::Status ValidateSampledGaussian(const SampledGaussian& mechanism);

// eps_step(alpha) of one step. REQUIRES: a valid mechanism, alpha >= 2.
double SampledGaussianRdp(double sampling_rate, double noise_multiplier, int alpha);

struct PrivacySpent {
  double epsilon = 0.0;  // 0 for 0 steps; +infinity when no order gives a finite bound
  int order = 0;         // the alpha that gave it (0 for 0 steps)
};

// (epsilon, delta) after `steps` >= 0 steps. REQUIRES: a valid mechanism.
PrivacySpent EpsilonAfter(const SampledGaussian& mechanism, int64_t steps);

// Steps of one sampled Gaussian mechanism, a part of a composition (e.g. one shard's).
struct MechanismSteps {
  double sampling_rate = 1.0;
  double noise_multiplier = 0.0;
  int64_t steps = 0;
};
// (epsilon, delta) of all the parts together: their RDP adds up order by order before the
// conversion. REQUIRES: each part's q and sigma valid, delta in (0, 1).
PrivacySpent EpsilonOfComposition(const std::vector<MechanismSteps>& parts, double delta);

}  // namespace dion

#endif  // DION_COMMON_PRIVACY_RDP_ACCOUNTANT_H_
