// Orthonormalize against the double-precision reference Householder QR of tests/reference.h:
// orthogonality, preserved span, the `auto` policy's choices and its fallbacks.
#include "common/orthonormalize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "tests/reference.h"

namespace dion {

// So that gtest prints method names, not bytes.
void PrintTo(OrthoMethod method, std::ostream* os) { *os << OrthoMethodName(method); }

namespace {

using testing::GaussianD;
using testing::MatrixWithCondition;
using testing::ReferenceHouseholderQ;

constexpr double kUnitRoundoff = 0x1.0p-24;  // float32
constexpr OrthoMethod kAllMethods[] = {OrthoMethod::kAuto, OrthoMethod::kQr, OrthoMethod::kCqr,
                                       OrthoMethod::kCqr2, OrthoMethod::kRcqr};
constexpr double kConditions[] = {1e1, 1e3, 1e5, 1e7};

// Stable float32 methods reach ||P^T P - I||_max ~ 2e-7 .. 2.4e-6 here (about 4 .. 40 u);
// 1e-5 leaves a margin of 4 and still fails on a real loss of orthogonality (cqr at cond
// 1e3 gives ~1e-2).
constexpr double kOrthoTolerance = 1e-5;
// The hard requirement on `auto`, at any condition number.
constexpr double kAutoRequirement = 1e-4;

std::string Name(OrthoMethod method) { return std::string(OrthoMethodName(method)); }

OrthoOptions Options(OrthoMethod method, uint64_t seed = 0) {
  OrthoOptions options;
  options.method = method;
  options.seed = seed;
  return options;
}

// Where each method meets kOrthoTolerance by itself or through its documented fallback, as
// measured for 300 x 40 and 2000 x 256 (docs/orthonormalization.md): qr and rcqr everywhere;
// cqr2 up to cond 1e3 (its second pass needs u cond^2 < ~1; beyond, its Cholesky fails and it
// falls back to rcqr, which is accurate, but whether Cholesky fails is luck, so untested);
// cqr only at cond 1e1 (its error grows like u cond^2: 2e-4 at 1e2, 1e-2 at 1e3).
bool MeantToWork(OrthoMethod method, double condition) {
  switch (method) {
    case OrthoMethod::kQr:
    case OrthoMethod::kRcqr:
    case OrthoMethod::kAuto:
      return true;
    case OrthoMethod::kCqr2:
      return condition <= 1e3;
    case OrthoMethod::kCqr:
      return condition <= 1e1;
  }
  return false;
}

// max |P P^T - Q Q^T| in double, Q the reference orthonormal basis of span(A).
double ProjectorDistance(const Matrix& P, const MatrixD& A) {
  const MatrixD Pd = P.cast<double>();
  const MatrixD Q = ReferenceHouseholderQ(A);
  return (Pd * Pd.transpose() - Q * Q.transpose()).cwiseAbs().maxCoeff();
}

// max |A - P P^T A| / max |A| in double: how far the columns of A are from span(P).
double SpanResidual(const Matrix& P, const MatrixD& A) {
  const MatrixD Pd = P.cast<double>();
  const MatrixD residual = A - Pd * (Pd.transpose() * A);
  return residual.cwiseAbs().maxCoeff() / A.cwiseAbs().maxCoeff();
}

struct Shape {
  int m, r;
};
constexpr Shape kShapes[] = {{300, 40}, {120, 100}};

TEST(Orthonormalize, EachMethodIsOrthonormalWhereItIsMeantToWork) {
  for (const Shape shape : kShapes) {
    for (double condition : kConditions) {
      // The float input is what Orthonormalize sees; the references use exactly it.
      const Matrix input = MatrixWithCondition(shape.m, shape.r, condition, 11).cast<float>();
      for (OrthoMethod method : kAllMethods) {
        if (!MeantToWork(method, condition)) continue;
        SCOPED_TRACE(Name(method) + " " + std::to_string(shape.m) + "x" +
                     std::to_string(shape.r) + " cond " + std::to_string(condition));
        Matrix P = input;
        const OrthoReport report = Orthonormalize(P, Options(method));
        EXPECT_TRUE(report.ok);
        EXPECT_LE(OrthogonalityError(P), kOrthoTolerance);
      }
    }
  }
}

// Span check 1, independent of conditioning: every column of the input must lie in span(P).
// A backward-stable method leaves a residual of a few u times ||A|| plus the orthogonality
// error; 1e-5 is a ~7x margin over the worst measured (1.4e-6); cqr at cond 1e3 gives 1e-4.
TEST(Orthonormalize, InputColumnsLieInTheSpanOfTheResult) {
  for (const Shape shape : kShapes) {
    for (double condition : kConditions) {
      const Matrix input = MatrixWithCondition(shape.m, shape.r, condition, 12).cast<float>();
      const MatrixD A = input.cast<double>();
      for (OrthoMethod method : kAllMethods) {
        if (!MeantToWork(method, condition)) continue;
        SCOPED_TRACE(Name(method) + " cond " + std::to_string(condition));
        Matrix P = input;
        Orthonormalize(P, Options(method));
        EXPECT_LE(SpanResidual(P, A), kOrthoTolerance);
      }
    }
  }
}

// Span check 2, the projector itself against the reference QR's. A backward error of
// c u ||A|| turns the subspace by an angle up to c u cond(A), so the tolerance scales with
// the condition number: 4 u cond + 1e-6 (measured: at most 1.0 u cond; cqr at cond 1e3,
// outside its domain, reaches 28 u cond). Only up to cond 1e5; beyond, u cond approaches 1
// and no float32 method determines the subspace.
TEST(Orthonormalize, ProjectorMatchesReferenceQr) {
  for (double condition : {1e1, 1e3, 1e5}) {
    const Matrix input = MatrixWithCondition(300, 40, condition, 13).cast<float>();
    const MatrixD A = input.cast<double>();
    const double tolerance = 4 * kUnitRoundoff * condition + 1e-6;
    for (OrthoMethod method : kAllMethods) {
      if (!MeantToWork(method, condition)) continue;
      SCOPED_TRACE(Name(method) + " cond " + std::to_string(condition));
      Matrix P = input;
      Orthonormalize(P, Options(method));
      EXPECT_LE(ProjectorDistance(P, A), tolerance);
    }
  }
}

TEST(Orthonormalize, AutoMeetsRequirementAtEveryConditionNumber) {
  for (const Shape shape : kShapes) {
    for (double condition : {1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7}) {
      for (uint64_t seed : {21, 22}) {
        SCOPED_TRACE(std::to_string(shape.r) + " cond " + std::to_string(condition));
        const Matrix input = MatrixWithCondition(shape.m, shape.r, condition, seed).cast<float>();
        Matrix P = input;
        const OrthoReport report = Orthonormalize(P);
        EXPECT_TRUE(report.ok);
        ASSERT_TRUE(P.allFinite());
        EXPECT_LE(OrthogonalityError(P), kAutoRequirement);
        EXPECT_LE(SpanResidual(P, input.cast<double>()), kAutoRequirement);
      }
    }
  }
}

// The performance contract: a well-conditioned P (like B Q in a Dion step) costs one pass.
TEST(Orthonormalize, AutoUsesOneCholeskyPassWhenWellConditioned) {
  Matrix P = GaussianD(300, 40, 31).cast<float>();  // cond ~ 1.5
  const OrthoReport report = Orthonormalize(P);
  EXPECT_EQ(report.used, OrthoMethod::kCqr);
  EXPECT_EQ(report.fallbacks, 0);
  EXPECT_LE(OrthogonalityError(P), kOrthoTolerance);
}

TEST(Orthonormalize, AutoAddsSecondPassWhenFirstIsInaccurate) {
  // One pass would leave ~1e-4 at cond 1e2 (see cqr's domain above).
  Matrix P = MatrixWithCondition(300, 40, 1e2, 32).cast<float>();
  const OrthoReport report = Orthonormalize(P);
  EXPECT_EQ(report.used, OrthoMethod::kCqr2);
  EXPECT_EQ(report.fallbacks, 0);
  EXPECT_LE(OrthogonalityError(P), kOrthoTolerance);
}

TEST(Orthonormalize, AutoFallsBackToRcqrWhenCholeskyQrCannotWork) {
  // At cond 1e7, P^T P has condition 1e14 >> 1/u: Cholesky fails or is estimated hopeless.
  Matrix P = MatrixWithCondition(300, 40, 1e7, 33).cast<float>();
  const OrthoReport report = Orthonormalize(P);
  EXPECT_EQ(report.used, OrthoMethod::kRcqr);
  EXPECT_EQ(report.fallbacks, 1);
  EXPECT_LE(OrthogonalityError(P), kOrthoTolerance);
}

// With oversample 1 and r = 128 the sketch is square (k = r), embeds span(P) poorly, and the
// single final pass of plain rcqr leaves ~4e-5. auto's rcqr fallback adds a pass when its
// estimate says so.
TEST(Orthonormalize, AutoPolishesRcqrWhenTheSketchIsTight) {
  const Matrix input = MatrixWithCondition(300, 128, 1e5, 3).cast<float>();
  OrthoOptions options = Options(OrthoMethod::kRcqr);
  options.oversample = 1.0;
  Matrix plain = input;
  Orthonormalize(plain, options);
  ASSERT_GT(OrthogonalityError(plain), kOrthoTolerance) << "premise: plain rcqr is inaccurate";
  options.method = OrthoMethod::kAuto;
  Matrix P = input;
  const OrthoReport report = Orthonormalize(P, options);
  EXPECT_EQ(report.used, OrthoMethod::kRcqr);
  EXPECT_LE(OrthogonalityError(P), kOrthoTolerance);
}

// The estimate must track the measured error within an order of magnitude, both where the
// rounding floor dominates (cond 1) and where u cond^2 does (cond 10, one pass).
TEST(Orthonormalize, AutoEstimatedErrorTracksMeasuredError) {
  for (double condition : {1.0, 1e1}) {
    SCOPED_TRACE(condition);
    Matrix P = MatrixWithCondition(300, 40, condition, 34).cast<float>();
    const OrthoReport report = Orthonormalize(P);
    ASSERT_EQ(report.used, OrthoMethod::kCqr);
    const double measured = OrthogonalityError(P);
    EXPECT_GE(report.estimated_error, measured / 10);
    EXPECT_LE(report.estimated_error, measured * 10);
  }
}

TEST(Orthonormalize, OnlyAutoReportsAnEstimate) {
  Matrix P = GaussianD(50, 5, 35).cast<float>();
  EXPECT_EQ(Orthonormalize(P, Options(OrthoMethod::kQr)).estimated_error, -1.0);
}

// Entries of 1e-25 square to 1e-50, below the smallest float: P^T P is exactly zero and its
// Cholesky fails, although P is perfectly conditioned. rcqr never forms P^T P of the input.
TEST(Orthonormalize, CqrFallsBackToRcqrWhenGramUnderflows) {
  for (OrthoMethod method : {OrthoMethod::kCqr, OrthoMethod::kCqr2, OrthoMethod::kAuto}) {
    SCOPED_TRACE(Name(method));
    Matrix P = (GaussianD(300, 40, 36) * 1e-25).cast<float>();
    const OrthoReport report = Orthonormalize(P, Options(method));
    EXPECT_TRUE(report.ok);
    EXPECT_EQ(report.used, OrthoMethod::kRcqr);
    EXPECT_EQ(report.fallbacks, 1);
    EXPECT_LE(OrthogonalityError(P), kOrthoTolerance);
  }
}

// A zero column makes P^T P singular (Cholesky fails) and the sketch's R singular (rcqr
// fails); Householder QR still returns orthonormal columns whose span contains P's.
TEST(Orthonormalize, RankDeficientInputFallsBackToHouseholder) {
  MatrixD A = GaussianD(300, 40, 37);
  A.col(7).setZero();
  for (OrthoMethod method : kAllMethods) {
    SCOPED_TRACE(Name(method));
    Matrix P = A.cast<float>();
    const OrthoReport report = Orthonormalize(P, Options(method));
    EXPECT_TRUE(report.ok);
    EXPECT_EQ(report.used, OrthoMethod::kQr);
    ASSERT_TRUE(P.allFinite());
    EXPECT_LE(OrthogonalityError(P), kOrthoTolerance);
    EXPECT_LE(SpanResidual(P, A), kOrthoTolerance);
  }
}

// Two equal columns: P^T P is singular only up to rounding, so Cholesky may "succeed" with a
// tiny pivot, and the sketch's R has a rounding-level diagonal entry. Every method must stay
// finite with P's columns in the span of the result. auto and qr are orthonormal to
// kOrthoTolerance; rcqr's single final pass sees a worse-conditioned intermediate here
// (measured 7e-6), so it gets 1e-4. cqr and cqr2 fall back to rcqr.
TEST(Orthonormalize, DuplicateColumnsNeverGiveNaN) {
  MatrixD A = GaussianD(300, 40, 43);
  A.col(5) = A.col(3);
  for (OrthoMethod method : kAllMethods) {
    SCOPED_TRACE(Name(method));
    Matrix P = A.cast<float>();
    const OrthoReport report = Orthonormalize(P, Options(method));
    EXPECT_TRUE(report.ok);
    ASSERT_TRUE(P.allFinite());
    const bool strict = method == OrthoMethod::kAuto || method == OrthoMethod::kQr;
    EXPECT_LE(OrthogonalityError(P), strict ? kOrthoTolerance : kAutoRequirement);
    EXPECT_LE(SpanResidual(P, A), kOrthoTolerance);
  }
}

TEST(Orthonormalize, ZeroMatrixGivesFiniteOrthonormalColumns) {
  for (OrthoMethod method : kAllMethods) {
    SCOPED_TRACE(Name(method));
    Matrix P = Matrix::Zero(60, 8);
    const OrthoReport report = Orthonormalize(P, Options(method));
    EXPECT_TRUE(report.ok);
    EXPECT_EQ(report.used, OrthoMethod::kQr);
    ASSERT_TRUE(P.allFinite());
    EXPECT_LE(OrthogonalityError(P), kOrthoTolerance);
  }
}

TEST(Orthonormalize, NonFiniteInputIsZeroedAndReportedNotOk) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    for (OrthoMethod method : kAllMethods) {
      SCOPED_TRACE(Name(method) + " " + std::to_string(bad));
      Matrix P = GaussianD(60, 8, 38).cast<float>();
      P(17, 3) = bad;
      const OrthoReport report = Orthonormalize(P, Options(method));
      EXPECT_FALSE(report.ok);
      EXPECT_TRUE((P.array() == 0.0f).all());
    }
  }
}

