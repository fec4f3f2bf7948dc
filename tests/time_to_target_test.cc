// The time-to-target search (worker/train/time_to_target.h), driven with explicit times: each
// copy is a 1x1 matrix holding the accuracy the fake evaluation reports for it.
#include "worker/train/time_to_target.h"

#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace dion {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1000);
absl::Time At(double seconds) { return kStart + absl::Seconds(seconds); }
double SecondsOf(absl::Time t) { return absl::ToDoubleSeconds(t - kStart); }

// Takes a copy holding `accuracy` if one is due at `t`; returns whether it did.
bool MaybeCopy(TimeToTargetSearch& search, double t, double accuracy) {
  if (!search.CopyDue(At(t))) return false;
  std::vector<Matrix>& weights = search.NewCopy(At(t));
  weights.assign(1, Matrix::Constant(1, 1, static_cast<float>(accuracy)));
  return true;
}

// The fake evaluation: the copy's accuracy; records the time of every copy it evaluates.
struct Evaluations {
  std::vector<double> times;
  TimeToTargetSearch::EvaluateCopy Fn() {
    return [this](const std::vector<Matrix>& w, absl::Time copied) -> absl::StatusOr<double> {
      times.push_back(SecondsOf(copied));
      return static_cast<double>(w.at(0)(0, 0));
    };
  }
};

TEST(TimeToTargetSearch, CopiesEveryIntervalSinceTheLastCopyOrEvaluation) {
  TimeToTargetSearch search(0.9, absl::Seconds(1), kStart);
  EXPECT_FALSE(search.CopyDue(At(0.999)));
  EXPECT_TRUE(MaybeCopy(search, 1.0, 0.1));
  EXPECT_FALSE(search.CopyDue(At(1.5)));
  EXPECT_TRUE(MaybeCopy(search, 2.2, 0.1));
  EXPECT_FALSE(search.CopyDue(At(3.1)));  // 1 s after the last copy, not after 2.0
  EXPECT_EQ(search.copies(), 2);
  Evaluations evaluations;
  // An evaluation below the target drops the copies and restarts the interval at its copy.
  ASSERT_EQ(search.AfterEvaluation(At(2.5), 0.5, evaluations.Fn()).value(), 0);
  EXPECT_TRUE(evaluations.times.empty());
  EXPECT_EQ(search.copies(), 0);
  EXPECT_FALSE(search.CopyDue(At(3.4)));
  EXPECT_TRUE(search.CopyDue(At(3.5)));
}

TEST(TimeToTargetSearch, WhenFullKeepsEveryOtherCopyAndDoublesTheInterval) {
  TimeToTargetSearch search(0.9, absl::Seconds(1), kStart);
  for (int t = 1; t <= kMaxSnapshots; ++t) ASSERT_TRUE(MaybeCopy(search, t, 0.1)) << t;
  EXPECT_EQ(search.copies(), kMaxSnapshots);
  EXPECT_EQ(search.copy_interval(), absl::Seconds(1));
  // The 65th copy: copies 1, 3, 5, ..., 63 s are kept, then the new one; the interval doubles.
  ASSERT_TRUE(MaybeCopy(search, kMaxSnapshots + 1, 0.1));
  EXPECT_EQ(search.copies(), kMaxSnapshots / 2 + 1);
  EXPECT_EQ(search.copy_interval(), absl::Seconds(2));
  EXPECT_FALSE(search.CopyDue(At(kMaxSnapshots + 2)));
  ASSERT_TRUE(MaybeCopy(search, kMaxSnapshots + 3, 0.1));

  Evaluations evaluations;
  ASSERT_EQ(search.AfterEvaluation(At(100), 0.95, evaluations.Fn()).value(),
            kMaxSnapshots / 2 + 2);  // none reaches the target: every copy is evaluated
  std::vector<double> expected;
  for (int t = 1; t < kMaxSnapshots; t += 2) expected.push_back(t);
  expected.push_back(kMaxSnapshots + 1);
  expected.push_back(kMaxSnapshots + 3);
  EXPECT_EQ(evaluations.times, expected);
}

