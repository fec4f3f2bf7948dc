// Text encodings of a shard checkpoint (server/checkpoint/checkpoint_encoding.h): escaped names and the
// dedup state, including checkpoints written before the forced dedup floor existed.
#include "server/checkpoint/checkpoint_encoding.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"

namespace dion {
namespace {

TEST(CheckpointEncodingTest, EscapeRoundTripsAndKeepsSafeBytes) {
  for (const std::string name : {"fc1.weight", "enc/ln 1.bias+%", ".hidden", "a,b", "\xff\x01"}) {
    const std::string escaped = Escape(name);
    EXPECT_EQ(escaped.find_first_of("/ ,%"), std::string::npos) << escaped;
    EXPECT_FALSE(absl::StartsWith(escaped, ".")) << escaped;
    EXPECT_EQ(Unescape(escaped).value(), name);
  }
  EXPECT_EQ(Escape("fc1.weight"), "fc1.weight");
  EXPECT_EQ(Escape("a b"), "a+20b");
  EXPECT_FALSE(Unescape("a+2").ok());
  EXPECT_FALSE(Unescape("a+zz").ok());
}

TEST(CheckpointEncodingTest, LongStemsAreCutAndStayDistinct) {
  const std::string a(300, 'a'), b = std::string(299, 'a') + "b";
  EXPECT_EQ(FileStem(a).size(), kMaxFileStem);
  EXPECT_NE(FileStem(a), FileStem(b));
  EXPECT_TRUE(absl::StrContains(FileStem(a), "++"));
}

TEST(CheckpointEncodingTest, DedupStateRoundTripsWithTheForcedFloor) {
  const std::vector<std::vector<WorkerDedupState>> dedup = {
      {{"w 0", 13, 9, {15, 20}}, {"w1", 4, 0, {}}},
      {},
      {{"x", 0, 0, {3}}}};
  const std::string text = SerializeDedupState(dedup);
  EXPECT_TRUE(absl::StrContains(text, "0 w+200 13:9 15 20\n")) << text;
  absl::StatusOr<std::vector<std::vector<WorkerDedupState>>> parsed = ParseDedupState(text, 3);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->size(), 3u);
  ASSERT_EQ((*parsed)[0].size(), 2u);
  EXPECT_EQ((*parsed)[0][0].worker_id, "w 0");
  EXPECT_EQ((*parsed)[0][0].floor, 13u);
  EXPECT_EQ((*parsed)[0][0].forced_floor, 9u);
  EXPECT_EQ((*parsed)[0][0].seen, (std::vector<uint64_t>{15, 20}));
  EXPECT_TRUE((*parsed)[1].empty());
  EXPECT_EQ((*parsed)[2][0].seen, (std::vector<uint64_t>{3}));
}

// dedup.txt of checkpoints written before forced floors: "<floor>" alone, read as forced
// floor 0, i.e. what it meant then (everything below the floor had been seen).
TEST(CheckpointEncodingTest, DedupLineWithoutAForcedFloorReadsAsZero) {
  absl::StatusOr<std::vector<std::vector<WorkerDedupState>>> parsed =
      ParseDedupState("# old header\n0 w0 7 9 12\n", 1);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)[0][0].floor, 7u);
  EXPECT_EQ((*parsed)[0][0].forced_floor, 0u);
  EXPECT_EQ((*parsed)[0][0].seen, (std::vector<uint64_t>{9, 12}));
}

TEST(CheckpointEncodingTest, MalformedDedupLinesAreRefusedNamingTheLine) {
  for (const char* bad : {"0 w0 5:6\n",       // forced floor above the floor
                          "0 w0 5:x\n",       // not a number
                          "0 w0 5:1:2\n",     // three floors
                          "1 w0 5:1\n",       // parameter index out of range
                          "0 w0 5:1 4\n",     // sequence below the floor
                          "0 w0 5:1 9 8\n",   // not increasing
                          "0 b 1:0\n0 a 1:0\n"}) {  // workers not sorted
    absl::StatusOr<std::vector<std::vector<WorkerDedupState>>> parsed = ParseDedupState(bad, 1);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(parsed.status().message(), "line ")) << parsed.status();
  }
}

}  // namespace
}  // namespace dion