// m == r: every method runs Householder QR, so P equals the reference Q up to column signs.
// Q of a cond-10 matrix moves by ~u cond per entry under rounding; 1e-5 bounds that.
TEST(Orthonormalize, SquareInputUsesHouseholderQr) {
  const Matrix input = MatrixWithCondition(48, 48, 10.0, 39).cast<float>();
  const MatrixD Q = ReferenceHouseholderQ(input.cast<double>());
  for (OrthoMethod method : kAllMethods) {
    SCOPED_TRACE(Name(method));
    Matrix P = input;
    const OrthoReport report = Orthonormalize(P, Options(method));
    EXPECT_EQ(report.used, OrthoMethod::kQr);
    MatrixD Pd = P.cast<double>();
    for (int j = 0; j < Pd.cols(); ++j) {
      if (Pd.col(j).dot(Q.col(j)) < 0) Pd.col(j) *= -1;
    }
    EXPECT_LE((Pd - Q).cwiseAbs().maxCoeff(), 1e-5);
  }
}

TEST(Orthonormalize, EmptyMatrixIsLeftAlone) {
  Matrix P(10, 0);
  const OrthoReport report = Orthonormalize(P);
  EXPECT_TRUE(report.ok);
  EXPECT_EQ(report.fallbacks, 0);
}