TEST(TimeToTargetSearch, TheIntervalIsBackToItsValueAfterAnEvaluation) {
  TimeToTargetSearch search(0.9, absl::Seconds(1), kStart);
  for (int t = 1; t <= kMaxSnapshots + 1; ++t) MaybeCopy(search, t, 0.1);
  ASSERT_EQ(search.copy_interval(), absl::Seconds(2));
  Evaluations evaluations;
  ASSERT_TRUE(search.AfterEvaluation(At(70), 0.5, evaluations.Fn()).ok());
  EXPECT_EQ(search.copy_interval(), absl::Seconds(1));
  EXPECT_TRUE(MaybeCopy(search, 71, 0.1));
}

TEST(TimeToTargetSearch, EvaluatesOldestFirstUpToTheFirstCopyReachingTheTarget) {
  TimeToTargetSearch search(0.8, absl::Seconds(1), kStart);
  const std::vector<double> accuracy = {0.5, 0.7, 0.79, 0.8, 0.6, 0.9};
  for (size_t i = 0; i < accuracy.size(); ++i) ASSERT_TRUE(MaybeCopy(search, i + 1, accuracy[i]));
  Evaluations evaluations;
  absl::StatusOr<int> evaluated = search.AfterEvaluation(At(6.5), 0.85, evaluations.Fn());
  ASSERT_TRUE(evaluated.ok()) << evaluated.status();
  EXPECT_EQ(*evaluated, 4);
  EXPECT_EQ(evaluations.times, (std::vector<double>{1, 2, 3, 4}));  // 4 s: the first at 0.8
  // Once reached: no more copies and no more searches.
  EXPECT_TRUE(search.target_reached());
  EXPECT_FALSE(search.CopyDue(At(100)));
  EXPECT_EQ(search.AfterEvaluation(At(101), 0.99, evaluations.Fn()).value(), 0);
}

TEST(TimeToTargetSearch, OnlyTheFirstEvaluationAtTheTargetSearches) {
  TimeToTargetSearch search(0.8, absl::Seconds(1), kStart);
  Evaluations evaluations;
  ASSERT_TRUE(MaybeCopy(search, 1, 0.5));
  ASSERT_EQ(search.AfterEvaluation(At(1.5), 0.79, evaluations.Fn()).value(), 0);  // below
  ASSERT_TRUE(MaybeCopy(search, 2.5, 0.81));
  ASSERT_EQ(search.AfterEvaluation(At(3), 0.8, evaluations.Fn()).value(), 1);
  EXPECT_EQ(evaluations.times, std::vector<double>{2.5});  // not the copy before 1.5 s
}

TEST(TimeToTargetSearch, ReturnsTheEvaluationsError) {
  TimeToTargetSearch search(0.8, absl::Seconds(1), kStart);
  ASSERT_TRUE(MaybeCopy(search, 1, 0.5));
  const absl::StatusOr<int> r = search.AfterEvaluation(
      At(2), 0.9, [](const std::vector<Matrix>&, absl::Time) -> absl::StatusOr<double> {
        return absl::InvalidArgumentError("shape");
      });
  EXPECT_EQ(r.status(), absl::InvalidArgumentError("shape"));
}

TEST(TimeToTargetSearch, IsOffWithoutATargetOrAnInterval) {
  Evaluations evaluations;
  for (TimeToTargetSearch search : {TimeToTargetSearch(0, absl::Seconds(1), kStart),
                                    TimeToTargetSearch(0.8, absl::ZeroDuration(), kStart)}) {
    EXPECT_FALSE(search.enabled());
    EXPECT_FALSE(search.CopyDue(At(1000)));
    EXPECT_EQ(search.AfterEvaluation(At(1000), 1.0, evaluations.Fn()).value(), 0);
    EXPECT_FALSE(search.target_reached());
  }
}

}  // namespace
}  // namespace dion
