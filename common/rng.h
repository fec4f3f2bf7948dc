// A small, seeded, platform-independent random number generator.
//
// dion-ps needs identical random matrices on every shard and worker given the same seed
// (the initial Q of a Dion parameter, the sketch of randomized Cholesky QR, parameter
// initialisation), independent of the C++ standard library's distribution algorithms.
// SplitMix64 for the bits, Box-Muller for normals.
//
// Thread-safety: a Rng object is not safe for concurrent use; make one per thread.
#ifndef DION_COMMON_RNG_H_
#define DION_COMMON_RNG_H_

#include <cstdint>

#include "common/matrix.h"

namespace dion {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  // Uniform 64 random bits.
  uint64_t NextU64();
  // Uniform in [0, 1).
  double Uniform();
  // Standard normal N(0, 1).
  double Normal();

  // Fills M with independent N(0, stddev^2) samples, row by row.
  void FillNormal(MatrixRef M, double stddev = 1.0);

 private:
  uint64_t state_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// Derives an independent stream seed from a base seed and up to two integers (e.g. a
// parameter index and a step), so that streams never overlap by accident.
uint64_t MixSeed(uint64_t seed, uint64_t a, uint64_t b = 0);

}  // namespace dion

#endif  // DION_COMMON_RNG_H_
