// Parameter specs: validation names the parameter and the field; initial values are
// deterministic in the seed.
#include "common/param_spec.h"

#include <gtest/gtest.h>

#include <cmath>

namespace dion {
namespace {

ParamSpec Matrix2D(OptimizerKind kind) {
  ParamSpec spec;
  spec.name = "fc1.weight";
  spec.shape = {256, 784};
  spec.optimizer = kind;
  spec.init.kind = InitSpec::Kind::kKaiming;
  spec.init.seed = 11;
  return spec;
}

TEST(ParamSpec, AcceptsWellFormedSpecsOfEveryKind) {
  for (OptimizerKind kind : {OptimizerKind::kDion, OptimizerKind::kAdamW, OptimizerKind::kLion,
                             OptimizerKind::kMuon}) {
    EXPECT_TRUE(ValidateParamSpec(Matrix2D(kind)).ok()) << OptimizerKindName(kind);
  }
  ParamSpec bias;
  bias.name = "fc1.bias";
  bias.shape = {256};
  EXPECT_TRUE(ValidateParamSpec(bias).ok());
  EXPECT_EQ(bias.rows(), 1);
  EXPECT_EQ(bias.cols(), 256);
}

TEST(ParamSpec, RefusesMalformedShapesWithTheParameterName) {
  ParamSpec spec = Matrix2D(OptimizerKind::kAdamW);
  spec.shape = {};
  EXPECT_NE(ValidateParamSpec(spec).message().find("fc1.weight"), absl::string_view::npos);
  spec.shape = {2, 3, 4};
  EXPECT_EQ(ValidateParamSpec(spec).code(), absl::StatusCode::kInvalidArgument);
  spec.shape = {0, 3};
  EXPECT_NE(ValidateParamSpec(spec).message().find(">= 1"), absl::string_view::npos);
  spec.shape = {1 << 20, 1 << 12};
  EXPECT_NE(ValidateParamSpec(spec).message().find("2^31"), absl::string_view::npos);
  spec = Matrix2D(OptimizerKind::kAdamW);
  spec.name.clear();
  EXPECT_EQ(ValidateParamSpec(spec).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParamSpec, DionAndMuonNeedMatrices) {
  for (OptimizerKind kind : {OptimizerKind::kDion, OptimizerKind::kMuon}) {
    ParamSpec spec = Matrix2D(kind);
    spec.shape = {128};
    const absl::Status status = ValidateParamSpec(spec);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("2-D"), absl::string_view::npos) << status;
  }
}

TEST(ParamSpec, ChecksTheChosenOptimizersHyperParameters) {
  ParamSpec spec = Matrix2D(OptimizerKind::kDion);
  spec.dion.rank_fraction = 2;
  EXPECT_NE(ValidateParamSpec(spec).message().find("rank_fraction"), absl::string_view::npos);
  // An out-of-range AdamW field does not matter to a Dion parameter...
  spec = Matrix2D(OptimizerKind::kDion);
  spec.adamw.beta1 = 5;
  EXPECT_TRUE(ValidateParamSpec(spec).ok());
  // ...but does to an AdamW one.
  spec.optimizer = OptimizerKind::kAdamW;
  EXPECT_EQ(ValidateParamSpec(spec).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParamSpec, RankFollowsDionRank) {
  ParamSpec spec = Matrix2D(OptimizerKind::kDion);
  spec.dion.rank_fraction = 0.25;
  EXPECT_EQ(spec.rank(), 64);  // 0.25 * min(256, 784)
  spec.optimizer = OptimizerKind::kAdamW;
  EXPECT_EQ(spec.rank(), 0);
}

TEST(ParamSpec, ParsesOptimizerNames) {
  EXPECT_EQ(*ParseOptimizerKind("dion"), OptimizerKind::kDion);
  EXPECT_EQ(*ParseOptimizerKind("lion"), OptimizerKind::kLion);
  const auto bad = ParseOptimizerKind("sgd");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("expected one of"), absl::string_view::npos);
}

TEST(InitialValue, DeterministicInSeedWithKaimingScale) {
  const ParamSpec spec = Matrix2D(OptimizerKind::kDion);
  const Matrix a = InitialValue(spec), b = InitialValue(spec);
  EXPECT_TRUE((a.array() == b.array()).all());
  ParamSpec other = spec;
  other.init.seed = 12;
  EXPECT_FALSE((InitialValue(other).array() == a.array()).all());
  // Kaiming: stddev sqrt(2 / fan_in); 200k samples estimate it to within ~0.2%, allow 2%.
  const double stddev = std::sqrt(a.cast<double>().array().square().mean());
  EXPECT_NEAR(stddev, std::sqrt(2.0 / 784), 0.02 * std::sqrt(2.0 / 784));
  ParamSpec zeros = spec;
  zeros.init.kind = InitSpec::Kind::kZeros;
  EXPECT_TRUE((InitialValue(zeros).array() == 0.0f).all());
}

}  // namespace
}  // namespace dion
