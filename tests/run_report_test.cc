// The parts of `dion local` that do not need processes: the progress-line parser, the
// aggregation across workers, and the report, summary.json and curves.svg writers
// (worker/local/run_report.h, worker/local/svg_plot.h).
#include "worker/local/run_report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/json_check.h"
#include "tests/xml_check.h"
#include "worker/local/run_summary.h"
#include "worker/local/svg_plot.h"

namespace dion {
namespace {

using testing::JsonReader;
using testing::JsonValue;

// A line in the format of FormatProgressLine (worker/train/progress_line.h), numbers as given.
std::string Line(const char* kind, int worker, int64_t samples, double elapsed, double loss,
                 int64_t sent, int64_t accepted, double staleness, const char* hist,
                 const char* evaluation = "") {
  return absl::StrCat(kind, " worker=", worker, " epoch=1 steps=", samples / 64,
                      " samples=", samples, " elapsed_s=", elapsed,
                      " samples_per_s=1000.0 loss=", loss, " pushes=", accepted,
                      " accepted=", accepted, " refused=0 resyncs=0 reconnects=0 sent_bytes=", sent,
                      " dense_bytes=", 3 * sent, " received_bytes=", 2 * sent,
                      " received_dense_bytes=", 10 * sent, " mean_staleness=", staleness,
                      " staleness_hist=", hist, evaluation);
}

TEST(ProgressLineTest, ParsesEveryKeyOfALineWithoutEvaluation) {
  absl::StatusOr<ProgressLine> p = ParseProgressLine(
      "progress worker=3 epoch=2 steps=120 samples=7680 elapsed_s=12.30 samples_per_s=1530.5 "
      "loss=0.6123 pushes=300 accepted=290 refused=4 resyncs=1 reconnects=2 sent_bytes=123456 "
      "dense_bytes=999999 received_bytes=4567 received_dense_bytes=89012 mean_staleness=0.812 "
      "staleness_hist=1,2,3,4,5,6,7,8,9");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->final);
  EXPECT_EQ(p->worker, 3);
  EXPECT_EQ(p->epoch, 2);
  EXPECT_EQ(p->steps, 120);
  EXPECT_EQ(p->samples, 7680);
  EXPECT_DOUBLE_EQ(p->elapsed_s, 12.30);
  EXPECT_DOUBLE_EQ(p->samples_per_s, 1530.5);
  EXPECT_DOUBLE_EQ(p->loss, 0.6123);
  EXPECT_EQ(p->pushes, 300);
  EXPECT_EQ(p->accepted, 290);
  EXPECT_EQ(p->refused, 4);
  EXPECT_EQ(p->resyncs, 1);
  EXPECT_EQ(p->reconnects, 2);
  EXPECT_EQ(p->sent_bytes, 123456);
  EXPECT_EQ(p->dense_bytes, 999999);
  EXPECT_EQ(p->received_bytes, 4567);
  EXPECT_EQ(p->received_dense_bytes, 89012);
  // An older worker's line, without the received side, still parses (as 0 received).
  absl::StatusOr<ProgressLine> old = ParseProgressLine(
      "progress worker=3 epoch=2 steps=120 samples=7680 elapsed_s=12.30 samples_per_s=1530.5 "
      "loss=0.6123 pushes=300 accepted=290 refused=4 resyncs=1 reconnects=2 sent_bytes=123456 "
      "dense_bytes=999999 mean_staleness=0.812 staleness_hist=1,2,3,4,5,6,7,8,9");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->received_bytes, 0);
  EXPECT_EQ(old->sent_bytes, 123456);
  EXPECT_FALSE(ParseProgressLine(
                   "progress worker=3 epoch=2 steps=120 samples=7680 elapsed_s=12.30 "
                   "samples_per_s=1530.5 loss=0.6123 pushes=300 accepted=290 refused=4 "
                   "resyncs=1 reconnects=2 sent_bytes=123456 dense_bytes=999999 "
                   "received_bytes=x received_dense_bytes=1 mean_staleness=0.812 "
                   "staleness_hist=1,2,3,4,5,6,7,8,9")
                   .ok());
  EXPECT_DOUBLE_EQ(p->mean_staleness, 0.812);
  EXPECT_EQ(p->staleness_hist, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_FALSE(p->test_accuracy.has_value());
  EXPECT_FALSE(p->eval_elapsed_s.has_value());
}

TEST(ProgressLineTest, ParsesTheFinalLineWithEvaluationAndIgnoresUnknownKeys) {
  absl::StatusOr<ProgressLine> p =
      ParseProgressLine(Line("final", 0, 640, 1.5, 0.5, 10, 5, 0.2, "4,1",
                             " test_loss=0.41 test_accuracy=0.8123 "
                             "eval_elapsed_s=1.25 some_future_key=abc"));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->final);
  EXPECT_DOUBLE_EQ(*p->test_loss, 0.41);
  EXPECT_DOUBLE_EQ(*p->test_accuracy, 0.8123);
  EXPECT_DOUBLE_EQ(*p->eval_elapsed_s, 1.25);
}

