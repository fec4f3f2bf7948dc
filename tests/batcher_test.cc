// The per-parameter batcher (server/batcher.h): closing rules, dedup, staleness, weights,
// adaptive targets. Time comes from a FakeClock, so nothing sleeps.
#include "server/batcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"

namespace dion {
namespace {

constexpr char kParameter[] = "fc1.weight";

Contribution MakeRaw(const std::string& worker, uint64_t sequence, int64_t base_version,
                     int64_t samples) {
  Contribution c;
  c.worker_id = worker;
  c.sequence = sequence;
  c.parameter = kParameter;
  c.base_version = base_version;
  c.sample_count = samples;
  c.payload = Matrix::Constant(1, 2, static_cast<float>(sequence));
  return c;
}

// `c` validated as a shard validates a push (for a 1 x 2 AdamW parameter of its name, worker
// registered, any base version): the only way to offer it.
absl::StatusOr<ValidatedContribution> ValidFor(Contribution c) {
  ParamSpec spec;
  spec.name = c.parameter;
  spec.shape = {2};
  spec.optimizer = OptimizerKind::kAdamW;
  return Validate(std::move(c), {spec, std::numeric_limits<int64_t>::max(), true});
}

// MakeRaw, validated. REQUIRES: valid (the test aborts otherwise).
ValidatedContribution Make(const std::string& worker, uint64_t sequence, int64_t base_version,
                           int64_t samples) {
  return ValidFor(MakeRaw(worker, sequence, base_version, samples)).value();
}

// Fixed targets: adaptation (on by default) would change them as batches close.
BatcherOptions OnlyDeadline(absl::Duration deadline = absl::Seconds(1)) {
  BatcherOptions options;
  options.deadline = deadline;
  options.adaptive = false;
  return options;
}

// Offers and expects the contribution accepted, returning the result.
OfferResult Accept(Batcher& batcher, ValidatedContribution c) {
  absl::StatusOr<OfferResult> result = batcher.Offer(std::move(c));
  EXPECT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->result, PushOutcome::kAccepted);
  return *std::move(result);
}

TEST(Batcher, ClosesWhenTheSampleTargetIsReached) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.target_samples = 100;
  Batcher batcher(kParameter, options, 0, &clock);
  EXPECT_FALSE(Accept(batcher, Make("w0", 0, 0, 40)).closed);
  EXPECT_FALSE(Accept(batcher, Make("w0", 1, 0, 59)).closed);
  const OfferResult third = Accept(batcher, Make("w1", 0, 0, 1));
  ASSERT_TRUE(third.closed.has_value());
  EXPECT_EQ(third.closed->reason, CloseReason::kSamples);
  EXPECT_EQ(third.closed->samples, 100);
  EXPECT_EQ(third.closed->entries.size(), 3u);
  EXPECT_EQ(third.closed->workers, 2);
  EXPECT_EQ(third.closed->version, 0);
  EXPECT_EQ(batcher.version(), 1);
  EXPECT_EQ(batcher.stats().open_contributions, 0);
}

TEST(Batcher, ClosesWhenKDistinctWorkersContributed) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.target_workers = 3;
  Batcher batcher(kParameter, options, 0, &clock);
  EXPECT_FALSE(Accept(batcher, Make("a", 0, 0, 1)).closed);
  EXPECT_FALSE(Accept(batcher, Make("a", 1, 0, 1)).closed) << "the same worker counts once";
  EXPECT_FALSE(Accept(batcher, Make("b", 0, 0, 1)).closed);
  const OfferResult last = Accept(batcher, Make("c", 0, 0, 1));
  ASSERT_TRUE(last.closed.has_value());
  EXPECT_EQ(last.closed->reason, CloseReason::kWorkers);
  EXPECT_EQ(last.closed->workers, 3);
  EXPECT_EQ(last.closed->entries.size(), 4u);
}

