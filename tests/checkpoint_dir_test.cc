// Tests of server/checkpoint/checkpoint_dir.h: commit is atomic, crash leftovers are ignored, corrupt
// checkpoints are skipped for the previous valid one, and retention deletes only old ones.
// The manifest's JSON and checksum are tested in checkpoint_manifest_test.cc.
#include "server/checkpoint/checkpoint_dir.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/checkpoint/npy.h"
#include "gtest/gtest.h"

namespace dion {
namespace {

// Passes if `text` contains `part`; on failure prints both (no gmock: tests link gtest only).
::testing::AssertionResult Contains(absl::string_view text, absl::string_view part) {
  if (absl::StrContains(text, part)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

namespace fs = std::filesystem;

class CheckpointDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "checkpoint_dir_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    base_ = pattern;
    root_ = base_ + "/ckpts";  // not created: the writer must create it
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(base_, ignored);
  }

  // Writes and commits a checkpoint whose weights are filled with `fill`.
  std::string WriteCheckpoint(uint64_t version, float fill) {
    absl::StatusOr<std::unique_ptr<CheckpointWriter>> writer =
        CheckpointWriter::Begin(root_, version);
    EXPECT_TRUE(writer.ok()) << writer.status();
    if (!writer.ok()) return "";
    EXPECT_TRUE((*writer)->AddNpy("w.npy", Matrix::Constant(8, 4, fill)).ok());
    EXPECT_TRUE((*writer)->AddNpy("b.npy", Matrix::Constant(1, 4, fill), true).ok());
    const std::vector<int64_t> versions = {static_cast<int64_t>(version)};
    EXPECT_TRUE((*writer)->AddNpyInt64("versions.npy", versions).ok());
    (*writer)->SetMetadata("step", absl::StrCat(version));
    absl::StatusOr<std::string> path = (*writer)->Commit();
    EXPECT_TRUE(path.ok()) << path.status();
    return path.ok() ? *path : "";
  }

  std::vector<uint64_t> ListedVersions() {
    absl::StatusOr<std::vector<CheckpointInfo>> list = ListCheckpoints(root_);
    EXPECT_TRUE(list.ok()) << list.status();
    std::vector<uint64_t> versions;
    if (list.ok()) {
      for (const CheckpointInfo& info : *list) versions.push_back(info.version);
    }
    return versions;
  }

  std::string base_;
  std::string root_;
};

TEST_F(CheckpointDirTest, CommittedCheckpointIsValidAndNumpyReadable) {
  const std::string path = WriteCheckpoint(42, 1.5f);
  EXPECT_EQ(path, root_ + "/ckpt-000000000042");
  absl::StatusOr<CheckpointManifest> manifest = ValidateCheckpoint(path);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->version, 42u);
  EXPECT_EQ(manifest->metadata.at("step"), "42");
  ASSERT_EQ(manifest->files.size(), 3u);
  EXPECT_EQ(manifest->files[0].bytes, static_cast<int64_t>(fs::file_size(path + "/w.npy")));
  absl::StatusOr<Matrix> w = ReadNpyMatrix(path + "/w.npy");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, Matrix::Constant(8, 4, 1.5f));
  // No temporary directory remains after a commit.
  EXPECT_EQ((std::vector<fs::path>(fs::directory_iterator(root_), {})).size(), 1u);
}

TEST_F(CheckpointDirTest, CheckpointIsInvisibleUntilCommit) {
  absl::StatusOr<std::unique_ptr<CheckpointWriter>> writer = CheckpointWriter::Begin(root_, 5);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->AddNpy("w.npy", Matrix::Ones(2, 2)).ok());
  EXPECT_TRUE(fs::is_directory((*writer)->temp_path()));
  EXPECT_TRUE(Contains((*writer)->temp_path(), "/ckpt-000000000005.tmp-"));
  EXPECT_TRUE(ListedVersions().empty());
  EXPECT_EQ(FindNewestValidCheckpoint(root_).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_EQ(ListedVersions(), (std::vector<uint64_t>{5u}));
  EXPECT_FALSE(fs::exists((*writer)->temp_path()));
  EXPECT_EQ((*writer)->AddFile("late.txt", "x").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CheckpointDirTest, RefusesUnsafeAndDuplicateFileNames) {
  absl::StatusOr<std::unique_ptr<CheckpointWriter>> writer = CheckpointWriter::Begin(root_, 1);
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (absl::string_view name : {"", "../x", "a/b", ".hidden", "manifest.json", "sp ace"}) {
    EXPECT_EQ((*writer)->AddFile(name, "x").code(), absl::StatusCode::kInvalidArgument) << name;
  }
  ASSERT_TRUE((*writer)->AddFile("fc1.weight.npy", "x").ok());
  EXPECT_EQ((*writer)->AddFile("fc1.weight.npy", "y").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointDirTest, AbortedWriterLeavesNothing) {
  std::string temp;
  {
    absl::StatusOr<std::unique_ptr<CheckpointWriter>> writer = CheckpointWriter::Begin(root_, 3);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->AddNpy("w.npy", Matrix::Ones(2, 2)).ok());
    temp = (*writer)->temp_path();
  }  // destroyed without Commit
  EXPECT_FALSE(fs::exists(temp));
  EXPECT_TRUE(ListedVersions().empty());
}

TEST_F(CheckpointDirTest, CrashLeftoverTempDirIsIgnoredThenRemoved) {
  WriteCheckpoint(1, 1.0f);
  // A crash after writing a complete-looking directory, before the rename.
  const std::string crashed = root_ + "/ckpt-000000000002.tmp-deadbeef";
  fs::copy(root_ + "/ckpt-000000000001", crashed);
  EXPECT_EQ(ListedVersions(), (std::vector<uint64_t>{1u}));
  absl::StatusOr<RestorePoint> restored = FindNewestValidCheckpoint(root_);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->checkpoint.version, 1u);
  EXPECT_TRUE(restored->skipped.empty());

  absl::StatusOr<int> removed = RemoveStaleTemporaries(root_);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, 1);
  EXPECT_FALSE(fs::exists(crashed));
  EXPECT_TRUE(fs::exists(root_ + "/ckpt-000000000001"));
}