TEST(ProgressLineTest, RefusesMissingOrMalformedValuesNamingTheKey) {
  const std::string good = Line("progress", 0, 64, 1, 0.5, 10, 1, 0, "1,0");
  ASSERT_TRUE(ParseProgressLine(good).ok());
  const auto error_for = [](const std::string& line) {
    absl::StatusOr<ProgressLine> p = ParseProgressLine(line);
    return p.ok() ? std::string("ok") : std::string(p.status().message());
  };
  std::string no_loss = good;
  no_loss.replace(no_loss.find(" loss=0.5"), 9, "");
  EXPECT_TRUE(absl::StrContains(error_for(no_loss), "'loss='")) << error_for(no_loss);
  std::string bad_number = good;
  bad_number.replace(bad_number.find("samples=64"), 10, "samples=6x4");
  EXPECT_TRUE(absl::StrContains(error_for(bad_number), "'samples='"));
  std::string bad_hist = good;
  bad_hist.replace(bad_hist.find("staleness_hist=1,0"), 18, "staleness_hist=1,-2");
  EXPECT_TRUE(absl::StrContains(error_for(bad_hist), "'staleness_hist='"));
  EXPECT_TRUE(absl::StrContains(error_for(good + " test_accuracy=0.5"), "eval_elapsed_s"));
  EXPECT_FALSE(ParseProgressLine("dion-worker: worker-0 training on 10 of 20 samples").ok());
  EXPECT_FALSE(IsProgressLine("test accuracy: 81.00%"));
  EXPECT_TRUE(IsProgressLine(good));
}

TEST(EvaluationLineTest, ParsesTheEvaluateModeLine) {
  absl::StatusOr<EvaluationResult> e =
      ParseEvaluationLine("evaluation samples=10000 test_loss=0.3541 test_accuracy=0.8901");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->samples, 10000);
  EXPECT_DOUBLE_EQ(e->test_loss, 0.3541);
  EXPECT_DOUBLE_EQ(e->test_accuracy, 0.8901);
  EXPECT_FALSE(ParseEvaluationLine("evaluation samples=10 test_loss=0.3").ok());
  EXPECT_FALSE(IsEvaluationLine("test accuracy: 89.01%"));
}

