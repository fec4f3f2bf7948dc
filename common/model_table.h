// A model as registered with a shard: its name and the full parameter table (every shard gets
// the whole table and keeps the parameters the layout gives it).
//
// Registration is idempotent: registering a table equal to the registered one succeeds; any
// difference is refused, and CompareModelTables names the first one. A shard does not keep
// the initial values of the whole model to decide that: it keeps a ModelFingerprint, the specs
// plus a checksum of each explicit initial value.
//
// Thread-safety: plain value types and pure functions.
#ifndef DION_COMMON_MODEL_TABLE_H_
#define DION_COMMON_MODEL_TABLE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/matrix.h"
#include "common/param_spec.h"

namespace dion {

struct ParameterDefinition {
  ParamSpec spec;
  // The exact initial value (rows() x cols()); when absent the value comes from spec.init.
  std::optional<Matrix> initial_value;
};

struct ModelTable {
  std::string model_name;
  std::vector<ParameterDefinition> parameters;

  std::vector<ParamSpec> specs() const;
};

struct ModelFingerprint {
  std::string model_name;
  std::vector<ParamSpec> specs;  // in table order
  // WeightsChecksum (common/checksum.h) of each explicit initial value, nullopt for init specs.
  std::vector<std::optional<uint64_t>> initial_value_checksums;
};

ModelFingerprint Fingerprint(const ModelTable& table);

// Every spec valid (ValidateParamSpec), names unique, at least one parameter, initial values of
// the right shape and finite. InvalidArgument naming the parameter and the field.
absl::Status ValidateModelTable(const ModelTable& table);

// OkStatus when `offered` equals `registered` (same model name, same set of parameters by name
// with equal shape, optimizer, that optimizer's hyper-parameters, init spec and initial-value
// checksum; the listing order does not matter). Otherwise FailedPrecondition naming the first
// mismatch in the order of `offered`, with both values.
absl::Status CompareModelTables(const ModelFingerprint& registered,
                                const ModelFingerprint& offered);

}  // namespace dion

#endif  // DION_COMMON_MODEL_TABLE_H_