TEST_F(CheckpointDirTest, TruncatedTensorMakesRestorePickThePreviousCheckpoint) {
  WriteCheckpoint(10, 10.0f);
  const std::string newest = WriteCheckpoint(20, 20.0f);
  fs::resize_file(newest + "/w.npy", fs::file_size(newest + "/w.npy") - 4);
  absl::StatusOr<RestorePoint> restored = FindNewestValidCheckpoint(root_);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->checkpoint.version, 10u);
  EXPECT_EQ(restored->manifest.metadata.at("step"), "10");
  ASSERT_EQ(restored->skipped.size(), 1u);
  EXPECT_TRUE(Contains(restored->skipped[0], newest));
  EXPECT_TRUE(Contains(restored->skipped[0], "w.npy: truncated: manifest records"));
  absl::StatusOr<Matrix> w = ReadNpyMatrix(restored->checkpoint.path + "/w.npy");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)(0, 0), 10.0f);
}

TEST_F(CheckpointDirTest, CorruptionMissingFileAndMissingManifestAreSkipped) {
  WriteCheckpoint(1, 1.0f);
  const std::string flipped = WriteCheckpoint(2, 2.0f);
  const std::string missing_file = WriteCheckpoint(3, 3.0f);
  const std::string no_manifest = WriteCheckpoint(4, 4.0f);
  {  // Same size, one bit different: only the checksum can tell.
    std::fstream f(flipped + "/w.npy", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x7f');
  }
  fs::remove(missing_file + "/b.npy");
  fs::remove(no_manifest + "/manifest.json");
  absl::StatusOr<RestorePoint> restored = FindNewestValidCheckpoint(root_);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->checkpoint.version, 1u);
  ASSERT_EQ(restored->skipped.size(), 3u);
  EXPECT_TRUE(Contains(restored->skipped[0], "missing manifest.json"));
  EXPECT_TRUE(Contains(restored->skipped[1], "b.npy listed in the manifest is missing"));
  EXPECT_TRUE(Contains(restored->skipped[2], "w.npy: checksum mismatch"));
}

TEST_F(CheckpointDirTest, NoValidCheckpointIsDataLossNotAFreshStart) {
  const std::string only = WriteCheckpoint(1, 1.0f);
  fs::remove(only + "/manifest.json");
  absl::StatusOr<RestorePoint> restored = FindNewestValidCheckpoint(root_);
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(restored.status().message(), "missing manifest.json"));
}

TEST_F(CheckpointDirTest, ListsNewestFirstByNumberAndIgnoresOtherEntries) {
  for (uint64_t v : {9u, 100u, 10u}) WriteCheckpoint(v, 0.0f);
  fs::create_directories(root_ + "/ckpt-abc");
  fs::create_directories(root_ + "/other");
  std::ofstream(root_ + "/ckpt-000000000500") << "a file, not a directory";
  EXPECT_EQ(ListedVersions(), (std::vector<uint64_t>{100u, 10u, 9u}));
}

TEST_F(CheckpointDirTest, RetentionKeepsTheNewestK) {
  for (uint64_t v = 1; v <= 5; ++v) WriteCheckpoint(v, static_cast<float>(v));
  absl::StatusOr<int> deleted = PruneCheckpoints(root_, 2);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 3);
  EXPECT_EQ(ListedVersions(), (std::vector<uint64_t>{5u, 4u}));
  EXPECT_EQ((std::vector<fs::path>(fs::directory_iterator(root_), {})).size(), 2u);
  EXPECT_EQ(*PruneCheckpoints(root_, 2), 0);
  EXPECT_EQ(PruneCheckpoints(root_, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointDirTest, SameVersionTwiceIsRefusedUnlessTheOldOneIsInvalid) {
  WriteCheckpoint(7, 1.0f);
  absl::StatusOr<std::unique_ptr<CheckpointWriter>> again = CheckpointWriter::Begin(root_, 7);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE((*again)->AddNpy("w.npy", Matrix::Ones(1, 1)).ok());
  EXPECT_EQ((*again)->Commit().status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(fs::exists((*again)->temp_path()));
  EXPECT_EQ((*ReadNpyMatrix(root_ + "/ckpt-000000000007/w.npy"))(0, 0), 1.0f);

  // After a restore skipped a corrupt version 7, the same version is written again.
  fs::remove(root_ + "/ckpt-000000000007/manifest.json");
  const std::string rewritten = WriteCheckpoint(7, 2.0f);
  ASSERT_TRUE(ValidateCheckpoint(rewritten).ok());
  EXPECT_EQ((*ReadNpyMatrix(rewritten + "/w.npy"))(0, 0), 2.0f);
}

TEST_F(CheckpointDirTest, ManifestVersionMustMatchDirectoryName) {
  const std::string path = WriteCheckpoint(8, 1.0f);
  fs::rename(path, root_ + "/ckpt-000000000009");
  EXPECT_TRUE(Contains(ValidateCheckpoint(root_ + "/ckpt-000000000009").status().message(),
                       "manifest records version 8, the directory name says 9"));
}

}  // namespace
}  // namespace dion