TEST(RunAggregateTest, SumsTheLatestLineOfEachWorker) {
  RunAggregate run(2);
  run.SetTrainingSetSize(1000);
  ASSERT_TRUE(ParseProgressLine(Line("progress", 0, 100, 1, 0.9, 50, 10, 1.0, "5,5")).ok());
  run.Add(*ParseProgressLine(Line("progress", 0, 100, 1, 0.9, 50, 10, 1.0, "5,5")), 2.0);
  run.Add(*ParseProgressLine(Line("progress", 0, 300, 2, 0.7, 150, 20, 0.5, "12,8")), 3.0);
  run.Add(*ParseProgressLine(Line("final", 1, 200, 2, 0.5, 100, 30, 2.0, "0,10,20")), 3.5);
  run.Add(*ParseProgressLine(Line("progress", 9, 999, 2, 0.1, 999, 99, 9.0, "99")),
          3.6);  // ignored

  const RunTotals t = run.Totals();
  EXPECT_EQ(t.samples, 500);  // 300 (latest of worker 0) + 200
  EXPECT_EQ(t.sent_bytes, 250);
  EXPECT_EQ(t.dense_bytes, 750);
  EXPECT_EQ(t.received_bytes, 500);
  EXPECT_EQ(t.received_dense_bytes, 2500);
  EXPECT_EQ(t.accepted, 50);
  EXPECT_EQ(t.staleness_hist, (std::vector<int64_t>{12, 18, 20}));
  // Weighted by accepted pushes: (0.5 * 20 + 2.0 * 30) / 50.
  EXPECT_DOUBLE_EQ(t.mean_staleness, 1.4);
  EXPECT_DOUBLE_EQ(run.Epochs(), 0.5);

  const LiveStatus live = run.Live();
  EXPECT_EQ(live.workers_reporting, 2);
  EXPECT_EQ(live.workers_finished, 1);
  EXPECT_DOUBLE_EQ(live.samples_per_s, 1000.0);  // the finished worker no longer counts
  EXPECT_DOUBLE_EQ(live.loss, 0.6);              // mean of 0.7 and 0.5
  ASSERT_EQ(run.train_loss().size(), 3u);
  EXPECT_DOUBLE_EQ(run.train_loss().back().loss, 0.6);
  EXPECT_DOUBLE_EQ(*run.TrainingStart(0), 1.0);  // 2.0 - 1 and 3.0 - 2
  EXPECT_DOUBLE_EQ(*run.TrainingEnd(1), 3.5);
  EXPECT_FALSE(run.TrainingEnd(0).has_value());
}

TEST(RunAggregateTest, PlacesEvaluationsOnTheRunClockOnceEach) {
  RunAggregate run(1);
  run.SetTrainingSetSize(400);
  // Worker 0 started training at run time 10 (arrival 11 - elapsed 1).
  run.Add(*ParseProgressLine(Line("progress", 0, 100, 1, 0.9, 1, 1, 0, "1")), 11.0);
  run.Add(*ParseProgressLine(Line("progress", 0, 200, 2, 0.8, 1, 1, 0, "1",
                                  " test_loss=0.6 test_accuracy=0.85 eval_elapsed_s=1.5")),
          12.0);
  // The same evaluation repeated on the next line is not a new point.
  run.Add(*ParseProgressLine(Line("progress", 0, 300, 3, 0.7, 1, 1, 0, "1",
                                  " test_loss=0.6 test_accuracy=0.85 eval_elapsed_s=1.5")),
          13.0);
  run.Add(*ParseProgressLine(Line("final", 0, 400, 4, 0.6, 1, 1, 0, "1",
                                  " test_loss=0.5 test_accuracy=0.9 eval_elapsed_s=4.0")),
          14.0);
  const std::vector<EvalPoint> evaluations = run.Evaluations();
  ASSERT_EQ(evaluations.size(), 2u);
  EXPECT_DOUBLE_EQ(evaluations[0].time_s, 11.5);
  // Halfway between the points (11 s, 0.25 epochs) and (12 s, 0.5 epochs).
  EXPECT_DOUBLE_EQ(evaluations[0].epochs, 0.375);
  EXPECT_DOUBLE_EQ(evaluations[0].test_accuracy, 0.85);
  EXPECT_DOUBLE_EQ(evaluations[1].time_s, 14.0);
  EXPECT_DOUBLE_EQ(evaluations[1].epochs, 1.0);
  ASSERT_TRUE(run.FirstReaching(0.85).has_value());
  EXPECT_DOUBLE_EQ(run.FirstReaching(0.85)->time_s, 11.5);
  EXPECT_DOUBLE_EQ(run.FirstReaching(0.88)->time_s, 14.0);
  EXPECT_FALSE(run.FirstReaching(0.95).has_value());
  EXPECT_DOUBLE_EQ(*run.Live().test_accuracy, 0.9);
}

