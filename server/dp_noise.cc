#include "server/dp_noise.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/privacy/clip.h"

namespace dion {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// A uniform double in (0, 1]: 53 random bits, never 0 (Box-Muller takes its log).
double UniformOpenClosed(std::mt19937_64& engine) {
  return (static_cast<double>(engine() >> 11) + 1.0) * 0x1.0p-53;
}

}  // namespace

absl::Status ValidateDpOptions(const DpOptions& o) {
  if (!(o.noise_multiplier >= 0.0 && std::isfinite(o.noise_multiplier))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dp_noise_multiplier must be >= 0 and finite (0: off), got ", o.noise_multiplier));
  }
  if (!(o.clip >= 0.0 && std::isfinite(o.clip))) {
    return absl::InvalidArgumentError(
        absl::StrCat("dp_clip must be >= 0 and finite, got ", o.clip));
  }
  if (!o.enabled()) return absl::OkStatus();
  if (o.clip == 0.0) {
    return absl::InvalidArgumentError(
        "dp_noise_multiplier > 0 needs dp_clip > 0: the workers' clip norm C scales the noise");
  }
  if (absl::Status s = ValidateSampledGaussian(o.mechanism()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("differential privacy: ", s.message()));
  }
  return absl::OkStatus();
}

absl::Status CheckClipped(const Contribution& c, const DpOptions& options) {
  if (!options.enabled()) return absl::OkStatus();
  const double norm = c.is_low_rank() ? FrobeniusNorm(c.factors()) : FrobeniusNorm(c.gradient());
  if (norm <= options.clip * (1 + 1e-4)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "parameter '", c.parameter, "': contribution ", c.sequence, " of worker '", c.worker_id,
      "' has norm ", norm, ", above the differential-privacy clip ", options.clip,
      " (start the worker with --dp_clip=", options.clip, "); nothing was recorded"));
}

double BatchNoiseStddev(const std::vector<WeightedContribution>& entries, double noise_multiplier,
                        double clip) {
  absl::flat_hash_map<absl::string_view, double> per_worker;
  double largest = 0.0;
  for (const WeightedContribution& e : entries) {
    double& sum = per_worker[e.contribution->worker_id];
    sum += e.weight;
    largest = std::max(largest, sum);
  }
  return noise_multiplier * clip * std::min(1.0, largest);
}

uint64_t DrawNoiseSeed() {
  std::random_device device;
  uint64_t seed = 0;
  while (seed == 0) {
    seed = (static_cast<uint64_t>(device()) << 32) ^ static_cast<uint64_t>(device());
  }
  return seed;
}

void AddGaussianNoise(MatrixRef target, double stddev, uint64_t seed) {
  std::mt19937_64 engine(seed);
  const int64_t rows = target.rows(), cols = target.cols();
  const int64_t count = rows * cols;
  for (int64_t i = 0; i < count; i += 2) {
    // Box-Muller: two independent N(0, 1) from two uniforms.
    const double radius = std::sqrt(-2.0 * std::log(UniformOpenClosed(engine)));
    const double angle = kTwoPi * UniformOpenClosed(engine);
    const int64_t r0 = i % rows, c0 = i / rows;
    target(r0, c0) += static_cast<float>(stddev * radius * std::cos(angle));
    if (i + 1 < count) {
      const int64_t r1 = (i + 1) % rows, c1 = (i + 1) / rows;
      target(r1, c1) += static_cast<float>(stddev * radius * std::sin(angle));
    }
  }
}

}  // namespace dion
