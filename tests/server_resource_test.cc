// Resource requests through gRPC: a table over the state budget, an allocation that fails
// (a real std::bad_alloc under an address-space limit), exceptions in handlers; none ends a
// call UNKNOWN or changes the shard.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/server_test_util.h"

namespace dion {
namespace {

using testing::Connect;
using testing::SetDeadline;
using testing::TestServerOptions;

constexpr int64_t kGiB = int64_t{1} << 30;

// RegisterModel of one m x n Dion parameter and nothing else: a few bytes on the wire.
v1::RegisterModelRequest OneDionParameter(int64_t m, int64_t n) {
  v1::RegisterModelRequest request;
  request.set_model_name("m");
  v1::ParameterSpec* p = request.add_parameters();
  p->set_name("w");
  p->add_shape(m);
  p->add_shape(n);
  p->set_optimizer(v1::OPTIMIZER_KIND_DION);
  return request;
}

grpc::Status RegisterTable(v1::ParameterServer::Stub& stub,
                           const v1::RegisterModelRequest& request) {
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(60));
  v1::RegisterModelResponse response;
  return stub.RegisterModel(&context, request, &response);
}

grpc::Status GetLayout(v1::ParameterServer::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::GetLayoutResponse response;
  return stub.GetLayout(&context, v1::GetLayoutRequest(), &response);
}

TEST(GuardHandler, BadAllocIsResourceExhaustedNamingTheMethod) {
  const grpc::Status status =
      GuardHandler("Pull", []() -> grpc::Status { throw std::bad_alloc(); });
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(status.error_message().find("Pull"), std::string::npos) << status.error_message();
  EXPECT_NE(status.error_message().find("memory"), std::string::npos) << status.error_message();
}

TEST(GuardHandler, OtherExceptionsAreInternalNamingThem) {
  const grpc::Status named = GuardHandler(
      "Status", []() -> grpc::Status { throw std::runtime_error("the probe's exception"); });
  EXPECT_EQ(named.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(named.error_message().find("Status"), std::string::npos) << named.error_message();
  EXPECT_NE(named.error_message().find("the probe's exception"), std::string::npos)
      << named.error_message();
  const grpc::Status unknown_type = GuardHandler("Push", []() -> grpc::Status { throw 7; });
  EXPECT_EQ(unknown_type.error_code(), grpc::StatusCode::INTERNAL);
}

TEST(GuardHandler, PassesTheBodysStatusThrough) {
  const grpc::Status status = GuardHandler("GetLayout", [] {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "as the body said");
  });
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(), "as the body said");
}