TEST(SummarizeRunTest, TimesComeFromTheWorkersStartsAndEndsOnTheRunClock) {
  RunAggregate run(2);
  run.SetTrainingSetSize(400);
  // Worker 0 starts at run time 10 (arrival 11 - elapsed 1), worker 1 at 12; worker 1 ends
  // last, at 16.
  run.Add(*ParseProgressLine(Line("progress", 0, 100, 1, 0.9, 1, 1, 0, "1",
                                  " test_loss=0.6 test_accuracy=0.8 eval_elapsed_s=0.5")),
          11.0);
  run.Add(*ParseProgressLine(Line("progress", 1, 100, 1, 0.9, 1, 1, 0, "1")), 13.0);
  run.Add(*ParseProgressLine(Line("final", 0, 200, 3, 0.5, 1, 1, 0, "1",
                                  " test_loss=0.4 test_accuracy=0.9 eval_elapsed_s=2.5")),
          13.5);
  run.Add(*ParseProgressLine(Line("final", 1, 200, 4, 0.6, 1, 1, 0, "1")), 16.0);
  const RunSummary s = SummarizeRun(run, 2, 0.88);
  EXPECT_DOUBLE_EQ(s.training_time_s, 16.0 - 10.0);
  EXPECT_DOUBLE_EQ(s.target_accuracy, 0.88);
  ASSERT_TRUE(s.time_to_target_s.has_value());
  EXPECT_DOUBLE_EQ(*s.time_to_target_s, 12.5);  // worker 0's start + its eval_elapsed_s
  EXPECT_DOUBLE_EQ(*s.train_time_to_target_s, 2.5);
  EXPECT_DOUBLE_EQ(s.epochs, 1.0);  // 400 samples of a 400-sample training set
  EXPECT_EQ(s.totals.samples, 400);
  EXPECT_EQ(s.evaluations.size(), 2u);
  EXPECT_FALSE(SummarizeRun(run, 2, 0.95).time_to_target_s.has_value());
}

TEST(StatusLineTest, ShowsEpochRateLossAccuracyStalenessAndBytes) {
  LiveStatus s;
  s.epochs = 1.523;
  s.samples_per_s = 21000.4;
  s.loss = 0.41234;
  s.totals.mean_staleness = 1.2;
  s.totals.sent_bytes = 120'300'000;
  s.totals.dense_bytes = 351'200'000;
  s.totals.received_bytes = 80'100'000;
  s.totals.received_dense_bytes = 848'800'000;
  EXPECT_EQ(StatusLine(s, 12.34, 12, 4),
            "[  12.3s] epoch 1.52/12  21000 samples/s  loss 0.4123  test acc -  staleness 1.20  "
            "sent 120.3 MB + received 80.1 MB / dense 1.20 GB");
  s.test_accuracy = 0.85123;
  s.workers_finished = 3;
  EXPECT_EQ(StatusLine(s, 12.34, 12, 4),
            "[  12.3s] epoch 1.52/12  21000 samples/s  loss 0.4123  test acc 85.12%  staleness "
            "1.20  sent 120.3 MB + received 80.1 MB / dense 1.20 GB  (3/4 workers done)");
}

RunSummary ExampleSummary() {
  RunSummary s;
  s.config = {{"workers", int64_t{4}},
              {"lr", 0.02},
              {"sync", false},
              {"worker_flags", std::string("--odd=\"quoted\"\\path\nnext\tline")}};
  s.final_evaluation = EvaluationResult{10000, 0.31, 0.8912};
  s.wall_time_s = 61.5;
  s.training_time_s = 50.25;
  s.time_to_target_s = 30.5;
  s.train_time_to_target_s = 25.0;
  s.epochs = 5;
  s.totals.samples = 300000;
  s.totals.accepted = 100;
  s.totals.sent_bytes = 1000;
  s.totals.dense_bytes = 3000;
  s.totals.received_bytes = 500;
  s.totals.received_dense_bytes = 5000;
  s.totals.staleness_hist = {50, 30, 20};
  s.totals.mean_staleness = std::numeric_limits<double>::quiet_NaN();  // written as null
  s.train_loss = {{1, 0.1, 2.0}, {2, 0.2, 1.0}, {3, 0.3, 0.5}};
  s.evaluations = {{1.5, 0.15, 0.9, 0.7}, {2.5, 0.25, 0.6, 0.85}, {3.5, 0.35, 0.4, 0.89}};
  s.run_dir = "runs/x";
  return s;
}

