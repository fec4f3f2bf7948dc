// How much a contribution computed against an old version counts (docs/server.md, "Staleness policies").
//
// tau = current version - base version. Policies: none (w = 1), inverse (w = 1 / (1 + tau),
// Zhang et al. 2016) and exp (w = exp(-tau / tau0)). Any contribution with
// tau > max_staleness is refused (STALE); the worker drops it (docs/protocol.md, Push).
//
// Thread-safety: immutable after construction; safe for concurrent use.
#ifndef DION_SERVER_STALENESS_H_
#define DION_SERVER_STALENESS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dion {

enum class StalenessKind { kNone, kInverse, kExp };

absl::string_view StalenessKindName(StalenessKind kind);
// Parses "none", "inverse", "exp".
absl::StatusOr<StalenessKind> ParseStalenessKind(absl::string_view name);

struct StalenessOptions {
  StalenessKind kind = StalenessKind::kInverse;  // weighting policy
  double tau0 = 4.0;                             // decay constant of `exp` (> 0)
  int64_t max_staleness = 16;                    // refuse tau above this (>= 0)
};

// InvalidArgument naming the field when tau0 <= 0 (or not finite) or max_staleness < 0.
absl::Status ValidateStalenessOptions(const StalenessOptions& options);

class StalenessPolicy {
 public:
  // REQUIRES: ValidateStalenessOptions(options).ok().
  explicit StalenessPolicy(const StalenessOptions& options) : options_(options) {}

  // True when a contribution with this tau must be refused (tau > max_staleness).
  bool Refuses(int64_t tau) const { return tau > options_.max_staleness; }

  // The weight factor w(tau) in (0, 1]. REQUIRES: tau >= 0.
  double Weight(int64_t tau) const;

  const StalenessOptions& options() const { return options_; }

 private:
  StalenessOptions options_;
};

}  // namespace dion

#endif  // DION_SERVER_STALENESS_H_
