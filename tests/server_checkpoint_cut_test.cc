// Coordinated checkpoints over loopback (127.0.0.1, port 0): the Checkpoint RPC's codes, the
// cut in Status, and a restart restoring an older cut while newer checkpoints are present
// (server/shard.h CheckpointCut, server/checkpoint/checkpoint_cut.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

using testing::Connect;
using testing::GetStatus;
using testing::PullOne;
using testing::Register;
using testing::TestServerOptions;

grpc::Status Checkpoint(v1::ParameterServer::Stub& stub, const std::string& run_id, uint64_t cut,
                        v1::CheckpointResponse* response) {
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::CheckpointRequest request;
  request.set_run_id(run_id);
  request.set_cut(cut);
  return stub.Checkpoint(&context, request, response);
}

// Pushes one accepted contribution to "w" (a batch of one: target_workers 1).
void PushOne(v1::ParameterServer::Stub& stub, uint64_t sequence) {
  const int64_t version = GetStatus(stub).parameters(0).version();
  const std::vector<v1::PushAck> acks = testing::PushAll(
      stub, {testing::FactorsContribution("w0", sequence, "w", version, 4,
                                          testing::RandomFactors(32, 24, 2, 100 + sequence))});
  ASSERT_EQ(acks.size(), 1u);
  ASSERT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED) << acks[0].message();
  ASSERT_TRUE(testing::WaitForStatus(stub, [&](const v1::StatusResponse& s) {
    return s.parameters(0).version() == version + 1;
  }));
}

class ServerCheckpointCutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/svc-cut-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  ServerOptions Options() const {
    ServerOptions options = TestServerOptions();
    options.shard.checkpoint_dir = dir_;
    options.service.allow_optimizer_state = true;  // restores are compared state and all
    return options;
  }
  size_t Checkpoints() const { return ListCheckpoints(dir_).value().size(); }

  std::string dir_;
};