TEST(Batcher, ClosesAtTheDeadlineAfterTheFirstContribution) {
  FakeClock clock;
  Batcher batcher(kParameter, OnlyDeadline(absl::Milliseconds(50)), 0, &clock);
  EXPECT_FALSE(batcher.NextDeadline().has_value()) << "an empty batch has no deadline";
  EXPECT_FALSE(batcher.CloseIfDue().has_value());
  const absl::Time first = clock.Now();
  Accept(batcher, Make("w", 0, 0, 1));
  ASSERT_TRUE(batcher.NextDeadline().has_value());
  EXPECT_EQ(*batcher.NextDeadline(), first + absl::Milliseconds(50));
  clock.Advance(absl::Milliseconds(30));
  Accept(batcher, Make("w", 1, 0, 1));
  EXPECT_EQ(*batcher.NextDeadline(), first + absl::Milliseconds(50)) << "not reset by later ones";
  clock.Advance(absl::Milliseconds(19));
  EXPECT_FALSE(batcher.CloseIfDue().has_value());
  clock.Advance(absl::Milliseconds(1));
  const std::optional<Batch> batch = batcher.CloseIfDue();
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(batch->reason, CloseReason::kDeadline);
  EXPECT_EQ(batch->entries.size(), 2u);
  EXPECT_EQ(batch->opened, first);
  EXPECT_EQ(batch->closed, first + absl::Milliseconds(50));
  EXPECT_FALSE(batcher.CloseIfDue().has_value());
}

TEST(Batcher, ClosesWhenTheContributionCapIsReached) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.max_contributions = 3;
  Batcher batcher(kParameter, options, 0, &clock);
  Accept(batcher, Make("w", 0, 0, 1));
  Accept(batcher, Make("w", 1, 0, 1));
  const OfferResult third = Accept(batcher, Make("w", 2, 0, 1));
  ASSERT_TRUE(third.closed.has_value());
  EXPECT_EQ(third.closed->reason, CloseReason::kFull);
}

TEST(Batcher, FlushClosesANonEmptyBatchOnly) {
  FakeClock clock;
  Batcher batcher(kParameter, OnlyDeadline(), 5, &clock);
  EXPECT_FALSE(batcher.Flush().has_value());
  Accept(batcher, Make("w", 0, 5, 1));
  const std::optional<Batch> batch = batcher.Flush();
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(batch->reason, CloseReason::kFlush);
  EXPECT_EQ(batch->version, 5);
  EXPECT_EQ(batcher.version(), 6);
}

TEST(Batcher, DuplicateSequenceIsAcknowledgedAndAppliedOnce) {
  FakeClock clock;
  Batcher batcher(kParameter, OnlyDeadline(), 0, &clock);
  Accept(batcher, Make("w", 7, 0, 1));
  const absl::StatusOr<OfferResult> again = batcher.Offer(Make("w", 7, 0, 1));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->result, PushOutcome::kDuplicate);
  // A duplicate of a contribution already in a closed batch is still a duplicate.
  const std::optional<Batch> batch = batcher.Flush();
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(batch->entries.size(), 1u);
  EXPECT_EQ(batcher.Offer(Make("w", 7, 1, 1))->result, PushOutcome::kDuplicate);
  const BatcherStats stats = batcher.stats();
  EXPECT_EQ(stats.accepted, 1);
  EXPECT_EQ(stats.duplicate, 2);
  EXPECT_EQ(stats.open_contributions, 0);
}

TEST(Batcher, SameSequenceFromAnotherWorkerIsNotADuplicate) {
  FakeClock clock;
  Batcher batcher(kParameter, OnlyDeadline(), 0, &clock);
  Accept(batcher, Make("a", 1, 0, 1));
  Accept(batcher, Make("b", 1, 0, 1));
  EXPECT_EQ(batcher.stats().open_contributions, 2);
}

// Closes `count` batches so the batcher's version advances.
void AdvanceVersions(Batcher& batcher, int count) {
  for (int i = 0; i < count; ++i) {
    Accept(batcher, Make("advance", 1000 + batcher.version(), batcher.version(), 1));
    ASSERT_TRUE(batcher.Flush().has_value());
  }
}

