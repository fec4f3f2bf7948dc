// Tests of server/checkpoint/checkpoint_manifest.h: FNV-1a 64 matches the published vectors, and the
// manifest round-trips through its JSON, tolerates hand edits and refuses malformed or unsafe
// manifests.
#include "server/checkpoint/checkpoint_manifest.h"

#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace dion {
namespace {

// Passes if `text` contains `part`; on failure prints both (no gmock: tests link gtest only).
::testing::AssertionResult Contains(absl::string_view text, absl::string_view part) {
  if (absl::StrContains(text, part)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

TEST(Fnv1a64Test, MatchesPublishedVectors) {
  // From the FNV reference test suite (Fowler/Noll/Vo), 64-bit FNV-1a.
  EXPECT_EQ(Fnv1a64::Of(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(Fnv1a64::Of("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(Fnv1a64::Of("foobar"), 0x85944171f73967e8ULL);
  Fnv1a64 streamed;
  streamed.Update("foo");
  streamed.Update("bar");
  EXPECT_EQ(streamed.digest(), Fnv1a64::Of("foobar"));
  EXPECT_EQ(Fnv1a64::Hex(0xaf63dc4c8601ec8cULL), "af63dc4c8601ec8c");
  EXPECT_EQ(Fnv1a64::Hex(1), "0000000000000001");
}

TEST(ManifestTest, RoundTripsThroughJson) {
  CheckpointManifest manifest;
  manifest.version = 1234567890123ULL;
  manifest.metadata["optimizer"] = "dion";
  manifest.metadata["quote\"back\\slash"] = "tab\tnew\nline\x01 caf\xc3\xa9";
  manifest.metadata[""] = "";
  manifest.files = {{"w.npy", 4096, 0xfedcba9876543210ULL}, {"q.npy", 0, 0}};
  const std::string json = SerializeManifest(manifest);
  absl::StatusOr<CheckpointManifest> parsed = ParseManifest(json);
  ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << json;
  EXPECT_EQ(parsed->version, manifest.version);
  EXPECT_EQ(parsed->metadata, manifest.metadata);
  ASSERT_EQ(parsed->files.size(), 2u);
  EXPECT_EQ(parsed->files[0].name, "w.npy");
  EXPECT_EQ(parsed->files[0].bytes, 4096);
  EXPECT_EQ(parsed->files[0].fnv1a64, 0xfedcba9876543210ULL);
  EXPECT_EQ(parsed->files[1].name, "q.npy");

  CheckpointManifest empty;
  absl::StatusOr<CheckpointManifest> parsed_empty = ParseManifest(SerializeManifest(empty));
  ASSERT_TRUE(parsed_empty.ok()) << parsed_empty.status();
  EXPECT_TRUE(parsed_empty->files.empty());
}

TEST(ManifestTest, AcceptsReorderedHandEditedJson) {
  const std::string json = R"( { "files" : [ { "fnv1a64":"00000000000000ff", "bytes":3,
      "name":"x.npy", "note": [1, 2.5e3, null, true] } ], "metadata": {"k": "\u00e9\ud83d\ude00"},
      "version": 7, "format_version": 1, "format": "dion-ps-checkpoint", "extra": {} } )";
  absl::StatusOr<CheckpointManifest> parsed = ParseManifest(json);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->version, 7u);
  EXPECT_EQ(parsed->metadata.at("k"), "\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_EQ(parsed->files[0].fnv1a64, 0xffu);
}

TEST(ManifestTest, RefusesMalformedOrUnsafeManifests) {
  CheckpointManifest manifest;
  manifest.files = {{"w.npy", 1, 2}};
  const std::string good = SerializeManifest(manifest);
  const auto with = [&](absl::string_view from, absl::string_view to) {
    std::string text = good;
    text.replace(text.find(std::string(from)), from.size(), std::string(to));
    return ParseManifest(text, "m.json").status();
  };
  EXPECT_TRUE(Contains(with("\"w.npy\"", "\"../w.npy\"").message(), "safe \"name\""));
  EXPECT_TRUE(Contains(with("\"w.npy\"", "\"a/b\"").message(), "safe \"name\""));
  EXPECT_TRUE(Contains(with("\"bytes\": 1", "\"bytes\": -1").message(), "\"bytes\""));
  EXPECT_TRUE(Contains(with("\"format_version\": 1", "\"format_version\": 2").message(),
                       "format_version"));
  EXPECT_TRUE(Contains(with("]\n}", "]\n").message(), "invalid JSON"));
  EXPECT_EQ(ParseManifest("", "m.json").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(ParseManifest("{}", "m.json").status().message(), "m.json"));
}

}  // namespace
}  // namespace dion
