// The shard's half of the differentially private mode (docs/privacy.md, "Noise"): Gaussian
// noise on each batch's aggregate, scaled to the batch's staleness and sample weights.
//
// A batch's aggregate is the weighted mean sum_i w_i g_i (weights normalised to sum 1, each
// contribution g_i clipped to ||g_i||_F <= C by its worker). The unit of privacy is one worker
// in one batch: its contributions move the aggregate by at most C * W_max, W_max being the
// largest sum of the weights of one worker's contributions in the batch (<= 1). The noise is
// N(0, (sigma C W_max)^2) per entry: the Gaussian mechanism with noise multiplier sigma on
// that sensitivity. Sample counts, staleness and thus the weights are treated as public.
//
// The batcher fixes a batch's noise when it closes (BatcherOptions::dp): a seed drawn from
// std::random_device and the stddev below, both logged in the write-ahead log with the batch,
// so replaying the log reproduces the step bit for bit.
//
// Thread-safety: pure functions, safe for concurrent use.
#ifndef DION_SERVER_DP_NOISE_H_
#define DION_SERVER_DP_NOISE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/contribution.h"
#include "common/matrix.h"
#include "common/privacy/rdp_accountant.h"

namespace dion {

struct DpOptions {
  double noise_multiplier = 0.0;  // sigma; 0: the mode is off (no noise, no accounting)
  double clip = 0.0;              // C, the workers' --dp_clip; > 0 when sigma > 0
  double delta = 1e-5;            // of the reported (epsilon, delta)
  // q of the accountant: the probability that a given worker takes part in a given batch
  // (docs/privacy.md, "Accounting"). 1 assumes every worker is in every batch.
  double sampling_rate = 1.0;

  bool enabled() const { return noise_multiplier > 0.0; }
  SampledGaussian mechanism() const { return {sampling_rate, noise_multiplier, delta}; }
};

// InvalidArgument naming the field; DP off (sigma 0) with any clip is valid.
absl::Status ValidateDpOptions(const DpOptions& options);

// With the mode on: InvalidArgument when the contribution's payload has Frobenius norm above
// the clip C (with a relative float tolerance of 1e-4): a worker that does not clip to C
// would void the sensitivity bound. OK when the mode is off.
absl::Status CheckClipped(const Contribution& contribution, const DpOptions& options);

// sigma * C * W_max of the file comment. REQUIRES: entries non-empty.
double BatchNoiseStddev(const std::vector<WeightedContribution>& entries, double noise_multiplier,
                        double clip);

// A fresh batch seed from std::random_device (never 0: 0 means "no noise" in a Batch).
uint64_t DrawNoiseSeed();

// Adds N(0, stddev^2) to every entry of `target`, column by column, from std::mt19937_64
// seeded with `seed` and the Box-Muller transform (not std::normal_distribution, whose
// algorithm the standard leaves open), so the same seed gives the same noise.
void AddGaussianNoise(MatrixRef target, double stddev, uint64_t seed);

}  // namespace dion

#endif  // DION_SERVER_DP_NOISE_H_
