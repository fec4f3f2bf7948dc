// Bounded-memory dedup of sequence numbers (server/sequence_window.h).
#include "server/sequence_window.h"

#include <gtest/gtest.h>

namespace dion {
namespace {

TEST(SequenceWindow, RemembersAcceptedSequencesOnly) {
  SequenceWindow window(16);
  EXPECT_FALSE(window.Contains(0));
  window.Insert(0);
  window.Insert(5);
  EXPECT_TRUE(window.Contains(0));
  EXPECT_TRUE(window.Contains(5));
  EXPECT_FALSE(window.Contains(1));
  EXPECT_FALSE(window.Contains(4));
  EXPECT_FALSE(window.Contains(6));
}

TEST(SequenceWindow, ContiguousSequencesCostConstantMemory) {
  SequenceWindow window(8);
  for (uint64_t s = 0; s < 1000; ++s) {
    ASSERT_FALSE(window.Contains(s));
    window.Insert(s);
    ASSERT_EQ(window.memory_entries(), 0u) << "the floor should absorb a contiguous run";
  }
  EXPECT_EQ(window.floor(), 1000u);
  for (uint64_t s = 0; s < 1000; ++s) EXPECT_TRUE(window.Contains(s));
}

TEST(SequenceWindow, OutOfOrderArrivalsFillInAndAdvanceTheFloor) {
  SequenceWindow window(8);
  window.Insert(2);
  window.Insert(1);
  EXPECT_EQ(window.floor(), 0u);
  window.Insert(0);
  EXPECT_EQ(window.floor(), 3u);
  EXPECT_EQ(window.memory_entries(), 0u);
}

// Gaps (sequences used for other parameters) never hold more than `window` entries; a
// sequence older than the window is answered as already seen.
TEST(SequenceWindow, MemoryStaysBoundedWithGapsAndOldSequencesCountAsSeen) {
  SequenceWindow window(4);
  for (uint64_t s = 1; s < 400; s += 3) {
    window.Insert(s);
    ASSERT_LE(window.memory_entries(), 4u);
  }
  EXPECT_TRUE(window.Contains(2)) << "far below the window: treated as a duplicate";
  EXPECT_FALSE(window.Contains(399));  // 397 was the last inserted; 399 never was
  EXPECT_TRUE(window.Contains(397));
}

TEST(SequenceWindow, RestoreReproducesTheState) {
  SequenceWindow window(32);
  for (uint64_t s : {0, 1, 2, 7, 9, 30}) window.Insert(s);
  SequenceWindow restored(32);
  restored.Restore(window.floor(), window.SeenAboveFloor());
  for (uint64_t s = 0; s < 64; ++s) EXPECT_EQ(restored.Contains(s), window.Contains(s)) << s;
}

}  // namespace
}  // namespace dion
