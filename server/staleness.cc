#include "server/staleness.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace dion {

absl::string_view StalenessKindName(StalenessKind kind) {
  switch (kind) {
    case StalenessKind::kNone: return "none";
    case StalenessKind::kInverse: return "inverse";
    case StalenessKind::kExp: return "exp";
  }
  return "unknown";
}

absl::StatusOr<StalenessKind> ParseStalenessKind(absl::string_view name) {
  for (StalenessKind kind : {StalenessKind::kNone, StalenessKind::kInverse, StalenessKind::kExp}) {
    if (name == StalenessKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown staleness policy '", name,
                                                 "': expected one of none, inverse, exp"));
}

absl::Status ValidateStalenessOptions(const StalenessOptions& options) {
  if (!(std::isfinite(options.tau0) && options.tau0 > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("staleness tau0 must be finite and > 0, got ", options.tau0));
  }
  if (options.max_staleness < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_staleness must be >= 0, got ", options.max_staleness));
  }
  return absl::OkStatus();
}

double StalenessPolicy::Weight(int64_t tau) const {
  const double t = static_cast<double>(tau);
  switch (options_.kind) {
    case StalenessKind::kNone: return 1.0;
    case StalenessKind::kInverse: return 1.0 / (1.0 + t);
    case StalenessKind::kExp: return std::exp(-t / options_.tau0);
  }
  return 1.0;
}

}  // namespace dion