TEST(Batcher, StaleContributionIsRefusedAndChangesNothing) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.staleness.max_staleness = 2;
  Batcher batcher(kParameter, options, 0, &clock);
  AdvanceVersions(batcher, 3);
  Accept(batcher, Make("w", 0, 3, 4));  // fresh, stays open
  const auto before_dedup = batcher.ExportDedup();
  const BatcherStats before = batcher.stats();

  const absl::StatusOr<OfferResult> stale = batcher.Offer(Make("w", 1, 0, 10));  // tau 3 > 2
  ASSERT_TRUE(stale.ok());
  EXPECT_EQ(stale->result, PushOutcome::kStale);
  EXPECT_EQ(stale->version, 3);
  EXPECT_EQ(stale->staleness, 3);
  EXPECT_FALSE(stale->closed.has_value());

  const BatcherStats after = batcher.stats();
  EXPECT_EQ(after.open_contributions, before.open_contributions);
  EXPECT_EQ(after.open_samples, before.open_samples);
  EXPECT_EQ(after.accepted, before.accepted);
  EXPECT_EQ(after.stale, before.stale + 1);
  EXPECT_EQ(batcher.version(), 3);
  const auto after_dedup = batcher.ExportDedup();
  ASSERT_EQ(after_dedup.size(), before_dedup.size());
  for (size_t i = 0; i < after_dedup.size(); ++i) {
    EXPECT_EQ(after_dedup[i].floor, before_dedup[i].floor);
    EXPECT_EQ(after_dedup[i].seen, before_dedup[i].seen);
  }
  // Not remembered: the same sequence computed against a fresh version is accepted.
  EXPECT_EQ(batcher.Offer(Make("w", 1, 2, 10))->result, PushOutcome::kAccepted);
}

TEST(Batcher, RefusesBaseVersionFromTheFutureWithOutOfRange) {
  FakeClock clock;
  Batcher batcher(kParameter, OnlyDeadline(), 4, &clock);
  const absl::StatusOr<OfferResult> future = batcher.Offer(Make("w", 0, 5, 1));
  ASSERT_FALSE(future.ok());
  EXPECT_EQ(future.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(future.status().message().find("base_version 5"), absl::string_view::npos);
  // A negative base version cannot even be offered: validation refuses it.
  EXPECT_EQ(ValidFor(MakeRaw("w", 0, -1, 1)).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(batcher.stats().accepted, 0);
  EXPECT_TRUE(batcher.ExportDedup().empty());
  // The sequence was not consumed.
  Accept(batcher, Make("w", 0, 4, 1));
}

TEST(Batcher, RefusesNonPositiveSampleCountAndForeignParameter) {
  FakeClock clock;
  Batcher batcher(kParameter, OnlyDeadline(), 0, &clock);
  // A non-positive sample count cannot even be offered: validation refuses it.
  EXPECT_EQ(ValidFor(MakeRaw("w", 0, 0, 0)).status().code(), absl::StatusCode::kInvalidArgument);
  Contribution other = MakeRaw("w", 0, 0, 1);
  other.parameter = "other";
  EXPECT_EQ(batcher.Offer(ValidFor(std::move(other)).value()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(batcher.stats().accepted, 0);
}

// Weights are samples * w(tau) normalised; with the inverse policy and version 3:
// (10 samples, tau 0) -> 10, (20, tau 1) -> 10, (5, tau 3) -> 1.25; total 21.25.
TEST(Batcher, WeightsAreSamplesTimesStalenessWeightNormalised) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.staleness.kind = StalenessKind::kInverse;
  Batcher batcher(kParameter, options, 0, &clock);
  AdvanceVersions(batcher, 3);
  EXPECT_DOUBLE_EQ(Accept(batcher, Make("a", 0, 3, 10)).weight, 1.0);
  EXPECT_DOUBLE_EQ(Accept(batcher, Make("b", 0, 2, 20)).weight, 0.5);
  EXPECT_DOUBLE_EQ(Accept(batcher, Make("c", 0, 0, 5)).weight, 0.25);
  const std::optional<Batch> batch = batcher.Flush();
  ASSERT_TRUE(batch.has_value());
  ASSERT_EQ(batch->entries.size(), 3u);
  EXPECT_EQ(batch->version, 3);
  EXPECT_EQ(batch->entries[0].staleness, 0);
  EXPECT_EQ(batch->entries[1].staleness, 1);
  EXPECT_EQ(batch->entries[2].staleness, 3);
  EXPECT_NEAR(batch->entries[0].weight, 10 / 21.25, 1e-15);
  EXPECT_NEAR(batch->entries[1].weight, 10 / 21.25, 1e-15);
  EXPECT_NEAR(batch->entries[2].weight, 1.25 / 21.25, 1e-15);
}

// A batch lists its contributions by (worker, sequence) whatever the arrival order, and its
// weights are the same doubles: the sum they are normalised by runs in that order too.
TEST(Batcher, EntriesAndWeightsDoNotDependOnArrivalOrder) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.staleness.kind = StalenessKind::kInverse;
  // At version 6, raw weights 1/3, 1/4, 1/6 and 3/7: summed first to last they give
  // 1.1785714285714284, last to first 1.1785714285714286.
  const std::vector<ValidatedContribution> pushes = {Make("b", 7, 4, 1), Make("a", 9, 3, 1),
                                            Make("a", 8, 1, 1), Make("c", 1, 0, 3)};
  std::vector<Batch> batches;
  for (bool reversed : {false, true}) {
    Batcher batcher(kParameter, options, 0, &clock);
    AdvanceVersions(batcher, 6);
    std::vector<ValidatedContribution> order = pushes;
    if (reversed) std::reverse(order.begin(), order.end());
    for (const ValidatedContribution& c : order) Accept(batcher, c);
    batches.push_back(*batcher.Flush());
  }
  const std::vector<std::pair<std::string, uint64_t>> expected = {
      {"a", 8}, {"a", 9}, {"b", 7}, {"c", 1}};
  for (const Batch& batch : batches) {
    ASSERT_EQ(batch.entries.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(batch.entries[i].contribution->worker_id, expected[i].first) << i;
      EXPECT_EQ(batch.entries[i].contribution->sequence, expected[i].second) << i;
    }
  }
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(batches[0].entries[i].weight, batches[1].entries[i].weight) << i;  // bit for bit
  }
}

TEST(Batcher, ExpPolicyWeightsMatchTheFormula) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.staleness = {StalenessKind::kExp, /*tau0=*/2.0, /*max_staleness=*/8};
  Batcher batcher(kParameter, options, 0, &clock);
  AdvanceVersions(batcher, 4);
  Accept(batcher, Make("a", 0, 4, 3));  // w = 1
  Accept(batcher, Make("b", 0, 0, 3));  // w = exp(-2)
  const Batch batch = *batcher.Flush();
  const double total = 3 + 3 * std::exp(-2.0);
  EXPECT_NEAR(batch.entries[0].weight, 3 / total, 1e-15);
  EXPECT_NEAR(batch.entries[1].weight, 3 * std::exp(-2.0) / total, 1e-15);
}