TEST_F(ServerCheckpointCutTest, CheckpointRpcAnswersWithPreciseCodes) {
  v1::CheckpointResponse response;
  {  // No checkpoint directory.
    auto server = DionServer::Start(TestServerOptions()).value();
    auto stub = Connect(server->address());
    Register(*stub, "w0");
    EXPECT_EQ(Checkpoint(*stub, "run", 1, &response).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  auto server = DionServer::Start(Options()).value();
  auto stub = Connect(server->address());
  // No model yet.
  EXPECT_EQ(Checkpoint(*stub, "run", 1, &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  Register(*stub, "w0");
  for (const auto& [run_id, cut] : std::vector<std::pair<std::string, uint64_t>>{
           {"run", 0}, {"", 1}, {"bad run", 1}, {"r/1", 1}, {std::string(129, 'r'), 1}}) {
    const grpc::Status status = Checkpoint(*stub, run_id, cut, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << run_id << " " << cut;
  }
  EXPECT_EQ(Checkpoints(), 0u);
  EXPECT_EQ(GetStatus(*stub).checkpoint_cut(), 0u);

  PushOne(*stub, 0);
  PushOne(*stub, 1);
  ASSERT_TRUE(Checkpoint(*stub, "run-1", 3, &response).ok());
  EXPECT_TRUE(absl::StartsWith(response.directory(), "ckpt-")) << response.directory();
  EXPECT_TRUE(std::filesystem::is_directory(dir_ + "/" + response.directory()));
  EXPECT_EQ(response.run_id(), "run-1");
  EXPECT_EQ(response.cut(), 3u);
  EXPECT_FALSE(response.already_written());
  ASSERT_EQ(response.versions_size(), 3);  // w, v, b: one shard owns all
  EXPECT_EQ(response.versions(0).parameter(), "w");
  EXPECT_EQ(response.versions(0).version(), 2);
  EXPECT_EQ(response.versions(1).version(), 0);
  const std::string first = response.directory();
  v1::StatusResponse status = GetStatus(*stub);
  EXPECT_EQ(status.checkpoint_run_id(), "run-1");
  EXPECT_EQ(status.checkpoint_cut(), 3u);

  // The same cut again: the same checkpoint, nothing written, even after more steps.
  PushOne(*stub, 2);
  v1::CheckpointResponse again;
  ASSERT_TRUE(Checkpoint(*stub, "run-1", 3, &again).ok());
  EXPECT_TRUE(again.already_written());
  EXPECT_EQ(again.directory(), first);
  EXPECT_EQ(again.versions(0).version(), 2);
  EXPECT_EQ(Checkpoints(), 1u);

  // A lower cut names both; another run id has its own sequence.
  const grpc::Status lower = Checkpoint(*stub, "run-1", 2, &response);
  EXPECT_EQ(lower.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(lower.error_message(), "cut 2")) << lower.error_message();
  EXPECT_TRUE(absl::StrContains(lower.error_message(), "cut 3")) << lower.error_message();
  EXPECT_EQ(Checkpoints(), 1u);
  ASSERT_TRUE(Checkpoint(*stub, "run-2", 1, &response).ok());
  EXPECT_EQ(response.versions(0).version(), 3);
  status = GetStatus(*stub);
  EXPECT_EQ(status.checkpoint_run_id(), "run-2");
  EXPECT_EQ(status.checkpoint_cut(), 1u);
}

// X and optimizer state of "w", and every version, as Pull gives them.
struct Values {
  std::vector<v1::ParameterValue> parameters;
};

Values PullAll(v1::ParameterServer::Stub& stub) {
  Values values;
  for (const char* name : {"w", "v", "b"}) values.parameters.push_back(PullOne(stub, name, true));
  return values;
}

void ExpectSame(const Values& a, const Values& b) {
  ASSERT_EQ(a.parameters.size(), b.parameters.size());
  for (size_t i = 0; i < a.parameters.size(); ++i) {
    SCOPED_TRACE(a.parameters[i].parameter());
    // Serialized bytes: value, checksum, version and optimizer state, bit for bit.
    EXPECT_EQ(a.parameters[i].SerializeAsString(), b.parameters[i].SerializeAsString());
  }
}

TEST_F(ServerCheckpointCutTest, RestoresAnOlderCutWhileNewerCheckpointsArePresent) {
  Values at_cut_1;
  {
    auto server = DionServer::Start(Options()).value();
    auto stub = Connect(server->address());
    Register(*stub, "w0");
    PushOne(*stub, 0);
    PushOne(*stub, 1);
    v1::CheckpointResponse response;
    ASSERT_TRUE(Checkpoint(*stub, "run", 1, &response).ok());
    at_cut_1 = PullAll(*stub);  // nothing changed since the cut
    PushOne(*stub, 2);
    ASSERT_TRUE(Checkpoint(*stub, "run", 2, &response).ok());
    PushOne(*stub, 3);
    ASSERT_TRUE(server->Shutdown().ok());  // and the shard's own last checkpoint
  }
  EXPECT_EQ(Checkpoints(), 3u);
  {  // By default the newest checkpoint: four steps.
    auto server = DionServer::Start(Options()).value();
    auto stub = Connect(server->address());
    EXPECT_EQ(GetStatus(*stub).parameters(0).version(), 4);
  }
  ServerOptions options = Options();
  options.shard.restore_cut = 1;
  const size_t before = Checkpoints();
  {
    auto server = DionServer::Start(options).value();
    auto stub = Connect(server->address());
    EXPECT_EQ(GetStatus(*stub).parameters(0).version(), 2);
    ExpectSame(at_cut_1, PullAll(*stub));
    // The newest cut on disk is still 2: a coordinator's next cut is 3.
    EXPECT_EQ(GetStatus(*stub).checkpoint_cut(), 2u);
    // The restored state was checkpointed at start: the newest checkpoint holds it, so a
    // crash now and a restart without --restore_cut come back to cut 1's weights.
    const std::vector<CheckpointInfo> present = ListCheckpoints(dir_).value();
    ASSERT_EQ(present.size(), before + 1);
    EXPECT_EQ(ValidateCheckpoint(present[0].path).value().metadata.at("parameter.0.version"), "2");
  }
  // A cut that is not there: the server does not start and says which cuts exist.
  options.shard.restore_cut = 7;
  absl::StatusOr<std::unique_ptr<DionServer>> missing = DionServer::Start(options);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "run run: cuts 1, 2"))
      << missing.status();
  options.shard.restore_cut = 1;
  options.shard.restore_run_id = "other";
  EXPECT_EQ(DionServer::Start(options).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace dion
