// Helpers of the tests that build a ModelTable by hand (checkpointer_test, parameter_store_test).
#ifndef DION_TESTS_MODEL_TABLE_TEST_UTIL_H_
#define DION_TESTS_MODEL_TABLE_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/model_table.h"
#include "common/param_spec.h"

namespace dion::testing {

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

}  // namespace dion::testing

#endif  // DION_TESTS_MODEL_TABLE_TEST_UTIL_H_