// One sample arrives every millisecond (1000 samples/s) and a step takes 20 ms, so the
// adaptive target converges to about 20 samples per batch.
TEST(Batcher, AdaptiveSampleTargetFollowsArrivalRateTimesStepDuration) {
  FakeClock clock;
  // The deadline is long so that, once a rate is known, the sample target closes the batches.
  BatcherOptions options = OnlyDeadline(absl::Milliseconds(100));
  options.adaptive = true;
  options.target_samples = 0;
  options.min_step_interval = absl::Milliseconds(1);
  options.smoothing = 0.5;
  Batcher batcher(kParameter, options, 0, &clock);
  EXPECT_EQ(batcher.targets().samples, 0) << "no rate measured yet";
  batcher.ReportStepDuration(absl::Milliseconds(20));
  uint64_t sequence = 0;
  int closed_on_samples = 0;
  for (int i = 0; i < 400; ++i) {
    clock.Advance(absl::Milliseconds(1));
    if (batcher.CloseIfDue()) continue;
    const OfferResult r = Accept(batcher, Make("w", sequence++, batcher.version(), 1));
    if (r.closed && r.closed->reason == CloseReason::kSamples) ++closed_on_samples;
  }
  EXPECT_NEAR(batcher.arrival_rate(), 1000.0, 100.0);
  EXPECT_GE(batcher.targets().samples, 18);
  EXPECT_LE(batcher.targets().samples, 22);
  EXPECT_GT(closed_on_samples, 5) << "once adapted, batches close on the sample target";
}

