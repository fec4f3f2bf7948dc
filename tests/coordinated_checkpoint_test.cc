// `dion checkpoint` (worker/local/coordinated_checkpoint.h) against two in-process shards on
// 127.0.0.1: the cut is the shards' maximum plus one, every shard writes it with the same run
// id, and a shard that is down or refuses makes the whole checkpoint fail, saying which.
#include "worker/local/coordinated_checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

namespace fs = std::filesystem;

class CoordinatedCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = absl::StrCat(::testing::TempDir(), "/coordinated-", getpid(), "-",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    for (int i = 0; i < 2; ++i) {
      ServerOptions options = testing::TestServerOptions();
      options.shard.store.shard_index = i;
      options.shard.store.num_shards = 2;
      options.shard.checkpoint_dir = Dir(i);
      servers_.push_back(DionServer::Start(options).value());
      stubs_.push_back(testing::Connect(servers_.back()->address()));
      testing::Register(*stubs_.back(), "w0");
      addresses_.push_back(servers_.back()->address());
    }
  }
  void TearDown() override {
    servers_.clear();
    fs::remove_all(root_);
  }

  std::string Dir(int shard) const { return absl::StrCat(root_, "/shard-", shard); }
  // The run id and cut of shard i's checkpoint `directory`, from its manifest.
  std::pair<std::string, std::string> TagOf(int shard, const std::string& directory) const {
    const CheckpointManifest manifest =
        ValidateCheckpoint(absl::StrCat(Dir(shard), "/", directory)).value();
    return {manifest.metadata.at("run_id"), manifest.metadata.at("cut")};
  }
  CoordinatedCheckpoint Take(const std::string& run_id = "") {
    absl::StatusOr<CoordinatedCheckpoint> taken =
        TakeCoordinatedCheckpoint({addresses_, run_id, absl::Seconds(30)});
    EXPECT_TRUE(taken.ok()) << taken.status();
    return taken.value_or(CoordinatedCheckpoint{});
  }

  std::string root_;
  std::vector<std::unique_ptr<DionServer>> servers_;
  std::vector<std::unique_ptr<v1::ParameterServer::Stub>> stubs_;
  std::vector<std::string> addresses_;
};

TEST_F(CoordinatedCheckpointTest, EveryShardWritesTheNextCutWithOneRunId) {
  const CoordinatedCheckpoint first = Take();
  ASSERT_TRUE(first.status.ok()) << absl::StrJoin(first.Lines(), "\n");
  EXPECT_EQ(first.cut, 1u);
  EXPECT_TRUE(absl::StartsWith(first.run_id, "run-")) << first.run_id;
  ASSERT_EQ(first.shards.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(first.shards[i].shard_index, i);
    EXPECT_FALSE(first.shards[i].versions.empty());
    EXPECT_EQ(TagOf(i, first.shards[i].directory),
              std::make_pair(first.run_id, std::string("1")));
  }
  const std::vector<std::string> lines = first.Lines();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_TRUE(absl::StrContains(lines[0], "shard 0")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[1], "written to ckpt-")) << lines[1];
  EXPECT_EQ(lines[2], absl::StrCat("cut 1 of run ", first.run_id, " on all 2 shards"));

  // The next one continues the shards' run id; a shard that is ahead sets the cut.
  v1::CheckpointRequest request;
  request.set_run_id(first.run_id);
  request.set_cut(5);
  v1::CheckpointResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stubs_[1]->Checkpoint(&context, request, &response).ok());
  const CoordinatedCheckpoint next = Take();
  ASSERT_TRUE(next.status.ok()) << absl::StrJoin(next.Lines(), "\n");
  EXPECT_EQ(next.run_id, first.run_id);
  EXPECT_EQ(next.cut, 6u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(TagOf(i, next.shards[i].directory), std::make_pair(first.run_id, std::string("6")));
  }
  // A given run id is used as it is; the cut still follows the shards' maximum.
  EXPECT_EQ(Take("other-run").cut, 7u);
  EXPECT_EQ(testing::GetStatus(*stubs_[0]).checkpoint_run_id(), "other-run");
}

TEST_F(CoordinatedCheckpointTest, AShardThatIsDownOrRefusesFailsTheCheckpoint) {
  // Refusal: a malformed run id is the shards' INVALID_ARGUMENT, on every line.
  CoordinatedCheckpoint refused = Take("bad run id");
  EXPECT_FALSE(refused.status.ok());
  EXPECT_TRUE(absl::StrContains(refused.Lines()[0], "INVALID_ARGUMENT")) << refused.Lines()[0];
  EXPECT_TRUE(ListCheckpoints(Dir(0)).value().empty());

  // Different run ids on the shards and none given: nothing is asked.
  for (int i = 0; i < 2; ++i) {
    v1::CheckpointRequest request;
    request.set_run_id(absl::StrCat("run-", i));
    request.set_cut(1);
    v1::CheckpointResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(stubs_[i]->Checkpoint(&context, request, &response).ok());
  }
  CoordinatedCheckpoint split = Take();
  EXPECT_EQ(split.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(split.cut, 0u);
  EXPECT_TRUE(absl::StrContains(split.status.message(), "--run_id")) << split.status;
  EXPECT_EQ(ListCheckpoints(Dir(0)).value().size(), 1u);

  // A shard that is down: nothing is asked of the other one either; exit code 1.
  ASSERT_TRUE(servers_[1]->Shutdown().ok());
  servers_[1].reset();
  const std::vector<std::string> args = {"--shards=" + absl::StrJoin(addresses_, ","),
                                         "--run_id=run-0", "--deadline=5s"};
  EXPECT_EQ(CheckpointCommand(args), 1);
  EXPECT_EQ(ListCheckpoints(Dir(0)).value().size(), 1u);
  CoordinatedCheckpoint down = Take("run-0");
  EXPECT_EQ(down.cut, 0u);
  EXPECT_TRUE(absl::StrContains(down.Lines()[1], "FAILED: UNAVAILABLE")) << down.Lines()[1];

  // The command line: exit 0 when all succeed, 2 for bad arguments.
  EXPECT_EQ(CheckpointCommand({"--shards=" + addresses_[0], "--run_id=run-0"}), 0);
  EXPECT_EQ(ListCheckpoints(Dir(0)).value().size(), 2u);
  EXPECT_EQ(CheckpointCommand({"--shards="}), 2);
  EXPECT_EQ(CheckpointCommand({"--shards=a,a"}), 2);
  EXPECT_EQ(CheckpointCommand({"--shard=" + addresses_[0]}), 2);
  EXPECT_EQ(CheckpointCommand({"--shards=" + addresses_[0], "--deadline=soon"}), 2);
  EXPECT_EQ(CheckpointCommand({"positional"}), 2);
}

}  // namespace
}  // namespace dion