TEST(Orthonormalize, RcqrIsBitIdenticalForTheSameSeed) {
  const Matrix input = MatrixWithCondition(300, 40, 1e4, 40).cast<float>();
  // A seed no other test uses: the first call draws the sketch, the second hits the cache.
  Matrix first = input, second = input;
  Orthonormalize(first, Options(OrthoMethod::kRcqr, 987654321));
  Orthonormalize(second, Options(OrthoMethod::kRcqr, 987654321));
  EXPECT_EQ(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)), 0);
}

// Concurrent calls share the sketch cache; each must equal the serial result bit for bit.
TEST(Orthonormalize, ConcurrentRcqrCallsMatchSerialResults) {
  const Matrix input = MatrixWithCondition(200, 30, 1e3, 41).cast<float>();
  std::vector<Matrix> expected(4, input);
  for (int t = 0; t < 4; ++t) Orthonormalize(expected[t], Options(OrthoMethod::kRcqr, 500 + t % 2));
  std::vector<Matrix> got(4, input);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 3; ++rep) {
        got[t] = input;
        Orthonormalize(got[t], Options(OrthoMethod::kRcqr, 500 + t % 2));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) {
    EXPECT_EQ(std::memcmp(got[t].data(), expected[t].data(), got[t].size() * sizeof(float)), 0)
        << "thread " << t;
  }
}

