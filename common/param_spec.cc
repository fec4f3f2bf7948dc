#include "common/param_spec.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/rng.h"

namespace dion {

absl::string_view OptimizerKindName(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kDion: return "dion";
    case OptimizerKind::kAdamW: return "adamw";
    case OptimizerKind::kLion: return "lion";
    case OptimizerKind::kMuon: return "muon";
  }
  return "unknown";
}

absl::StatusOr<OptimizerKind> ParseOptimizerKind(absl::string_view name) {
  for (OptimizerKind kind : {OptimizerKind::kDion, OptimizerKind::kAdamW, OptimizerKind::kLion,
                             OptimizerKind::kMuon}) {
    if (name == OptimizerKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown optimizer '", name,
                                                 "': expected one of dion, adamw, lion, muon"));
}

int ParamSpec::rank() const {
  if (optimizer != OptimizerKind::kDion) return 0;
  return DionRank(rows(), cols(), dion.rank_fraction, dion.rank_multiple_of);
}

absl::Status ValidateParamSpec(const ParamSpec& spec) {
  const auto error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("parameter '", spec.name, "': ", what));
  };
  if (spec.name.empty()) return absl::InvalidArgumentError("parameter name must not be empty");
  if (spec.shape.empty() || spec.shape.size() > 2) {
    return error(absl::StrCat("shape must have 1 or 2 dimensions, got ", spec.shape.size()));
  }
  for (int64_t d : spec.shape) {
    if (d < 1) {
      return error(absl::StrCat("every dimension must be >= 1, got shape [",
                                absl::StrJoin(spec.shape, ", "), "]"));
    }
  }
  if (static_cast<double>(spec.rows()) * static_cast<double>(spec.cols()) > 2147483647.0) {
    return error("more than 2^31 - 1 elements");
  }
  const bool matrix_only =
      spec.optimizer == OptimizerKind::kDion || spec.optimizer == OptimizerKind::kMuon;
  if (matrix_only && spec.shape.size() != 2) {
    return error(absl::StrCat(OptimizerKindName(spec.optimizer),
                              " needs a 2-D parameter; use adamw or lion for 1-D ones"));
  }
  absl::Status status;
  switch (spec.optimizer) {
    case OptimizerKind::kDion: status = ValidateDionConfig(spec.dion); break;
    case OptimizerKind::kAdamW: status = ValidateAdamWConfig(spec.adamw); break;
    case OptimizerKind::kLion: status = ValidateLionConfig(spec.lion); break;
    case OptimizerKind::kMuon: status = ValidateMuonConfig(spec.muon); break;
  }
  if (!status.ok()) return error(status.message());
  if (spec.split_owners < 0 || spec.split_owners > kMaxSplitOwners) {
    return error(absl::StrCat("split_owners must be in [0, ", kMaxSplitOwners, "], got ",
                              spec.split_owners));
  }
  if (spec.split_owners >= 2 && spec.optimizer != OptimizerKind::kDion) {
    return error(absl::StrCat("split_owners ", spec.split_owners, " is only for Dion parameters, ",
                              "this one uses ", OptimizerKindName(spec.optimizer)));
  }
  if (spec.init.kind == InitSpec::Kind::kNormal &&
      !(std::isfinite(spec.init.scale) && spec.init.scale >= 0)) {
    return error("init scale must be finite and >= 0");
  }
  return absl::OkStatus();
}

Matrix InitialValue(const ParamSpec& spec) {
  Matrix X = Matrix::Zero(spec.rows(), spec.cols());
  Rng rng(spec.init.seed);
  switch (spec.init.kind) {
    case InitSpec::Kind::kZeros: break;
    case InitSpec::Kind::kNormal: rng.FillNormal(X, spec.init.scale); break;
    case InitSpec::Kind::kKaiming:
      rng.FillNormal(X, std::sqrt(2.0 / static_cast<double>(spec.cols())));
      break;
  }
  return X;
}

}  // namespace dion