TEST(StateBudgetOverGrpc, ATinyRequestForGibibytesIsRefusedAndRegistersNothing) {
  ServerOptions options = TestServerOptions();
  options.shard.store.max_state_bytes = kGiB;
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  const v1::RegisterModelRequest huge = OneDionParameter(16384, 16384);
  ASSERT_LT(huge.ByteSizeLong(), 32u);  // ~2 GiB of X and M asked for in a few bytes
  const grpc::Status status = RegisterTable(*stub, huge);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_NE(status.error_message().find(absl::StrCat("budget of ", kGiB, " bytes")),
            std::string::npos)
      << status.error_message();
  EXPECT_NE(status.error_message().find("'w' 16384 x 16384 dion"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(GetLayout(*stub).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  const grpc::Status small = RegisterTable(*stub, OneDionParameter(64, 32));
  EXPECT_TRUE(small.ok()) << small.error_message();
}

// A shard restarted with a budget below its checkpoint's state refuses to start rather than
// restoring past its budget (docs/server.md, "Memory").
TEST(StateBudgetOverGrpc, ACheckpointOverTheBudgetIsNotRestored) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/budget-restore-", getpid());
  ServerOptions options = TestServerOptions();
  options.shard.checkpoint_dir = dir;
  {
    auto server = DionServer::Start(options).value();
    auto stub = Connect(server->address());
    testing::Register(*stub, "w0");
    stub.reset();
    ASSERT_TRUE(server->Shutdown().ok());  // writes the checkpoint
  }
  options.shard.store.max_state_bytes = kParameterOverheadBytes;  // below any one parameter
  absl::StatusOr<std::unique_ptr<DionServer>> refused = DionServer::Start(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  options.shard.store.max_state_bytes = kNoStateBudget;
  absl::StatusOr<std::unique_ptr<DionServer>> restored = DionServer::Start(options);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE((*restored)->shard().model_registered());
  restored->reset();
  std::filesystem::remove_all(dir);
}

TEST(PullOverGrpc, AParameterTooLargeForOneMessageIsRefusedBeforeAnythingIsSent) {
  ServerOptions options = TestServerOptions();
  options.service.allow_optimizer_state = true;
  options.service.max_pull_message_bytes = 4 * 24 * 24;  // w is 32 x 24, b is {24}
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  testing::Register(*stub, "w0");
  const auto pull = [&](std::vector<std::string> names, bool state, int* values) {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::PullRequest request;
    for (const std::string& name : names) request.add_parameters(name);
    request.set_include_optimizer_state(state);
    auto reader = stub->Pull(&context, request);
    v1::ParameterValue value;
    *values = 0;
    while (reader->Read(&value)) ++*values;
    return reader->Finish();
  };
  int values = 0;
  const grpc::Status refused = pull({"b", "w"}, false, &values);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_NE(refused.error_message().find("parameter 'w' is 3072 bytes"), std::string::npos)
      << refused.error_message();
  EXPECT_EQ(values, 0);  // not even b, which fits
  EXPECT_TRUE(pull({"b"}, false, &values).ok());
  EXPECT_EQ(values, 1);
  // b with AdamW's m and v: 3 x 96 bytes, still within the limit; w with M and Q is not.
  EXPECT_TRUE(pull({"b"}, true, &values).ok());
  EXPECT_EQ(pull({"w"}, true, &values).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(OptimizerStatePull, IsRefusedByDefaultNamingTheFlagAndValuesStillFlow) {
  ServerOptions options = TestServerOptions();
  ASSERT_FALSE(options.service.allow_optimizer_state);  // the default
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  testing::Register(*stub, "w0");
  grpc::ClientContext context;
  SetDeadline(context);
  v1::PullRequest request;
  request.add_parameters("w");
  request.set_include_optimizer_state(true);
  auto reader = stub->Pull(&context, request);
  v1::ParameterValue value;
  EXPECT_FALSE(reader->Read(&value));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(status.error_message().find("--allow_optimizer_state_pull"), std::string::npos)
      << status.error_message();
  // Values without state are not affected.
  const v1::ParameterValue w = testing::PullOne(*stub, "w");
  EXPECT_EQ(w.optimizer_state_case(), v1::ParameterValue::OPTIMIZER_STATE_NOT_SET);
  EXPECT_EQ(w.value().shape_size(), 2);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DION_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define DION_UNDER_SANITIZER 1
#endif
#endif

// The address space this process has mapped (/proc/self/statm, first field, in pages).
int64_t MappedBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t pages = 0;
  statm >> pages;
  return pages * sysconf(_SC_PAGE_SIZE);
}

// In a child process: a shard whose budget is `max_state_bytes`, its address space limited to
// what it has mapped plus 1 GiB, registers a 46340 x 46340 Dion table (~16 GiB of X and M).
// Exits 0 when the call ends RESOURCE_EXHAUSTED and the shard then registers a small table.
void RegisterHugeTableUnderAddressSpaceLimit(int64_t max_state_bytes) {
  ServerOptions options = TestServerOptions();
  options.shard.store.max_state_bytes = max_state_bytes;
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  // Connected, with the server's threads running, before the limit (no model yet).
  if (GetLayout(*stub).error_code() != grpc::StatusCode::FAILED_PRECONDITION) std::_Exit(4);
  const rlimit limit{static_cast<rlim_t>(MappedBytes() + kGiB),
                     static_cast<rlim_t>(MappedBytes() + kGiB)};
  if (setrlimit(RLIMIT_AS, &limit) != 0) std::_Exit(3);
  const grpc::Status status = RegisterTable(*stub, OneDionParameter(46340, 46340));
  std::fprintf(stderr, "code %d: %s\n", static_cast<int>(status.error_code()),
               status.error_message().c_str());
  if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) std::_Exit(1);
  if (!RegisterTable(*stub, OneDionParameter(64, 32)).ok()) std::_Exit(2);
  std::_Exit(0);
}

TEST(AddressSpaceLimitDeathTest, AnAllocationThatFailsIsResourceExhaustedNotUnknown) {
#ifdef DION_UNDER_SANITIZER
  GTEST_SKIP() << "sanitizers reserve more address space than the limit leaves";
#else
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // No budget: the allocation itself fails and the handler's guard answers.
  EXPECT_EXIT(RegisterHugeTableUnderAddressSpaceLimit(kNoStateBudget),
              ::testing::ExitedWithCode(0), "could not allocate");
  // A budget below the table: refused before anything is allocated.
  EXPECT_EXIT(RegisterHugeTableUnderAddressSpaceLimit(3 * kGiB), ::testing::ExitedWithCode(0),
              "--max_state_bytes");
#endif
}

}  // namespace
}  // namespace dion