TEST(OrthogonalityError, IsMaxAbsEntryOfGramMinusIdentity) {
  Matrix P = Matrix::Zero(3, 2);
  P(0, 0) = 1.0f;
  P(1, 1) = 2.0f;  // P^T P - I = diag(0, 3)
  EXPECT_DOUBLE_EQ(OrthogonalityError(P), 3.0);
  P(2, 0) = 0.5f;  // P^T P - I = [[0.25, 0], [0, 3]]
  P(2, 1) = 0.5f;  // off-diagonal 0.25
  EXPECT_DOUBLE_EQ(OrthogonalityError(P), 3.25);
}

TEST(OrthogonalityError, IsComputedInDouble) {
  // A float32-rounded orthonormal basis: its true error (~1e-7) is of the size of float32
  // accumulation noise, so only a double computation agrees with the exact value to 1e-14.
  const Matrix P = ReferenceHouseholderQ(GaussianD(500, 20, 42)).cast<float>();
  const MatrixD Pd = P.cast<double>();
  const double exact = (Pd.transpose() * Pd - MatrixD::Identity(20, 20)).cwiseAbs().maxCoeff();
  EXPECT_NEAR(OrthogonalityError(P), exact, 1e-14);
}

TEST(OrthogonalityError, PropagatesNaN) {
  Matrix P = Matrix::Identity(4, 2);
  P(3, 1) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(OrthogonalityError(P)));
}

TEST(ParseOrthoMethod, RoundTripsEveryName) {
  for (OrthoMethod method : kAllMethods) {
    const absl::StatusOr<OrthoMethod> parsed = ParseOrthoMethod(OrthoMethodName(method));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, method);
  }
}

TEST(ParseOrthoMethod, RejectsUnknownNamesAndListsTheValidOnes) {
  for (const char* bad : {"", "QR", "cholesky", "cqr3", " auto"}) {
    const absl::StatusOr<OrthoMethod> parsed = ParseOrthoMethod(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find("auto, qr, cqr, cqr2, rcqr"), std::string::npos);
  }
}

}  // namespace
}  // namespace dion
