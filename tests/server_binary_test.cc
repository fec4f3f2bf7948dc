// The real dion-server binary (path from CMake: DION_SERVER_BINARY): SIGTERM after some pushes
// ends the process with exit code 0 within a few seconds, leaving a valid checkpoint that a
// second dion-server process restores at the same version and weights.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "tests/reference.h"
#include "tests/server_process.h"
#include "tests/server_test_util.h"

extern char** environ;

namespace dion {
namespace {

using testing::Connect;
using testing::FactorsContribution;
using testing::RandomFactors;

struct ServerProcess : testing::ServerProcess {
  explicit ServerProcess(const std::vector<std::string>& flags)
      : testing::ServerProcess(DION_SERVER_BINARY, flags) {}
};

v1::ParameterValue Pull(v1::ParameterServer::Stub& stub, const std::string& parameter) {
  return testing::PullOne(stub, parameter, /*state=*/true);
}

TEST(ServerBinaryTest, SigtermExitsZeroWithACheckpointThatASecondProcessRestores) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/binary-sigterm-", getpid());
  std::filesystem::remove_all(dir);
  const std::vector<std::string> flags = {
      "--listen=127.0.0.1:0", "--metrics_listen=", absl::StrCat("--checkpoint_dir=", dir),
      "--checkpoint_interval=0", "--target_workers=1", "--batch_deadline=inf",
      "--shutdown_grace=2s", "--lr_schedule_samples=4", "--lr_cooldown_fraction=1",
      "--allow_optimizer_state_pull"};  // the restore is compared state and all

  v1::ParameterValue before;
  {
    ServerProcess first(flags);
    ASSERT_TRUE(first.started());
    const std::string address = first.WaitForAddress(absl::Seconds(20));
    ASSERT_FALSE(address.empty()) << first.log();
    auto stub = Connect(address);
    testing::Register(*stub, "w0");
    std::vector<v1::Contribution> pushes;
    for (int k = 0; k < 3; ++k) {
      pushes.push_back(FactorsContribution("w0", k, "w", 0, 1, RandomFactors(32, 24, 2, k)));
    }
    for (const v1::PushAck& ack : testing::PushAll(*stub, pushes)) {
      ASSERT_EQ(ack.result(), v1::PUSH_RESULT_ACCEPTED) << ack.message();
    }
    ASSERT_TRUE(testing::WaitForStatus(*stub, [](const v1::StatusResponse& s) {
      return testing::FindParameter(s, "w")->version() == 3;
    }));
    before = Pull(*stub, "w");
    // An idle channel whose process has no call in flight is not polled by gRPC's sync client,
    // so it never answers the server's GOAWAY and shutdown would wait out --shutdown_grace.
    stub.reset();

    const absl::Time signalled = absl::Now();
    first.Signal(SIGTERM);
    const std::optional<int> code = first.WaitForExit(absl::Seconds(10));
    ASSERT_TRUE(code.has_value()) << "no clean exit within 10 s:\n" << first.log();
    EXPECT_EQ(*code, 0) << first.log();
    EXPECT_LT(absl::Now() - signalled, absl::Seconds(5)) << first.log();
    EXPECT_TRUE(absl::StrContains(first.log(), "SIGTERM received")) << first.log();
  }

  // A complete, valid checkpoint is on disk.
  absl::StatusOr<std::vector<CheckpointInfo>> checkpoints = ListCheckpoints(dir);
  ASSERT_TRUE(checkpoints.ok()) << checkpoints.status();
  ASSERT_FALSE(checkpoints->empty());
  EXPECT_TRUE(ValidateCheckpoint(checkpoints->front().path).ok());

  ServerProcess second(flags);
  ASSERT_TRUE(second.started());
  const std::string address = second.WaitForAddress(absl::Seconds(20));
  ASSERT_FALSE(address.empty()) << second.log();
  EXPECT_TRUE(absl::StrContains(second.log(), "restored checkpoint")) << second.log();
  auto stub = Connect(address);
  const v1::StatusResponse status = testing::GetStatus(*stub);
  EXPECT_TRUE(status.model_registered());
  ASSERT_NE(testing::FindParameter(status, "w"), nullptr);
  EXPECT_EQ(testing::FindParameter(status, "w")->version(), 3);
  EXPECT_EQ(testing::FindParameter(status, "w")->contributions_applied(), 3);
  // The lr schedule's position came back too: 3 of its 4 samples, so the next step is at
  // 1 - 3/4 of the lr (from 1 to the default 0.1 over the whole run: 1 - 0.9 x 0.75).
  EXPECT_EQ(testing::FindParameter(status, "w")->samples_applied(), 3);
  EXPECT_NEAR(testing::FindParameter(status, "w")->lr_scale(), 0.325, 1e-12);
  const v1::ParameterValue after = Pull(*stub, "w");
  EXPECT_EQ(after.version(), before.version());
  EXPECT_EQ(after.checksum(), before.checksum());
  EXPECT_EQ(after.dion().momentum().data(), before.dion().momentum().data());
  EXPECT_EQ(after.dion().q().data(), before.dion().q().data());