TEST(ReportTest, EndsWithTheTestAccuracyLineAndStatesTheFigures) {
  const std::vector<std::string> lines = ReportLines(ExampleSummary());
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back(), "test accuracy: 89.12%");
  std::string all;
  for (const std::string& line : lines) absl::StrAppend(&all, line, "\n");
  EXPECT_TRUE(absl::StrContains(all, "30.5 s since start")) << all;
  // Both ways: 1000 + 500 bytes against 3000 + 5000 dense; then each direction.
  EXPECT_TRUE(absl::StrContains(
      all, "bytes on the wire      1.5 kB vs 8.0 kB dense: 5.33x less (18.8% of dense) both ways"))
      << all;
  EXPECT_TRUE(absl::StrContains(all, "pushes sent          1.0 kB vs 3.0 kB dense: 3.00x less"))
      << all;
  EXPECT_TRUE(absl::StrContains(all, "versions received    500 B vs 5.0 kB dense: 10.00x less"))
      << all;
  EXPECT_TRUE(absl::StrContains(all, "0: 50.0%  1: 30.0%  >=2: 20.0%")) << all;

  RunSummary never = ExampleSummary();
  never.time_to_target_s.reset();
  never.final_evaluation.reset();
  const std::vector<std::string> partial = ReportLines(never);
  std::string text;
  for (const std::string& line : partial) absl::StrAppend(&text, line, "\n");
  EXPECT_TRUE(absl::StrContains(text, "not reached (best periodic evaluation 89.00%)")) << text;
  EXPECT_FALSE(absl::StrContains(text, "test accuracy:"));  // no final evaluation, no claim
}

TEST(SummaryJsonTest, IsValidJsonHoldingTheFiguresAndCurves) {
  const std::string json = SummaryJson(ExampleSummary());
  std::string error;
  std::optional<JsonValue> v = JsonReader::Parse(json, &error);
  ASSERT_TRUE(v.has_value()) << error << "\n" << json;
  EXPECT_EQ(v->Get("status")->string, "ok");
  EXPECT_DOUBLE_EQ(v->Get("final_test_accuracy")->number, 0.8912);
  EXPECT_DOUBLE_EQ(v->Get("time_to_target_s")->number, 30.5);
  EXPECT_DOUBLE_EQ(v->Get("dense_to_sent_ratio")->number, 3.0);
  EXPECT_EQ(v->Get("mean_staleness")->type, JsonValue::Type::kNull);
  EXPECT_EQ(v->Get("sent_bytes")->number, 1000);
  EXPECT_EQ(v->Get("received_bytes")->number, 500);
  EXPECT_EQ(v->Get("received_dense_bytes")->number, 5000);
  EXPECT_EQ(v->Get("wire_bytes")->number, 1500);
  EXPECT_EQ(v->Get("wire_dense_bytes")->number, 8000);
  EXPECT_DOUBLE_EQ(v->Get("dense_to_received_ratio")->number, 10.0);
  EXPECT_NEAR(v->Get("dense_to_wire_ratio")->number, 8000.0 / 1500, 1e-9);  // 10 digits
  const JsonValue* config = v->Get("config");
  ASSERT_NE(config, nullptr);
  EXPECT_EQ(config->Get("workers")->number, 4);
  EXPECT_EQ(config->Get("sync")->type, JsonValue::Type::kBool);
  EXPECT_EQ(config->Get("worker_flags")->string, "--odd=\"quoted\"\\path\nnext\tline");
  ASSERT_EQ(v->Get("staleness_percent")->array.size(), 3u);
  EXPECT_DOUBLE_EQ(v->Get("staleness_percent")->array[0].number, 50.0);
  ASSERT_EQ(v->Get("evaluations")->array.size(), 3u);
  EXPECT_DOUBLE_EQ(v->Get("evaluations")->array[2].Get("test_accuracy")->number, 0.89);
  EXPECT_DOUBLE_EQ(v->Get("evaluations")->array[1].Get("epochs")->number, 0.25);
  ASSERT_EQ(v->Get("train_loss")->array.size(), 3u);
  EXPECT_DOUBLE_EQ(v->Get("train_loss")->array[2].Get("loss")->number, 0.5);

  EXPECT_EQ(v->Get("checkpoint")->type, JsonValue::Type::kNull);  // none taken

  RunSummary empty;
  empty.status = "failed";
  ASSERT_TRUE(JsonReader::Parse(SummaryJson(empty), &error).has_value()) << error;
}

