// The range of a worker's lookahead (TrainerOptions::lookahead, dion-worker --lookahead, dion
// local --lookahead): how many versions ahead along the replica's last change a worker takes
// its gradients (docs/algorithm.md, "Staleness compensation on the workers").
//
// Header-only on purpose: `dion local` checks its flag with it and must not link the trainer
// (which brings OpenBLAS; worker/CMakeLists.txt says why).
#ifndef DION_WORKER_LOOKAHEAD_H_
#define DION_WORKER_LOOKAHEAD_H_

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dion {

// The largest lookahead accepted: far beyond any useful value (8 is the default), small
// enough that the extrapolation stays a float.
inline constexpr double kMaxLookahead = 100;

// OK when `lookahead` is a number of versions in [0, kMaxLookahead]; otherwise
// InvalidArgument naming the value and the range.
inline absl::Status ValidateLookahead(double lookahead) {
  if (lookahead >= 0 && lookahead <= kMaxLookahead) return absl::OkStatus();  // false for NaN
  return absl::InvalidArgumentError(absl::StrCat("lookahead=", lookahead,
                                                 ": expected a number of versions in [0, ",
                                                 kMaxLookahead, "] (0: off)"));
}

}  // namespace dion

#endif  // DION_WORKER_LOOKAHEAD_H_
