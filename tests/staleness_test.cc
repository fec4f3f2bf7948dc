// Staleness weights and refusal (server/staleness.h) against the formulas of docs/server.md,
// "Staleness policies".
#include "server/staleness.h"

#include <gtest/gtest.h>

#include <cmath>

namespace dion {
namespace {

StalenessPolicy Policy(StalenessKind kind, double tau0 = 4.0, int64_t max_staleness = 16) {
  return StalenessPolicy(StalenessOptions{kind, tau0, max_staleness});
}

// The weights are computed in double from the formula; 1e-15 relative is rounding only.
TEST(StalenessPolicy, NoneWeighsEveryContributionOne) {
  const StalenessPolicy policy = Policy(StalenessKind::kNone);
  for (int64_t tau = 0; tau <= 16; ++tau) EXPECT_EQ(policy.Weight(tau), 1.0) << tau;
}

TEST(StalenessPolicy, InverseWeightIsOneOverOnePlusTau) {
  const StalenessPolicy policy = Policy(StalenessKind::kInverse);
  for (int64_t tau = 0; tau <= 16; ++tau) {
    EXPECT_NEAR(policy.Weight(tau), 1.0 / (1.0 + tau), 1e-15) << tau;
  }
  EXPECT_EQ(policy.Weight(0), 1.0);
  EXPECT_EQ(policy.Weight(3), 0.25);
}

TEST(StalenessPolicy, ExpWeightIsExpOfMinusTauOverTau0) {
  const StalenessPolicy policy = Policy(StalenessKind::kExp, /*tau0=*/2.5);
  for (int64_t tau = 0; tau <= 16; ++tau) {
    EXPECT_NEAR(policy.Weight(tau), std::exp(-tau / 2.5), 1e-15) << tau;
  }
}

TEST(StalenessPolicy, RefusesOnlyAboveMaxStaleness) {
  const StalenessPolicy policy = Policy(StalenessKind::kInverse, 4.0, /*max_staleness=*/3);
  EXPECT_FALSE(policy.Refuses(0));
  EXPECT_FALSE(policy.Refuses(3));
  EXPECT_TRUE(policy.Refuses(4));
  const StalenessPolicy strict = Policy(StalenessKind::kNone, 4.0, /*max_staleness=*/0);
  EXPECT_FALSE(strict.Refuses(0));
  EXPECT_TRUE(strict.Refuses(1));
}

TEST(StalenessPolicy, ParsesPolicyNamesAndRejectsOthers) {
  EXPECT_EQ(*ParseStalenessKind("none"), StalenessKind::kNone);
  EXPECT_EQ(*ParseStalenessKind("inverse"), StalenessKind::kInverse);
  EXPECT_EQ(*ParseStalenessKind("exp"), StalenessKind::kExp);
  const auto bad = ParseStalenessKind("linear");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("linear"), absl::string_view::npos);
}

TEST(StalenessPolicy, ValidationRejectsBadTau0AndNegativeMaxStaleness) {
  EXPECT_TRUE(ValidateStalenessOptions({}).ok());
  EXPECT_EQ(ValidateStalenessOptions({StalenessKind::kExp, 0.0, 4}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateStalenessOptions({StalenessKind::kExp, NAN, 4}).code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status negative = ValidateStalenessOptions({StalenessKind::kNone, 1.0, -1});
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(negative.message().find("max_staleness"), absl::string_view::npos);
}

}  // namespace
}  // namespace dion
