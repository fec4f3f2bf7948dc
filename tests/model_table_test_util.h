// Helpers of the tests that build a ModelTable or parameter specs by hand (checkpointer_test,
// parameter_store_test, gradient_accumulator_test, push_rank_test).
#ifndef DION_TESTS_MODEL_TABLE_TEST_UTIL_H_
#define DION_TESTS_MODEL_TABLE_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/model_table.h"
#include "common/param_spec.h"

namespace dion::testing {

// A spec with every default but its name, shape and optimizer.
inline ParamSpec Spec(const std::string& name, std::vector<int64_t> shape, OptimizerKind kind) {
  ParamSpec spec;
  spec.name = name;
  spec.shape = std::move(shape);
  spec.optimizer = kind;
  return spec;
}

// A parameter with Kaiming init from `seed` and Dion's lr at 0.05, large enough that an update
// is well above X's rounding (the other optimizers keep their defaults).
inline ParameterDefinition Definition(const std::string& name, std::vector<int64_t> shape,
                                      OptimizerKind optimizer, uint64_t seed) {
  ParameterDefinition d;
  d.spec.name = name;
  d.spec.shape = std::move(shape);
  d.spec.optimizer = optimizer;
  d.spec.init.kind = InitSpec::Kind::kKaiming;
  d.spec.init.seed = seed;
  d.spec.dion.lr = 0.05;
  return d;
}

// Tall and wide Dion matrices (the wide one runs on X^T), and one parameter per other
// optimizer.
inline ModelTable EveryOptimizerTable(const std::string& model_name) {
  ModelTable table;
  table.model_name = model_name;
  table.parameters = {Definition("tall", {48, 32}, OptimizerKind::kDion, 1),
                      Definition("wide", {24, 40}, OptimizerKind::kDion, 2),
                      Definition("bias", {32}, OptimizerKind::kAdamW, 3),
                      Definition("scale", {16}, OptimizerKind::kLion, 4),
                      Definition("muon", {16, 24}, OptimizerKind::kMuon, 5)};
  return table;
}

}  // namespace dion::testing

#endif  // DION_TESTS_MODEL_TABLE_TEST_UTIL_H_