  stub.reset();
  second.Signal(SIGINT);
  const std::optional<int> code = second.WaitForExit(absl::Seconds(10));
  ASSERT_TRUE(code.has_value()) << second.log();
  EXPECT_EQ(*code, 0) << second.log();
  std::filesystem::remove_all(dir);
}

// --restore_cut of a cut the directory does not have: exit 1, naming the wanted cut and the
// ones present (here none); --restore_run_id without --restore_cut is a bad flag (exit 2).
TEST(ServerBinaryTest, RestoreCutThatIsAbsentRefusesToStartNamingTheCutsPresent) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/bin-cut-", getpid());
  std::filesystem::create_directories(dir);
  ServerProcess absent({"--listen=127.0.0.1:0", "--metrics_listen=", "--checkpoint_dir=" + dir,
                        "--restore_cut=3"});
  ASSERT_TRUE(absent.started());
  EXPECT_EQ(absent.WaitForExit(absl::Seconds(30)), 1) << absent.log();
  EXPECT_NE(absent.log().find("no checkpoint of cut 3 under " + dir), std::string::npos)
      << absent.log();
  EXPECT_NE(absent.log().find("coordinated checkpoints there: none"), std::string::npos)
      << absent.log();
  ServerProcess bad({"--listen=127.0.0.1:0", "--metrics_listen=", "--checkpoint_dir=" + dir,
                     "--restore_run_id=r"});
  ASSERT_TRUE(bad.started());
  EXPECT_EQ(bad.WaitForExit(absl::Seconds(30)), 2) << bad.log();
  EXPECT_NE(bad.log().find("--restore_run_id needs --restore_cut"), std::string::npos)
      << bad.log();
  std::filesystem::remove_all(dir);
}