TEST(Batcher, AdaptiveSampleTargetRespectsItsClamps) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline(absl::Milliseconds(1));
  options.adaptive = true;
  options.min_target_samples = 4;
  options.max_target_samples = 6;
  Batcher batcher(kParameter, options, 0, &clock);
  batcher.ReportStepDuration(absl::Seconds(10));  // would ask for thousands of samples
  for (uint64_t s = 0; s < 50; ++s) {
    clock.Advance(absl::Milliseconds(1));
    batcher.CloseIfDue();
    Accept(batcher, Make("w", s, batcher.version(), 1));
  }
  EXPECT_EQ(batcher.targets().samples, 6);
}

// K = 4 configured but only two workers are alive: a batch needs both, not four.
TEST(Batcher, AdaptiveWorkerTargetShrinksToTheLiveWorkers) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline(absl::Seconds(1));
  options.adaptive = true;
  options.target_workers = 4;
  options.worker_idle = absl::Seconds(5);
  Batcher batcher(kParameter, options, 0, &clock);
  // Warm up: both workers seen.
  Accept(batcher, Make("a", 0, 0, 1));
  Accept(batcher, Make("b", 0, batcher.version(), 1));
  batcher.Flush();
  EXPECT_EQ(batcher.targets().workers, 2);
  EXPECT_FALSE(Accept(batcher, Make("a", 1, batcher.version(), 1)).closed);
  const OfferResult second = Accept(batcher, Make("b", 1, batcher.version(), 1));
  ASSERT_TRUE(second.closed.has_value());
  EXPECT_EQ(second.closed->reason, CloseReason::kWorkers);
  // A worker silent for longer than worker_idle no longer counts.
  clock.Advance(absl::Seconds(6));
  Accept(batcher, Make("a", 2, batcher.version(), 1));
  EXPECT_EQ(batcher.targets().workers, 1);
}

TEST(Batcher, DedupStateSurvivesExportAndImport) {
  FakeClock clock;
  Batcher batcher(kParameter, OnlyDeadline(), 0, &clock);
  for (uint64_t s : {0, 1, 2, 9}) Accept(batcher, Make("a", s, 0, 1));
  Accept(batcher, Make("b", 4, 0, 1));
  Batcher restored(kParameter, OnlyDeadline(), 0, &clock);
  restored.ImportDedup(batcher.ExportDedup());
  for (uint64_t s : {0, 1, 2, 9}) {
    EXPECT_EQ(restored.Offer(Make("a", s, 0, 1))->result, PushOutcome::kDuplicate) << s;
  }
  EXPECT_EQ(restored.Offer(Make("b", 4, 0, 1))->result, PushOutcome::kDuplicate);
  EXPECT_EQ(restored.Offer(Make("a", 3, 0, 1))->result, PushOutcome::kAccepted);
}

// Before the fix, a sequence the window's floor was forced past without it ever arriving was
// answered DUPLICATE, and the worker dropped a contribution the shard never applied.
TEST(Batcher, SequenceBelowAForcedDedupFloorIsRefusedDataLossNotDuplicate) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.dedup_window = 8;
  Batcher batcher(kParameter, options, 0, &clock);
  Accept(batcher, Make("w", 0, 0, 1));
  Accept(batcher, Make("w", 20, 0, 1));  // forces the floor to 13, past 1..12
  const BatcherStats before = batcher.stats();
  const auto before_dedup = batcher.ExportDedup();

  const absl::StatusOr<OfferResult> old = batcher.Offer(Make("w", 5, 0, 1));
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.status().code(), absl::StatusCode::kDataLoss);
  for (const char* part : {"sequence 5", "'w'", "older than the dedup window", "floor 13",
                           "window 8", "NOT applied", "cannot tell whether it was applied",
                           "fewer than 8 unacknowledged"}) {
    EXPECT_NE(old.status().message().find(part), absl::string_view::npos)
        << part << " missing from: " << old.status().message();
  }
  // Nothing changed, and it stays refused (it is not recorded as seen).
  EXPECT_EQ(batcher.stats().open_contributions, before.open_contributions);
  EXPECT_EQ(batcher.stats().accepted, before.accepted);
  EXPECT_EQ(batcher.stats().unknown, 1);
  EXPECT_EQ(batcher.ExportDedup()[0].seen, before_dedup[0].seen);
  EXPECT_EQ(batcher.Offer(Make("w", 5, 0, 1)).status().code(), absl::StatusCode::kDataLoss);
  // Sequences of the window are still judged normally; other workers are unaffected.
  EXPECT_EQ(batcher.Offer(Make("w", 20, 0, 1))->result, PushOutcome::kDuplicate);
  Accept(batcher, Make("w", 14, 0, 1));
  Accept(batcher, Make("other", 5, 0, 1));
}

