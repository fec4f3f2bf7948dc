// The one validation of a contribution (common/contribution.h): what it checks, in which
// order, and that only it makes a ValidatedContribution.
#include "common/contribution.h"

#include <limits>
#include <type_traits>
#include <utility>

#include "gtest/gtest.h"

namespace dion {
namespace {

ParamSpec Spec(OptimizerKind optimizer, std::vector<int64_t> shape) {
  ParamSpec spec;
  spec.name = "p";
  spec.shape = std::move(shape);
  spec.optimizer = optimizer;
  return spec;
}

Contribution Dense(int64_t rows, int64_t cols) {
  Contribution c;
  c.worker_id = "w";
  c.parameter = "p";
  c.base_version = 2;
  c.sample_count = 4;
  c.payload = Matrix(Matrix::Ones(rows, cols));
  return c;
}

Contribution Factors(int64_t m, int64_t n, int r) {
  Contribution c = Dense(1, 1);
  c.payload = LowRankFactors{Matrix::Ones(m, r), Matrix::Ones(n, r)};
  return c;
}

static_assert(!std::is_default_constructible_v<ValidatedContribution>,
              "only Validate makes a ValidatedContribution");
static_assert(!std::is_constructible_v<ValidatedContribution, Contribution>,
              "only Validate makes a ValidatedContribution");

TEST(Validate, KeepsAValidContributionUnchanged) {
  const ParamSpec spec = Spec(OptimizerKind::kAdamW, {3, 5});
  const absl::StatusOr<ValidatedContribution> valid = Validate(Dense(3, 5), {spec, 2, true});
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_EQ((*valid)->worker_id, "w");
  EXPECT_EQ((*valid)->base_version, 2);
  EXPECT_EQ((**valid).gradient(), Matrix(Matrix::Ones(3, 5)));
}

TEST(Validate, ChecksTheScalarFieldsBeforeThePayloadInTheDocumentedOrder) {
  const ParamSpec spec = Spec(OptimizerKind::kAdamW, {3, 5});
  Contribution c = Dense(3, 4);  // wrong shape too: the scalar errors must win
  c.worker_id = "";
  EXPECT_EQ(CheckContribution(c, {spec, 2, false}).code(), absl::StatusCode::kInvalidArgument);
  c.worker_id = "w";
  const absl::Status unregistered = CheckContribution(c, {spec, 2, false});
  EXPECT_EQ(unregistered.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(unregistered.message().find("not registered"), absl::string_view::npos);
  c.sample_count = 0;
  EXPECT_EQ(CheckContribution(c, {spec, 2, true}).code(), absl::StatusCode::kInvalidArgument);
  c.sample_count = 1;
  const absl::Status future = CheckContribution(c, {spec, 1, true});
  EXPECT_EQ(future.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(future.message().find("base_version 2 is outside [0, 1]"), absl::string_view::npos);
  const absl::Status shape = CheckContribution(c, {spec, 2, true});
  EXPECT_EQ(shape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(shape.message().find("expected 3 x 5"), absl::string_view::npos);
}

TEST(Validate, WorkerIdsAreNonEmptyAndAtMost256Bytes) {
  EXPECT_TRUE(ValidateWorkerId(std::string(kMaxWorkerIdBytes, 'w')).ok());
  EXPECT_EQ(ValidateWorkerId("").code(), absl::StatusCode::kInvalidArgument);
  const absl::Status overlong = ValidateWorkerId(std::string(kMaxWorkerIdBytes + 1, 'w'));
  EXPECT_EQ(overlong.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(overlong.message(), "worker_id is 257 bytes long, above the limit of 256 bytes");
  const ParamSpec spec = Spec(OptimizerKind::kAdamW, {3, 5});
  Contribution c = Dense(3, 5);
  c.worker_id = std::string(300, 'w');
  EXPECT_EQ(Validate(c, {spec, 2, true}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Validate, NaNAndInfAreNonFiniteErrorsAndHugeValuesAreNot) {
  const ParamSpec dense = Spec(OptimizerKind::kAdamW, {3, 5});
  Contribution nan = Dense(3, 5);
  std::get<Matrix>(nan.payload)(1, 2) = std::numeric_limits<float>::quiet_NaN();
  const absl::Status nan_status = Validate(nan, {dense, 2, true}).status();
  EXPECT_TRUE(IsNonFiniteError(nan_status)) << nan_status;
  EXPECT_NE(nan_status.message().find("at (1, 2)"), absl::string_view::npos);

  const ParamSpec dion = Spec(OptimizerKind::kDion, {8, 6});
  Contribution inf = Factors(8, 6, 2);
  std::get<LowRankFactors>(inf.payload).R(5, 1) = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(IsNonFiniteError(Validate(inf, {dion, 2, true}).status()));

  Contribution huge = Factors(8, 6, 2);
  std::get<LowRankFactors>(huge.payload).P(0, 0) = 1e30f;
  const absl::Status huge_status = Validate(huge, {dion, 2, true}).status();
  EXPECT_EQ(huge_status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(huge_status.message().find("magnitude"), absl::string_view::npos);
  EXPECT_FALSE(IsNonFiniteError(huge_status));
}

// Before the fix only the bound r max|P| max|R| was checked for factors, so a P entry of 3e38
// with a tiny R passed although every entry above 1e18 is documented as refused.
TEST(Validate, EveryPayloadEntryAboveTheMagnitudeLimitIsRefused) {
  const ParamSpec dion = Spec(OptimizerKind::kDion, {8, 6});
  for (const bool in_p : {true, false}) {
    Contribution c = Factors(8, 6, 2);
    LowRankFactors& f = std::get<LowRankFactors>(c.payload);
    f.P.setConstant(in_p ? 1e-30f : 1.0f);
    f.R.setConstant(in_p ? 1.0f : 1e-30f);
    (in_p ? f.P : f.R)(1, 1) = 3e38f;  // r max|P| max|R| = 6e8, far below the limit
    const absl::Status status = Validate(c, {dion, 2, true}).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << in_p;
    EXPECT_NE(status.message().find(in_p ? "P entry" : "R entry"), absl::string_view::npos)
        << status;
    EXPECT_NE(status.message().find("exceeds the magnitude limit"), absl::string_view::npos)
        << status;
  }
  const ParamSpec adamw = Spec(OptimizerKind::kAdamW, {3, 5});
  Contribution dense = Dense(3, 5);
  std::get<Matrix>(dense.payload)(2, 4) = 2e18f;
  EXPECT_EQ(Validate(dense, {adamw, 2, true}).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::get<Matrix>(dense.payload)(2, 4) = 9e17f;  // at or below the limit is fine
  EXPECT_TRUE(Validate(dense, {adamw, 2, true}).ok());
}

TEST(Validate, ThePayloadKindFollowsTheOptimizer) {
  EXPECT_NE(CheckContribution(Dense(8, 6), {Spec(OptimizerKind::kDion, {8, 6}), 2, true})
                .message()
                .find("low-rank factors"),
            absl::string_view::npos);
  EXPECT_NE(CheckContribution(Factors(8, 6, 1), {Spec(OptimizerKind::kMuon, {8, 6}), 2, true})
                .message()
                .find("dense gradient"),
            absl::string_view::npos);
  EXPECT_TRUE(Validate(Factors(8, 6, 6), {Spec(OptimizerKind::kDion, {8, 6}), 2, true}).ok());
  EXPECT_FALSE(Validate(Factors(8, 6, 7), {Spec(OptimizerKind::kDion, {8, 6}), 2, true}).ok());
}

}  // namespace
}  // namespace dion
