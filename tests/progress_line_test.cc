// The lines dion-worker prints and `dion local` reads (worker/train/progress_line.h): what
// FormatProgressLine / FormatEvaluationLine write is exactly the documented format, and parsing
// it gives back the values (to the printed precision).
#include "worker/train/progress_line.h"

#include <string>

#include "gtest/gtest.h"

namespace dion {
namespace {

ProgressLine Sample() {
  ProgressLine p;
  p.worker = 3;
  p.epoch = 2;
  p.steps = 120;
  p.samples = 7680;
  p.elapsed_s = 12.3;
  p.samples_per_s = 1530.04;
  p.loss = 0.61234;
  p.pushes = 300;
  p.accepted = 290;
  p.refused = 4;
  p.resyncs = 1;
  p.reconnects = 2;
  p.sent_bytes = 123456;
  p.dense_bytes = 999999;
  p.received_bytes = 4567;
  p.received_dense_bytes = 89012;
  p.mean_staleness = 0.8123;
  p.staleness_hist = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  return p;
}

TEST(ProgressLineFormat, WritesEveryKeyInOrderWithItsPrecision) {
  EXPECT_EQ(FormatProgressLine(Sample()),
            "progress worker=3 epoch=2 steps=120 samples=7680 elapsed_s=12.30 "
            "samples_per_s=1530.0 loss=0.6123 pushes=300 accepted=290 refused=4 resyncs=1 "
            "reconnects=2 sent_bytes=123456 dense_bytes=999999 received_bytes=4567 "
            "received_dense_bytes=89012 mean_staleness=0.812 staleness_hist=1,2,3,4,5,6,7,8,9");
  ProgressLine p = Sample();
  p.final = true;
  p.test_loss = 0.41;
  p.test_accuracy = 0.81234;
  p.eval_elapsed_s = 1.25;
  const std::string line = FormatProgressLine(p);
  EXPECT_EQ(line.substr(0, 15), "final worker=3 ");
  EXPECT_EQ(line.substr(line.find(" staleness_hist=")),
            " staleness_hist=1,2,3,4,5,6,7,8,9 test_loss=0.4100 test_accuracy=0.8123 "
            "eval_elapsed_s=1.2500");
}

void ExpectSameLine(const ProgressLine& a, const ProgressLine& b) {
  EXPECT_EQ(a.final, b.final);
  EXPECT_EQ(a.worker, b.worker);
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.steps, b.steps);
  EXPECT_EQ(a.samples, b.samples);
  EXPECT_NEAR(a.elapsed_s, b.elapsed_s, 0.005);
  EXPECT_NEAR(a.samples_per_s, b.samples_per_s, 0.05);
  EXPECT_NEAR(a.loss, b.loss, 5e-5);
  EXPECT_EQ(a.pushes, b.pushes);
  EXPECT_EQ(a.accepted, b.accepted);
  EXPECT_EQ(a.refused, b.refused);
  EXPECT_EQ(a.resyncs, b.resyncs);
  EXPECT_EQ(a.reconnects, b.reconnects);
  EXPECT_EQ(a.sent_bytes, b.sent_bytes);
  EXPECT_EQ(a.dense_bytes, b.dense_bytes);
  EXPECT_EQ(a.received_bytes, b.received_bytes);
  EXPECT_EQ(a.received_dense_bytes, b.received_dense_bytes);
  EXPECT_NEAR(a.mean_staleness, b.mean_staleness, 5e-4);
  EXPECT_EQ(a.staleness_hist, b.staleness_hist);
  ASSERT_EQ(a.test_loss.has_value(), b.test_loss.has_value());
  ASSERT_EQ(a.test_accuracy.has_value(), b.test_accuracy.has_value());
  ASSERT_EQ(a.eval_elapsed_s.has_value(), b.eval_elapsed_s.has_value());
  if (a.test_loss) EXPECT_NEAR(*a.test_loss, *b.test_loss, 5e-5);
  if (a.test_accuracy) EXPECT_NEAR(*a.test_accuracy, *b.test_accuracy, 5e-5);
  if (a.eval_elapsed_s) EXPECT_NEAR(*a.eval_elapsed_s, *b.eval_elapsed_s, 5e-5);
}

TEST(ProgressLineFormat, ParsingTheFormattedLineGivesTheValuesBack) {
  ProgressLine without = Sample();
  ProgressLine with = Sample();
  with.final = true;
  with.test_loss = 0.3541;
  with.test_accuracy = 0.88006;
  with.eval_elapsed_s = 118.12341;
  for (const ProgressLine& p : {without, with}) {
    const std::string line = FormatProgressLine(p);
    ASSERT_TRUE(IsProgressLine(line)) << line;
    absl::StatusOr<ProgressLine> parsed = ParseProgressLine(line);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ExpectSameLine(*parsed, p);
    EXPECT_EQ(FormatProgressLine(*parsed), line);  // printed values are a fixed point
  }
}

TEST(EvaluationLineFormat, WritesAndParsesTheEvaluateModeLine) {
  const std::string line = FormatEvaluationLine({10000, 0.35412, 0.89006});
  EXPECT_EQ(line, "evaluation samples=10000 test_loss=0.3541 test_accuracy=0.8901");
  ASSERT_TRUE(IsEvaluationLine(line));
  absl::StatusOr<EvaluationResult> e = ParseEvaluationLine(line);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->samples, 10000);
  EXPECT_DOUBLE_EQ(e->test_loss, 0.3541);
  EXPECT_DOUBLE_EQ(e->test_accuracy, 0.8901);
  absl::StatusOr<EvaluationResult> missing =
      ParseEvaluationLine("evaluation samples=10 test_loss=0.3");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("'test_accuracy='"), absl::string_view::npos)
      << missing.status();
}

}  // namespace
}  // namespace dion