TEST(Batcher, SequenceHorizonIsTheLargerOfWindowAndClockBoundsAndSaturates) {
  const absl::Time epoch = absl::UnixEpoch();
  EXPECT_EQ(SequenceHorizon(0, 8, epoch), kSequenceClockSlackMicros);
  EXPECT_EQ(SequenceHorizon(kSequenceClockSlackMicros, 8, epoch), kSequenceClockSlackMicros + 8);
  EXPECT_EQ(SequenceHorizon(5, 8, epoch + absl::Microseconds(1000)),
            1000 + kSequenceClockSlackMicros);
  const uint64_t top = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(SequenceHorizon(top - 3, 8, epoch), top);
  EXPECT_EQ(SequenceHorizon(0, 8, absl::InfinitePast()), kSequenceClockSlackMicros);
}

// Before the fix 2^64-1 was accepted and forced the floor to the top: every later sequence was
// DataLoss. Now it is refused, nothing is recorded, and the worker goes on.
TEST(Batcher, SequenceBeyondTheHorizonIsRefusedAndNothingIsRecorded) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.dedup_window = 8;
  Batcher batcher(kParameter, options, 0, &clock);
  // Make with a payload of ones (Make's payload is the sequence, above the magnitude limit).
  const auto Seq = [](const std::string& worker, uint64_t sequence) {
    Contribution c = MakeRaw(worker, sequence, 0, 1);
    c.payload = Matrix(Matrix::Ones(1, 2));
    return ValidFor(std::move(c)).value();
  };
  const uint64_t horizon = kSequenceClockSlackMicros;  // clock at the Unix epoch
  const absl::StatusOr<OfferResult> fresh = batcher.Offer(Seq("new", horizon + 1));
  EXPECT_EQ(fresh.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(batcher.ExportDedup().empty());  // not even a window for the new worker
  Accept(batcher, Seq("w", 0));
  const BatcherStats before = batcher.stats();
  const auto before_dedup = batcher.ExportDedup();
  for (uint64_t s : {std::numeric_limits<uint64_t>::max(), horizon + 1}) {
    const absl::StatusOr<OfferResult> far = batcher.Offer(Seq("w", s));
    ASSERT_FALSE(far.ok()) << s;
    EXPECT_EQ(far.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(far.status().message().find("beyond the sequence horizon"),
              absl::string_view::npos) << far.status();
  }
  EXPECT_EQ(batcher.stats().accepted, before.accepted);
  EXPECT_EQ(batcher.stats().open_contributions, before.open_contributions);
  ASSERT_EQ(batcher.ExportDedup().size(), 1u);
  EXPECT_EQ(batcher.ExportDedup()[0].floor, before_dedup[0].floor);
  EXPECT_EQ(batcher.ExportDedup()[0].forced_floor, before_dedup[0].forced_floor);
  Accept(batcher, Seq("w", 1));
  // Up to the horizon a jump (a worker restarted with wall-clock sequences) is still accepted,
  // and then moves the horizon by the window.
  Accept(batcher, Seq("w", horizon));
  Accept(batcher, Seq("w", horizon + 8));
  EXPECT_EQ(batcher.Offer(Seq("w", horizon + 17)).status().code(),
            absl::StatusCode::kInvalidArgument);
  clock.Advance(absl::Microseconds(100));
  Accept(batcher, Seq("w", horizon + 100));
}

TEST(Batcher, ForcedDedupFloorSurvivesExportAndImport) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.dedup_window = 8;
  Batcher batcher(kParameter, options, 0, &clock);
  for (uint64_t s : {0, 1, 30}) Accept(batcher, Make("w", s, 0, 1));
  const std::vector<WorkerDedupState> exported = batcher.ExportDedup();
  ASSERT_EQ(exported.size(), 1u);
  EXPECT_EQ(exported[0].forced_floor, 23u);
  Batcher restored(kParameter, options, 0, &clock);
  restored.ImportDedup(exported);
  EXPECT_EQ(restored.Offer(Make("w", 1, 0, 1)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(restored.Offer(Make("w", 30, 0, 1))->result, PushOutcome::kDuplicate);
}

// --adaptive_batching defaults to true (server/main.cc); the option struct must agree, or a
// shard built from default options (tests, tools) batches differently from the binary.
TEST(Batcher, DefaultOptionsAdaptLikeTheServerFlag) {
  EXPECT_TRUE(BatcherOptions{}.adaptive);
}

TEST(Batcher, ValidationRejectsOptionsWithoutAClosingRule) {
  BatcherOptions options;
  options.deadline = absl::InfiniteDuration();
  options.adaptive = false;
  const absl::Status status = ValidateBatcherOptions(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("no closing rule"), absl::string_view::npos);
  EXPECT_TRUE(ValidateBatcherOptions(BatcherOptions{}).ok());
  options.target_samples = 10;
  EXPECT_TRUE(ValidateBatcherOptions(options).ok());
  options.smoothing = 0;
  EXPECT_EQ(ValidateBatcherOptions(options).code(), absl::StatusCode::kInvalidArgument);
}

// 8 threads x 200 offers, every contribution sent twice: each is accepted exactly once and
// the closed batches hold exactly the accepted contributions.
TEST(Batcher, ConcurrentRetriesAreAcceptedExactlyOnce) {
  FakeClock clock;
  BatcherOptions options = OnlyDeadline();
  options.target_samples = 37;
  options.staleness.kind = StalenessKind::kNone;
  options.staleness.max_staleness = 1 << 30;
  Batcher batcher(kParameter, options, 0, &clock);
  Mutex mu;
  int64_t in_batches = 0;
  std::atomic<int64_t> accepted{0}, duplicates{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t s = 0; s < 100; ++s) {
        for (int attempt = 0; attempt < 2; ++attempt) {
          absl::StatusOr<OfferResult> r = batcher.Offer(Make(absl::StrCat("w", t), s, 0, 1));
          ASSERT_TRUE(r.ok()) << r.status();
          if (r->result == PushOutcome::kAccepted) ++accepted;
          if (r->result == PushOutcome::kDuplicate) ++duplicates;
          if (r->closed) {
            MutexLock lock(&mu);
            in_batches += static_cast<int64_t>(r->closed->entries.size());
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  if (std::optional<Batch> rest = batcher.Flush()) in_batches += rest->entries.size();
  EXPECT_EQ(accepted.load(), 800);
  EXPECT_EQ(duplicates.load(), 800);
  EXPECT_EQ(in_batches, 800);
  EXPECT_EQ(batcher.stats().accepted, 800);
}

// A journal that records what the batcher reports, and can be told to fail.
class RecordingJournal : public BatchJournal {
 public:
  absl::StatusOr<uint64_t> Accepted(const Contribution& c) override {
    if (fail) return absl::UnavailableError("disk full");
    accepted.push_back(c.sequence);
    return ++end;
  }
  absl::StatusOr<uint64_t> Closed(const Batch& batch) override {
    closed.push_back(Logged(batch));
    return ++end;
  }
  static LoggedBatch Logged(const Batch& batch) {
    LoggedBatch logged{batch.parameter, batch.version, batch.reason, {}};
    for (const WeightedContribution& e : batch.entries) {
      logged.members.push_back(
          {e.contribution->worker_id, e.contribution->sequence, e.staleness, e.weight});
    }
    return logged;
  }
  bool fail = false;
  uint64_t end = 0;
  std::vector<uint64_t> accepted;
  std::vector<LoggedBatch> closed;
};

TEST(Batcher, JournalRecordsAcceptedContributionsAndClosedBatchesBeforeTheAck) {
  FakeClock clock;
  RecordingJournal journal;
  BatcherOptions options = OnlyDeadline();
  options.target_samples = 3;
  Batcher batcher(kParameter, options, 0, &clock, &journal);
  EXPECT_EQ(Accept(batcher, Make("w0", 0, 0, 1)).journal_end, 1u);
  EXPECT_EQ(batcher.Offer(Make("w0", 0, 0, 1)).value().result, PushOutcome::kDuplicate);
  const OfferResult third = Accept(batcher, Make("w1", 5, 0, 2));
  ASSERT_TRUE(third.closed.has_value());
  EXPECT_EQ(third.journal_end, 3u);  // its record, then the batch's
  EXPECT_EQ(journal.accepted, (std::vector<uint64_t>{0, 5}));
  ASSERT_EQ(journal.closed.size(), 1u);
  EXPECT_EQ(journal.closed[0].version, 0);
  ASSERT_EQ(journal.closed[0].members.size(), 2u);
  EXPECT_EQ(journal.closed[0].members[1].worker_id, "w1");
  EXPECT_DOUBLE_EQ(journal.closed[0].members[1].weight, 2.0 / 3.0);

  // A journal that cannot record refuses the contribution, and nothing changes.
  journal.fail = true;
  absl::StatusOr<OfferResult> refused = batcher.Offer(Make("w0", 1, 0, 1));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(batcher.AlreadyAccepted("w0", 1));
  EXPECT_EQ(batcher.stats().open_contributions, 0);
  journal.fail = false;
  EXPECT_EQ(Accept(batcher, Make("w0", 1, 0, 1)).result, PushOutcome::kAccepted);
}

TEST(Batcher, RestoreRebuildsTheBatchesAsLoggedAndRefusesWhatDisagrees) {
  FakeClock clock;
  RecordingJournal journal;
  BatcherOptions options = OnlyDeadline();
  options.target_samples = 3;
  options.staleness.kind = StalenessKind::kInverse;  // the second batch has tau = 1
  Batcher original(kParameter, options, 0, &clock, &journal);
  std::vector<Batch> applied;
  for (uint64_t s = 0; s < 7; ++s) {
    OfferResult r = Accept(original, Make(s % 2 ? "w1" : "w0", s, 0, 1));
    if (r.closed) applied.push_back(*std::move(r.closed));
  }
  ASSERT_EQ(journal.closed.size(), 2u);

  // Replayed into a fresh batcher (different options: the logged weights win).
  BatcherOptions other = options;
  other.staleness.kind = StalenessKind::kNone;
  Batcher replayed(kParameter, other, 0, &clock, &journal);
  size_t next_batch = 0;
  for (uint64_t s = 0; s < 7; ++s) {
    ASSERT_TRUE(replayed.Restore(Make(s % 2 ? "w1" : "w0", s, 0, 1)).ok());
    if (s == 2 || s == 5) {
      absl::StatusOr<Batch> b = replayed.RestoreClose(journal.closed[next_batch]);
      ASSERT_TRUE(b.ok()) << b.status();
      const Batch& want = applied[next_batch++];
      EXPECT_EQ(b->version, want.version);
      ASSERT_EQ(b->entries.size(), want.entries.size());
      for (size_t i = 0; i < want.entries.size(); ++i) {
        EXPECT_EQ(b->entries[i].contribution->sequence, want.entries[i].contribution->sequence);
        EXPECT_EQ(b->entries[i].weight, want.entries[i].weight);  // bit for bit
      }
    }
  }
  EXPECT_EQ(journal.closed.size(), 2u) << "a replay must not be journaled again";
  EXPECT_EQ(replayed.version(), 2);
  EXPECT_EQ(replayed.stats().open_contributions, 1);
  EXPECT_TRUE(replayed.AlreadyAccepted("w0", 6));

  // A sequence replayed twice, and a batch whose members are not the open ones: DataLoss.
  EXPECT_EQ(replayed.Restore(Make("w0", 6, 0, 1)).code(), absl::StatusCode::kDataLoss);
  LoggedBatch wrong = journal.closed[1];
  wrong.version = 2;
  EXPECT_EQ(replayed.RestoreClose(wrong).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace dion