TEST(SummaryJsonTest, RecordsTheCoordinatedCheckpointAndTheReportNamesIt) {
  RunSummary summary = ExampleSummary();
  summary.checkpoint = RunCheckpoint{"local-20261206-101500", 3};
  std::string error;
  std::optional<JsonValue> v = JsonReader::Parse(SummaryJson(summary), &error);
  ASSERT_TRUE(v.has_value()) << error;
  EXPECT_EQ(v->Get("checkpoint")->Get("run_id")->string, "local-20261206-101500");
  EXPECT_EQ(v->Get("checkpoint")->Get("cut")->number, 3);
  const std::vector<std::string> lines = ReportLines(summary);
  EXPECT_NE(std::find_if(lines.begin(), lines.end(),
                         [](const std::string& line) {
                           return line.find("cut 3 of run local-20261206-101500") !=
                                      std::string::npos &&
                                  line.find("--restore_cut=3") != std::string::npos;
                         }),
            lines.end());
}

TEST(SummaryJsonTest, ListsTheRowsEachShardOwnsOfASplitParameter) {
  RunSummary summary = ExampleSummary();
  std::string error;
  std::optional<JsonValue> v = JsonReader::Parse(SummaryJson(summary), &error);
  ASSERT_TRUE(v.has_value()) << error;
  ASSERT_NE(v->Get("split_parameters"), nullptr);
  EXPECT_TRUE(v->Get("split_parameters")->array.empty());  // nothing split
  summary.split_parameters = {{"fc2.weight", {{1, 0, 683}, {0, 683, 1366}, {2, 1366, 2048}}}};
  v = JsonReader::Parse(SummaryJson(summary), &error);
  ASSERT_TRUE(v.has_value()) << error;
  const std::vector<JsonValue>& split = v->Get("split_parameters")->array;
  ASSERT_EQ(split.size(), 1u);
  EXPECT_EQ(split[0].Get("parameter")->string, "fc2.weight");
  const std::vector<JsonValue>& owners = split[0].Get("owners")->array;
  ASSERT_EQ(owners.size(), 3u);
  EXPECT_EQ(owners[1].Get("shard")->number, 0);
  EXPECT_EQ(owners[1].Get("row_begin")->number, 683);
  EXPECT_EQ(owners[1].Get("row_end")->number, 1366);
  EXPECT_EQ(owners[2].Get("shard")->number, 2);
  EXPECT_EQ(owners[2].Get("row_end")->number, 2048);
}

