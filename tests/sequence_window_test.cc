// Bounded-memory dedup of sequence numbers (server/sequence_window.h).
#include "server/sequence_window.h"

#include <gtest/gtest.h>

namespace dion {
namespace {

using State = SequenceWindow::State;

TEST(SequenceWindow, RemembersAcceptedSequencesOnly) {
  SequenceWindow window(16);
  EXPECT_EQ(window.Lookup(0), State::kNew);
  window.Insert(0);
  window.Insert(5);
  EXPECT_EQ(window.Lookup(0), State::kSeen);
  EXPECT_EQ(window.Lookup(5), State::kSeen);
  EXPECT_EQ(window.Lookup(1), State::kNew);
  EXPECT_EQ(window.Lookup(4), State::kNew);
  EXPECT_EQ(window.Lookup(6), State::kNew);
}

TEST(SequenceWindow, ContiguousSequencesCostConstantMemory) {
  SequenceWindow window(8);
  for (uint64_t s = 0; s < 1000; ++s) {
    ASSERT_EQ(window.Lookup(s), State::kNew);
    window.Insert(s);
    ASSERT_EQ(window.memory_entries(), 0u) << "the floor should absorb a contiguous run";
  }
  EXPECT_EQ(window.floor(), 1000u);
  EXPECT_EQ(window.forced_floor(), 0u) << "filling in never forces the floor";
  for (uint64_t s = 0; s < 1000; ++s) EXPECT_EQ(window.Lookup(s), State::kSeen) << s;
}

TEST(SequenceWindow, OutOfOrderArrivalsFillInAndAdvanceTheFloor) {
  SequenceWindow window(8);
  window.Insert(2);
  window.Insert(1);
  EXPECT_EQ(window.floor(), 0u);
  window.Insert(0);
  EXPECT_EQ(window.floor(), 3u);
  EXPECT_EQ(window.memory_entries(), 0u);
  EXPECT_EQ(window.Lookup(1), State::kSeen);
}

// The bug this pins: a sequence the floor was forced past without it ever arriving used to
// count as seen, so its (first!) arrival was answered DUPLICATE and the worker dropped data
// the shard never applied. Now it is unknown.
TEST(SequenceWindow, ASequenceTheFloorWasForcedPastIsUnknownNotSeen) {
  SequenceWindow window(4);
  window.Insert(0);
  window.Insert(1);  // floor 2 by filling in: 0 and 1 are seen
  window.Insert(3);
  window.Insert(9);  // 9 >= 2 + 4: floor forced to 6, past 2, 4, 5 which never arrived
  EXPECT_EQ(window.floor(), 6u);
  EXPECT_EQ(window.Lookup(5), State::kUnknown);
  EXPECT_EQ(window.Lookup(4), State::kUnknown);
  EXPECT_EQ(window.Lookup(2), State::kUnknown);
  // 3 arrived, but lies below the highest sequence passed over unseen (5): the window keeps
  // one number, so it cannot tell 3 from 2 any more.
  EXPECT_EQ(window.Lookup(3), State::kUnknown);
  EXPECT_EQ(window.Lookup(0), State::kUnknown);
  EXPECT_EQ(window.Lookup(9), State::kSeen);
  EXPECT_EQ(window.Lookup(7), State::kNew);
}

TEST(SequenceWindow, AcceptedSequencesRightBelowAForcedFloorStaySeen) {
  SequenceWindow window(4);
  window.Insert(2);
  window.Insert(3);
  window.Insert(4);  // 0 and 1 never arrived; floor still 0
  window.Insert(6);  // forced to 3: passes over 0, 1 (unseen) and 2 (seen)
  EXPECT_EQ(window.forced_floor(), 2u);
  EXPECT_EQ(window.Lookup(1), State::kUnknown);
  EXPECT_EQ(window.Lookup(2), State::kSeen);
  EXPECT_EQ(window.Lookup(3), State::kSeen);
  // Later filling in above the forced floor is seen again.
  window.Insert(5);
  EXPECT_EQ(window.floor(), 7u);
  EXPECT_EQ(window.Lookup(5), State::kSeen);
  EXPECT_EQ(window.forced_floor(), 2u);
}

// Gaps (sequences used for other parameters) never hold more than `window` entries.
TEST(SequenceWindow, MemoryStaysBoundedWithGaps) {
  SequenceWindow window(4);
  for (uint64_t s = 1; s < 400; s += 3) {
    window.Insert(s);
    ASSERT_LE(window.memory_entries(), 4u);
  }
  EXPECT_EQ(window.Lookup(2), State::kUnknown) << "far below the window";
  EXPECT_EQ(window.Lookup(399), State::kNew);  // 397 was the last inserted; 399 never was
  EXPECT_EQ(window.Lookup(397), State::kSeen);
}

TEST(SequenceWindow, RestoreReproducesTheState) {
  SequenceWindow window(32);
  for (uint64_t s : {0, 1, 2, 7, 9, 30, 50}) window.Insert(s);
  ASSERT_GT(window.forced_floor(), 0u);
  SequenceWindow restored(32);
  restored.Restore(window.floor(), window.forced_floor(), window.SeenAboveFloor());
  for (uint64_t s = 0; s < 100; ++s) EXPECT_EQ(restored.Lookup(s), window.Lookup(s)) << s;
}

// A state saved before forced floors existed restores with forced floor 0: everything below
// the floor is seen, as it was then.
TEST(SequenceWindow, RestoreWithoutAForcedFloorTreatsEverythingBelowTheFloorAsSeen) {
  SequenceWindow restored(8);
  restored.Restore(20, 0, {22});
  EXPECT_EQ(restored.Lookup(3), State::kSeen);
  EXPECT_EQ(restored.Lookup(21), State::kNew);
  EXPECT_EQ(restored.Lookup(22), State::kSeen);
  SequenceWindow clamped(8);
  clamped.Restore(20, 25, {});
  EXPECT_EQ(clamped.forced_floor(), 20u) << "a forced floor above the floor is lowered to it";
}

}  // namespace
}  // namespace dion