// The flags of docs/server.md "Memory" and the optimizer-state default, through the binary:
// the budget is logged and enforced, optimizer state is refused unless allowed.
TEST(ServerBinaryTest, EnforcesItsStateBudgetAndRefusesOptimizerStateByDefault) {
  ServerProcess server({"--listen=127.0.0.1:0", "--metrics_listen=", "--max_state_bytes=8192"});
  ASSERT_TRUE(server.started());
  const std::string address = server.WaitForAddress(absl::Seconds(20));
  ASSERT_FALSE(address.empty()) << server.log();
  EXPECT_NE(server.log().find("state budget 8192 bytes (--max_state_bytes)"), std::string::npos)
      << server.log();
  auto stub = Connect(address);
  {
    // TestModelRequest's "w" alone is 32 x 24 Dion: X and M are 6144 bytes, plus Q and 4096
    // bytes of bookkeeping; "b" below is 288 bytes plus its bookkeeping.
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::RegisterModelResponse response;
    const grpc::Status status =
        stub->RegisterModel(&context, testing::TestModelRequest("w0"), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  }
  v1::RegisterModelRequest small;
  small.set_model_name("small");
  v1::ParameterSpec* b = small.add_parameters();
  b->set_name("b");
  b->add_shape(24);
  b->set_optimizer(v1::OPTIMIZER_KIND_ADAMW);
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::RegisterModelResponse response;
    const grpc::Status status = stub->RegisterModel(&context, small, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::PullRequest request;
  request.set_include_optimizer_state(true);
  auto reader = stub->Pull(&context, request);
  v1::ParameterValue value;
  EXPECT_FALSE(reader->Read(&value));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_NE(status.error_message().find("--allow_optimizer_state_pull"), std::string::npos);
}

// --blas_threads (docs/server.md, "Flags"): below 1 the binary refuses to start (exit 2) and
// names the flag and the value. With 2 it finds the OpenBLAS internals it restarts the worker
// threads through (no note on stderr), and one push to a 512 x 256 Dion matrix steps it as
// common/'s step does: its products (m n r = 8.4e6 multiply-adds for M Q) are far above the
// size from which OpenBLAS spreads a product over its threads (m n k = 2^18, blas_test).
// The push has rank 64 = r: with fewer, M Q has directions of rounding noise only, which the
// orthonormalization amplifies (a rank-8 push ends 4e-3 apart between 1 and 2 threads).
// Under ThreadSanitizer the server keeps one BLAS thread: OpenBLAS is not instrumented, and
// TSan reports its hand-over of results between threads as races (tests/tsan.supp).
TEST(ServerBinaryTest, BlasThreadsBelowOneAreRefusedAndTwoThreadsStepADionMatrix) {
#if defined(__SANITIZE_THREAD__)
  constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
  constexpr bool kThreadSanitizer = true;
#else
  constexpr bool kThreadSanitizer = false;
#endif
#else
  constexpr bool kThreadSanitizer = false;
#endif
  for (const char* value : {"0", "-3"}) {
    ServerProcess refused(
        {"--listen=127.0.0.1:0", "--metrics_listen=", absl::StrCat("--blas_threads=", value)});
    ASSERT_TRUE(refused.started());
    EXPECT_EQ(refused.WaitForExit(absl::Seconds(10)), 2) << refused.log();
    EXPECT_TRUE(absl::StrContains(refused.log(), absl::StrCat("blas_threads must be >= 1, got ",
                                                              value)))
        << refused.log();
  }

  ServerProcess server({"--listen=127.0.0.1:0", "--metrics_listen=",
                        kThreadSanitizer ? "--blas_threads=1" : "--blas_threads=2",
                        "--target_workers=1", "--batch_deadline=inf",
                        "--allow_optimizer_state_pull"});
  ASSERT_TRUE(server.started());
  const std::string address = server.WaitForAddress(absl::Seconds(20));
  ASSERT_FALSE(address.empty()) << server.log();
  EXPECT_FALSE(absl::StrContains(server.log(), "note: --blas_threads")) << server.log();
  auto stub = Connect(address);
  v1::RegisterModelRequest request;
  request.set_model_name("blas-threads");
  request.set_worker_id("w0");
  testing::AddDionMatrix(request, "big", 512, 256, 9);
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::RegisterModelResponse response;
    const grpc::Status status = stub->RegisterModel(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  const v1::ParameterValue initial = Pull(*stub, "big");
  const LowRankFactors f = RandomFactors(512, 256, 64, 3);
  for (const v1::PushAck& ack :
       testing::PushAll(*stub, {FactorsContribution("w0", 0, "big", 0, 4, f)})) {
    ASSERT_EQ(ack.result(), v1::PUSH_RESULT_ACCEPTED) << ack.message();
  }
  ASSERT_TRUE(testing::WaitForStatus(*stub, [](const v1::StatusResponse& s) {
    return testing::FindParameter(s, "big")->version() == 1;
  }));
  const v1::ParameterValue stepped = Pull(*stub, "big");

  // The same step in this process from the state the shard started with.
  Matrix X = testing::ValueOf(initial);
  DionState state;
  state.M = TensorToMatrix(initial.dion().momentum(), "M").value();
  state.Q = TensorToMatrix(initial.dion().q(), "Q").value();
  state.step = initial.dion().step();
  ASSERT_EQ(state.Q.cols(), 64);  // r
  const ParamSpec spec = ModelTableFromProto(request).value().parameters[0].spec;
  testing::ApplyReferenceBatch({{f, 1.0}}, spec.dion, X, state);
  const MatrixD served = testing::ValueOf(stepped).cast<double>();
  EXPECT_GT(testing::RelativeError(served, testing::ValueOf(initial).cast<double>()), 1e-3)
      << "the step moved X";
  // Measured 3e-8 and 7e-8 (Release, 1 and 2 threads).
  EXPECT_LE(testing::RelativeError(served, X.cast<double>()), 1e-6);
  EXPECT_LE(testing::MaxRelativeError(served, X.cast<double>()), 1e-5);
  EXPECT_EQ(stepped.dion().step(), initial.dion().step() + 1);

  stub.reset();  // an idle channel would hold the shutdown up (see the first test)
  server.Signal(SIGTERM);
  EXPECT_EQ(server.WaitForExit(absl::Seconds(10)), 0) << server.log();
}

}  // namespace
}  // namespace dion
