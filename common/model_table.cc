#include "common/model_table.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/checksum.h"

namespace dion {
namespace {

// The hyper-parameters of the spec's optimizer as (field, value) pairs, so two specs compare
// field by field with one loop and the message can name the field.
std::vector<std::pair<std::string, double>> HyperparameterFields(const ParamSpec& spec) {
  switch (spec.optimizer) {
    case OptimizerKind::kDion: {
      const DionConfig& c = spec.dion;
      return {{"dion.lr", c.lr},
              {"dion.mu", c.mu},
              {"dion.weight_decay", c.weight_decay},
              {"dion.eps", c.eps},
              {"dion.power_iters", c.power_iters},
              {"dion.rank_fraction", c.rank_fraction},
              {"dion.rank_multiple_of", c.rank_multiple_of},
              {"dion.ortho_method", static_cast<double>(c.ortho.method)},
              {"dion.ortho_oversample", c.ortho.oversample}};
    }
    case OptimizerKind::kAdamW: {
      const AdamWConfig& c = spec.adamw;
      return {{"adamw.lr", c.lr},
              {"adamw.beta1", c.beta1},
              {"adamw.beta2", c.beta2},
              {"adamw.eps", c.eps},
              {"adamw.weight_decay", c.weight_decay}};
    }
    case OptimizerKind::kLion: {
      const LionConfig& c = spec.lion;
      return {{"lion.lr", c.lr},
              {"lion.beta1", c.beta1},
              {"lion.beta2", c.beta2},
              {"lion.weight_decay", c.weight_decay}};
    }
    case OptimizerKind::kMuon: {
      const MuonConfig& c = spec.muon;
      return {{"muon.lr", c.lr},
              {"muon.mu", c.mu},
              {"muon.nesterov", c.nesterov ? 1.0 : 0.0},
              {"muon.weight_decay", c.weight_decay},
              {"muon.ns_steps", c.ns_steps}};
    }
  }
  return {};
}

absl::Status Mismatch(absl::string_view parameter, absl::string_view field,
                      absl::string_view registered, absl::string_view offered) {
  return absl::FailedPreconditionError(absl::StrCat(
      "a different model is registered: parameter '", parameter, "' field ", field,
      " is ", registered, " in the registered table but ", offered, " in this request"));
}

absl::Status CompareParameters(const ParamSpec& a, const std::optional<uint64_t>& checksum_a,
                               const ParamSpec& b, const std::optional<uint64_t>& checksum_b) {
  if (a.shape != b.shape) {
    return Mismatch(a.name, "shape", absl::StrCat("[", absl::StrJoin(a.shape, ", "), "]"),
                    absl::StrCat("[", absl::StrJoin(b.shape, ", "), "]"));
  }
  if (a.optimizer != b.optimizer) {
    return Mismatch(a.name, "optimizer", OptimizerKindName(a.optimizer),
                    OptimizerKindName(b.optimizer));
  }
  const auto fields_a = HyperparameterFields(a);
  const auto fields_b = HyperparameterFields(b);
  for (size_t i = 0; i < fields_a.size(); ++i) {
    if (fields_a[i].second != fields_b[i].second) {
      return Mismatch(a.name, fields_a[i].first, absl::StrFormat("%.17g", fields_a[i].second),
                      absl::StrFormat("%.17g", fields_b[i].second));
    }
  }
  // A 64-bit seed does not survive the trip through double, so it is compared on its own.
  if (a.optimizer == OptimizerKind::kDion && a.dion.ortho.seed != b.dion.ortho.seed) {
    return Mismatch(a.name, "dion.ortho_seed", absl::StrCat(a.dion.ortho.seed),
                    absl::StrCat(b.dion.ortho.seed));
  }
  if (a.init.kind != b.init.kind) {
    return Mismatch(a.name, "init.kind", absl::StrCat(static_cast<int>(a.init.kind)),
                    absl::StrCat(static_cast<int>(b.init.kind)));
  }
  if (a.init.scale != b.init.scale) {
    return Mismatch(a.name, "init.scale", absl::StrFormat("%.17g", a.init.scale),
                    absl::StrFormat("%.17g", b.init.scale));
  }
  // 0 and 1 both keep the parameter whole.
  if (std::max(a.split_owners, 1) != std::max(b.split_owners, 1)) {
    return Mismatch(a.name, "split_owners", absl::StrCat(a.split_owners),
                    absl::StrCat(b.split_owners));
  }
  if (a.init.seed != b.init.seed) {
    return Mismatch(a.name, "seed", absl::StrCat(a.init.seed), absl::StrCat(b.init.seed));
  }
  if (checksum_a.has_value() != checksum_b.has_value()) {
    return Mismatch(a.name, "initial_value", checksum_a ? "given" : "absent",
                    checksum_b ? "given" : "absent");
  }
  if (checksum_a && *checksum_a != *checksum_b) {
    return Mismatch(a.name, "initial_value", absl::StrCat("checksum ", *checksum_a),
                    absl::StrCat("checksum ", *checksum_b));
  }
  return absl::OkStatus();
}

}  // namespace

ModelFingerprint Fingerprint(const ModelTable& table) {
  ModelFingerprint fingerprint;
  fingerprint.model_name = table.model_name;
  for (const ParameterDefinition& p : table.parameters) {
    fingerprint.specs.push_back(p.spec);
    fingerprint.initial_value_checksums.push_back(
        p.initial_value ? std::optional<uint64_t>(WeightsChecksum(*p.initial_value))
                        : std::nullopt);
  }
  return fingerprint;
}

std::vector<ParamSpec> ModelTable::specs() const {
  std::vector<ParamSpec> specs;
  specs.reserve(parameters.size());
  for (const ParameterDefinition& p : parameters) specs.push_back(p.spec);
  return specs;
}

absl::Status ValidateModelTable(const ModelTable& table) {
  if (table.parameters.empty()) {
    return absl::InvalidArgumentError("the model has no parameters");
  }
  absl::flat_hash_set<std::string> names;
  for (const ParameterDefinition& p : table.parameters) {
    if (absl::Status s = ValidateParamSpec(p.spec); !s.ok()) return s;
    if (!names.insert(p.spec.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter '", p.spec.name, "' appears twice in the table"));
    }
    if (p.initial_value) {
      const Matrix& v = *p.initial_value;
      if (v.rows() != p.spec.rows() || v.cols() != p.spec.cols()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "parameter '", p.spec.name, "': initial value is ", v.rows(), " x ", v.cols(),
            ", expected ", p.spec.rows(), " x ", p.spec.cols()));
      }
      if (!v.allFinite()) {
        return absl::InvalidArgumentError(
            absl::StrCat("parameter '", p.spec.name, "': initial value has NaN or Inf"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CompareModelTables(const ModelFingerprint& registered,
                                const ModelFingerprint& offered) {
  if (registered.model_name != offered.model_name) {
    return absl::FailedPreconditionError(
        absl::StrCat("a different model is registered: model name is '", registered.model_name,
                     "', this request has '", offered.model_name, "'"));
  }
  absl::flat_hash_map<absl::string_view, size_t> by_name;
  for (size_t i = 0; i < registered.specs.size(); ++i) by_name[registered.specs[i].name] = i;
  for (size_t i = 0; i < offered.specs.size(); ++i) {
    const ParamSpec& spec = offered.specs[i];
    auto it = by_name.find(spec.name);
    if (it == by_name.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("a different model is registered: parameter '", spec.name,
                       "' of this request is not in the registered table"));
    }
    if (absl::Status s = CompareParameters(registered.specs[it->second],
                                           registered.initial_value_checksums[it->second], spec,
                                           offered.initial_value_checksums[i]);
        !s.ok()) {
      return s;
    }
  }
  if (registered.specs.size() != offered.specs.size()) {
    // Every offered name is registered, so some registered one is missing from the request.
    absl::flat_hash_set<absl::string_view> offered_names;
    for (const ParamSpec& spec : offered.specs) offered_names.insert(spec.name);
    for (const ParamSpec& spec : registered.specs) {
      if (!offered_names.contains(spec.name)) {
        return absl::FailedPreconditionError(
            absl::StrCat("a different model is registered: parameter '", spec.name,
                         "' of the registered table is missing from this request"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace dion
