// What the shard announces after each step of a parameter: the new version, a checksum of the
// weights after it, and either the low-rank step itself or the full value.
//
// Thread-safety: plain value types.
#ifndef DION_COMMON_VERSION_UPDATE_H_
#define DION_COMMON_VERSION_UPDATE_H_

#include <cstdint>
#include <string>
#include <variant>

#include "common/matrix.h"
#include "common/row_reduce.h"

namespace dion {

// The Dion step from version - 1 to version, in the algorithm's orientation: a replica at
// version - 1 reproduces it with ApplyLowRankUpdate(X, decay, scale, P, Q, transposed)
// (common/dion.h), i.e. X = decay X - scale P Q^T, or - scale Q P^T when transposed.
struct LowRankStep {
  float decay = 1.0f;  // 1 - lr * weight_decay
  float scale = 0.0f;  // lr * sqrt(m / n) of the original X
  Matrix P;            // tall x r
  Matrix Q;            // short x r
  bool transposed = false;
};

struct VersionUpdate {
  std::string parameter;
  int64_t version = 0;
  uint64_t checksum = 0;  // WeightsChecksum (common/checksum.h) of X at `version`
  // The low-rank step (applied Dion steps) or the full value at `version` (element-wise and
  // Muon steps, and a Dion step that only decayed X).
  std::variant<LowRankStep, Matrix> content;
  // A split parameter's update covers one owner's rows of the tall side: the step's P has
  // only those rows, a value is X's rows (rows >= cols) or X's columns (rows < cols) of the
  // block, and the checksum is the block's. Empty ({0, 0}) for a whole parameter.
  RowBlock rows;

  bool is_low_rank() const { return std::holds_alternative<LowRankStep>(content); }
};

}  // namespace dion

#endif  // DION_COMMON_VERSION_UPDATE_H_
