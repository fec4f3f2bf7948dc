// The description of one model parameter: name, shape, which optimizer owns it and with
// which hyper-parameters, and how it is initialised. The wire protocol's parameter table is
// a list of these; validation lives here so every component agrees on what is well formed.
//
// Thread-safety: plain value types.
#ifndef DION_COMMON_PARAM_SPEC_H_
#define DION_COMMON_PARAM_SPEC_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dion.h"
#include "common/elementwise_optimizers.h"
#include "common/matrix.h"
#include "common/muon.h"

namespace dion {

enum class OptimizerKind { kDion, kAdamW, kLion, kMuon };

absl::string_view OptimizerKindName(OptimizerKind kind);
// Parses "dion", "adamw", "lion", "muon".
absl::StatusOr<OptimizerKind> ParseOptimizerKind(absl::string_view name);

struct InitSpec {
  enum class Kind {
    kZeros,   // all zero (biases)
    kNormal,  // N(0, scale^2)
    kKaiming, // N(0, 2 / fan_in), fan_in = cols: the default for ReLU layers
  };
  Kind kind = Kind::kZeros;
  double scale = 1.0;  // stddev for kNormal
  uint64_t seed = 0;   // seed of the parameter's own random stream
};

inline constexpr int kMaxSplitOwners = 1 << 16;

struct ParamSpec {
  std::string name;             // unique within a model, e.g. "fc1.weight"
  std::vector<int64_t> shape;   // 1-D {n} or 2-D {rows, cols}; every dimension >= 1
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  DionConfig dion;              // used when optimizer == kDion
  AdamWConfig adamw;            // used when optimizer == kAdamW
  LionConfig lion;              // used when optimizer == kLion
  MuonConfig muon;              // used when optimizer == kMuon
  InitSpec init;
  // Over how many shards a Dion parameter is split by rows of its tall side (common/layout.h):
  // 0 or 1 whole; k >= 2 over min(k, number of shards). At most kMaxSplitOwners.
  int split_owners = 0;

  // The parameter viewed as a matrix: 2-D shapes as they are, a 1-D shape {n} as 1 x n.
  int64_t rows() const { return shape.size() == 2 ? shape[0] : 1; }
  int64_t cols() const { return shape.empty() ? 0 : shape.back(); }
  int64_t size() const { return rows() * cols(); }
  // Dion's rank for this parameter (0 unless optimizer == kDion).
  int rank() const;
};

// Checks the name, the shape (1-D or 2-D, positive, at most 2^31 elements), that Dion and
// Muon parameters are 2-D, the chosen optimizer's hyper-parameters, and that only Dion
// parameters are split (split_owners in [0, kMaxSplitOwners]). The message names
// the parameter and the offending field.
absl::Status ValidateParamSpec(const ParamSpec& spec);

// Initial value of the parameter from its InitSpec (deterministic in the seed).
Matrix InitialValue(const ParamSpec& spec);

}  // namespace dion

#endif  // DION_COMMON_PARAM_SPEC_H_