TEST(SummaryJsonTest, RecordsThePrivacySpentAndTheReportNamesIt) {
  RunSummary summary = ExampleSummary();
  std::string error;
  std::optional<JsonValue> v = JsonReader::Parse(SummaryJson(summary), &error);
  ASSERT_TRUE(v.has_value()) << error;
  EXPECT_EQ(v->Get("privacy")->type, JsonValue::Type::kNull);  // the mode off
  summary.privacy = RunPrivacy{.epsilon = 7.25, .delta = 1e-5, .noise_multiplier = 1.0,
                               .clip = 0.5, .sampling_rate = 1.0, .steps = 655};
  v = JsonReader::Parse(SummaryJson(summary), &error);
  ASSERT_TRUE(v.has_value()) << error;
  EXPECT_EQ(v->Get("privacy")->Get("epsilon")->number, 7.25);
  EXPECT_EQ(v->Get("privacy")->Get("delta")->number, 1e-5);
  EXPECT_EQ(v->Get("privacy")->Get("clip")->number, 0.5);
  EXPECT_EQ(v->Get("privacy")->Get("steps")->number, 655);
  const std::vector<std::string> lines = ReportLines(summary);
  EXPECT_NE(std::find_if(lines.begin(), lines.end(),
                         [](const std::string& line) {
                           return line.find("epsilon 7.25, delta 1e-05") != std::string::npos &&
                                  line.find("655 batches") != std::string::npos;
                         }),
            lines.end());
}

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(CurvesSvgTest, IsAWellFormedStandaloneSvgWithFourPanels) {
  RunSummary s = ExampleSummary();
  s.config.clear();
  const std::string svg = CurvesSvg(s);
  std::string error;
  int elements = 0;
  ASSERT_TRUE(testing::WellFormedXml(svg, &error, &elements)) << error;
  EXPECT_TRUE(absl::StartsWith(svg, "<?xml version=\"1.0\""));
  EXPECT_TRUE(absl::StrContains(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
  EXPECT_TRUE(absl::EndsWith(svg, "</svg>\n"));
  // Per panel pair (time, epochs): training loss, test loss; test accuracy, target line.
  EXPECT_EQ(Count(svg, "<polyline"), 8);
  for (const char* title : {"Loss vs time", "Test accuracy vs time", "Loss vs epochs",
                            "Test accuracy vs epochs", "final test accuracy 89.12%"}) {
    EXPECT_TRUE(absl::StrContains(svg, title)) << title;
  }
  // Axis labels and tick labels are text elements: 4 titles + 8 axis labels at least.
  EXPECT_GT(Count(svg, "<text"), 12 + 4 * 4);
}

TEST(CurvesSvgTest, EscapesTextAndSurvivesNoDataAndNonFinitePoints) {
  PlotPanel panel{"a < b & c", "x", "y", {}, {}};
  panel.series.push_back(
      {"odd & points", "#000", {{0, std::nan("")}, {1, 2}, {2, 3}, {HUGE_VAL, 4}}, true});
  PlotPanel empty{"empty", "x", "y", {}, {}};
  const std::string svg = RenderSvgPlot("title \"quoted\"", {panel, empty}, 2);
  std::string error;
  ASSERT_TRUE(testing::WellFormedXml(svg, &error)) << error;
  EXPECT_TRUE(absl::StrContains(svg, "a &lt; b &amp; c"));
  EXPECT_TRUE(absl::StrContains(svg, "no data"));
  EXPECT_TRUE(absl::StrContains(svg, "odd &amp; points"));
  EXPECT_FALSE(absl::StrContains(svg, "nan"));  // non-finite points are dropped
  EXPECT_FALSE(absl::StrContains(svg, "inf"));
}

TEST(NiceTicksTest, CoverTheRangeWithOneTwoFiveSteps) {
  const std::vector<double> a = NiceTicks(0.13, 1.92, 5);
  ASSERT_GE(a.size(), 2u);
  EXPECT_LE(a.front(), 0.13);
  EXPECT_GE(a.back(), 1.92);
  EXPECT_NEAR(a[1] - a[0], 0.5, 1e-12);
  const std::vector<double> b = NiceTicks(78.6, 88.2, 5);
  EXPECT_NEAR(b[1] - b[0], 5.0, 1e-12);  // 9.6 / 4 = 2.4 rounds up to 5
  EXPECT_DOUBLE_EQ(b.front(), 75.0);
  EXPECT_DOUBLE_EQ(b.back(), 90.0);
  const std::vector<double> flat = NiceTicks(5, 5, 5);  // widened, not a single tick
  EXPECT_LT(flat.front(), 5);
  EXPECT_GT(flat.back(), 5);
}

}  // namespace
}  // namespace dion
