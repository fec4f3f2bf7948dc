// Protocol details through gRPC on loopback: GetLayout marks explicit initial values and gives
// every owner's rows of a split parameter, PushAck.current_version is the applied version for
// every result, a sequence below a forced dedup floor is REJECTED (never DUPLICATE), and Pull
// with min_version waits for a version.
#include <limits>
#include <gtest/gtest.h>

#include <future>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "tests/ports_test_util.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

using testing::Connect;
using testing::FactorsContribution;
using testing::GetStatus;
using testing::PullOne;
using testing::PushAll;
using testing::RandomFactors;
using testing::Register;
using testing::TestServerOptions;

v1::Contribution W(uint64_t sequence, int64_t base) {
  return FactorsContribution("w0", sequence, "w", base, 1, RandomFactors(32, 24, 2, sequence));
}

// ---------------------------------------------------------------------------------------------
// GetLayout

TEST(ServerProtocolTest, GetLayoutMarksExplicitInitialValuesAndRefusesThemOnRegistration) {
  auto server = DionServer::Start(TestServerOptions()).value();
  auto stub = Connect(server->address());
  v1::RegisterModelRequest request = testing::TestModelRequest("w0");
  // "b" starts from an explicit value instead of its init spec.
  Matrix initial(1, 24);
  for (int j = 0; j < 24; ++j) initial(0, j) = 0.25f * static_cast<float>(j) - 1.0f;
  MatrixToTensor(initial, {24}, request.mutable_parameters(2)->mutable_initial_value());
  {
    grpc::ClientContext context;
    v1::RegisterModelResponse response;
    ASSERT_TRUE(stub->RegisterModel(&context, request, &response).ok());
  }
  const v1::GetLayoutResponse layout = testing::GetLayout(*stub);
  ASSERT_EQ(layout.parameters_size(), 3);
  for (const v1::ParameterSpec& p : layout.parameters()) {
    SCOPED_TRACE(p.name());
    EXPECT_FALSE(p.has_initial_value()) << "GetLayout sends no values";
    ASSERT_TRUE(p.has_init());
    EXPECT_EQ(p.init().kind(), p.name() == "b" ? v1::INIT_KIND_EXPLICIT : v1::INIT_KIND_KAIMING);
  }
  // The value itself comes from a Pull at version 0.
  EXPECT_EQ(testing::ValueOf(PullOne(*stub, "b")), initial);

  // Registering GetLayout's output verbatim would start "b" from zeros: refused, naming it.
  v1::RegisterModelRequest echoed;
  echoed.set_model_name(layout.model_name());
  *echoed.mutable_parameters() = layout.parameters();
  grpc::ClientContext context;
  v1::RegisterModelResponse response;
  const grpc::Status status = stub->RegisterModel(&context, echoed, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "'b'")) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "initial_value")) << status.error_message();
  // With the pulled value put back, it is the identical table.
  MatrixToTensor(initial, {24}, echoed.mutable_parameters(2)->mutable_initial_value());
  grpc::ClientContext again;
  ASSERT_TRUE(stub->RegisterModel(&again, echoed, &response).ok());
  EXPECT_FALSE(response.newly_registered());
}

// A Dion matrix `name` (rows x cols) over `split_owners` owners (0: whole) in `request`.
void AddDion(v1::RegisterModelRequest& request, const std::string& name, int64_t rows,
             int64_t cols, int split_owners) {
  testing::AddDionMatrix(request, name, rows, cols, /*seed=*/0);
  request.mutable_parameters()->rbegin()->set_split_owners(split_owners);
}

// Over three shards: "w" (96 x 64) split by rows over 3, "v" (24 x 60, wide) split by columns
// over 2, "u" and "b" whole. Every shard's GetLayout gives the same placements: each owner of a
// split parameter with its rows of the tall side, in row order, covering it (the rule of
// common/layout.h: blocks to the least-loaded shards, whole parameters after them by size);
// whole parameters have no row_owners. The specs echo split_owners, so a client lays the
// table out as the shards did.
TEST(ServerProtocolTest, GetLayoutGivesEveryOwnersRowsOfASplitParameter) {
  const std::vector<int> ports = testing::ReservePorts(3);
  ASSERT_EQ(ports.size(), 3u);
  std::vector<std::string> addresses;
  for (int port : ports) addresses.push_back(absl::StrCat("127.0.0.1:", port));
  v1::RegisterModelRequest request;
  request.set_model_name("split-layout");
  AddDion(request, "w", 96, 64, 3);
  AddDion(request, "v", 24, 60, 2);
  AddDion(request, "u", 8, 8, 0);
  v1::ParameterSpec* b = request.add_parameters();
  b->set_name("b");
  b->add_shape(4);
  b->set_optimizer(v1::OPTIMIZER_KIND_ADAMW);

  std::vector<std::unique_ptr<DionServer>> shards;
  for (int i = 0; i < 3; ++i) {
    ServerOptions options = TestServerOptions();
    options.listen = addresses[i];
    options.shard.store.shard_index = i;
    options.shard.store.num_shards = 3;
    options.peer.addresses = addresses;
    absl::StatusOr<std::unique_ptr<DionServer>> shard = DionServer::Start(options);
    ASSERT_TRUE(shard.ok()) << shard.status();
    shards.push_back(*std::move(shard));
    auto stub = Connect(shards.back()->address());
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::RegisterModelResponse response;
    const grpc::Status status = stub->RegisterModel(&context, request, &response);
    ASSERT_TRUE(status.ok()) << "shard " << i << ": " << status.error_message();
  }

  struct Owner {
    uint32_t shard;
    int64_t begin, end;
  };
  struct Expected {
    std::string parameter;
    uint32_t shard;
    int64_t size;
    std::vector<Owner> owners;
  };
  const std::vector<Expected> expected = {
      {"w", 0, 96 * 64, {{0, 0, 32}, {1, 32, 64}, {2, 64, 96}}},
      {"v", 0, 24 * 60, {{0, 0, 30}, {1, 30, 60}}},
      {"u", 2, 64, {}},
      {"b", 2, 4, {}},
  };
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(absl::StrCat("GetLayout of shard ", i));
    auto stub = Connect(shards[i]->address());
    const v1::GetLayoutResponse response = testing::GetLayout(*stub);
    ASSERT_FALSE(HasFailure());
    EXPECT_EQ(response.shard_index(), static_cast<uint32_t>(i));
    EXPECT_EQ(response.model_name(), "split-layout");
    const v1::Layout& layout = response.layout();
    EXPECT_EQ(layout.num_shards(), 3u);
    ASSERT_EQ(layout.placements_size(), 4);
    for (size_t k = 0; k < expected.size(); ++k) {
      const v1::Layout::Placement& p = layout.placements(static_cast<int>(k));
      SCOPED_TRACE(expected[k].parameter);
      EXPECT_EQ(p.parameter(), expected[k].parameter);
      EXPECT_EQ(p.shard(), expected[k].shard);
      EXPECT_EQ(p.size(), expected[k].size);
      ASSERT_EQ(p.row_owners_size(), static_cast<int>(expected[k].owners.size()));
      for (int o = 0; o < p.row_owners_size(); ++o) {
        EXPECT_EQ(p.row_owners(o).shard(), expected[k].owners[o].shard) << "owner " << o;
        EXPECT_EQ(p.row_owners(o).row_begin(), expected[k].owners[o].begin) << "owner " << o;
        EXPECT_EQ(p.row_owners(o).row_end(), expected[k].owners[o].end) << "owner " << o;
      }
    }
    ASSERT_EQ(response.parameters_size(), 4);
    EXPECT_EQ(response.parameters(0).split_owners(), 3u);
    EXPECT_EQ(response.parameters(1).split_owners(), 2u);
    EXPECT_EQ(response.parameters(2).split_owners(), 0u);
    EXPECT_EQ(response.parameters(3).split_owners(), 0u);
  }
}

// ---------------------------------------------------------------------------------------------
// PushAck.current_version

// "w" steps wait behind a slow step of "big" on the only compute thread, so the batcher's
// version runs ahead of the applied one. Every ack, whatever its result, must carry the applied
// version (0 here), not the version of the open batch (which reached 2): before the fix
// ACCEPTED, DUPLICATE and STALE acks carried the latter.
TEST(ServerProtocolTest, PushAckCurrentVersionIsTheAppliedVersionForEveryResult) {
  // As dion-server's default --blas_threads: OpenBLAS's own threads are invisible to TSan,
  // which would report the big products' buffers as races.
  SetBlasThreads(1).IgnoreError();  // one thread: always OK
  ServerOptions options = TestServerOptions();
  options.shard.compute_threads = 1;
  options.shard.batcher.staleness.max_staleness = 1;
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  v1::RegisterModelRequest request = testing::TestModelRequest("w0");
  // Full rank on 768 x 768: a step of several 768^3 products and an orthonormalization,
  // ~100 ms in Release and slower under sanitizers; the pushes below take ~1 ms.
  v1::ParameterSpec* big = request.add_parameters();
  big->set_name("big");
  big->add_shape(768);
  big->add_shape(768);
  big->set_optimizer(v1::OPTIMIZER_KIND_DION);
  big->mutable_dion()->set_rank_fraction(1.0);
  {
    grpc::ClientContext context;
    v1::RegisterModelResponse response;
    ASSERT_TRUE(stub->RegisterModel(&context, request, &response).ok());
  }
  const std::vector<v1::PushAck> acks = PushAll(
      *stub, {FactorsContribution("w0", 0, "big", 0, 1, RandomFactors(768, 768, 1, 9)),
              W(0, 0),    // ACCEPTED into the batch of version 0, which closes
              W(1, 0),    // ACCEPTED into version 1 (staleness 1), which closes
              W(0, 0),    // DUPLICATE
              W(2, 0),    // STALE: staleness 2 > 1
              W(3, 7)});  // REJECTED: base_version from the future
  // Only meaningful while "w" had not stepped yet: the versions are monotonic, so if it is
  // still 0 now it was 0 when every ack above was written.
  ASSERT_EQ(testing::FindParameter(GetStatus(*stub), "w")->version(), 0)
      << "the step of 'big' finished before the pushes did; the test needs it to be slower";
  ASSERT_EQ(acks.size(), 6u);
  const v1::PushResult expected[] = {v1::PUSH_RESULT_ACCEPTED, v1::PUSH_RESULT_ACCEPTED,
                                     v1::PUSH_RESULT_ACCEPTED, v1::PUSH_RESULT_DUPLICATE,
                                     v1::PUSH_RESULT_STALE,    v1::PUSH_RESULT_REJECTED};
  for (size_t i = 1; i < acks.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(acks[i].result(), expected[i]) << acks[i].message();
    EXPECT_EQ(acks[i].current_version(), 0);
  }
  EXPECT_EQ(acks[2].staleness(), 1);  // the batch version, 1, is base_version + staleness
  EXPECT_EQ(acks[4].staleness(), 2);
  EXPECT_TRUE(absl::StrContains(acks[4].message(), "version of the open batch 2"))
      << acks[4].message();
  EXPECT_EQ(acks[5].status_code(), static_cast<int>(grpc::StatusCode::OUT_OF_RANGE));

  // Once applied, acks report the new applied version; unknown parameters report 0.
  server->shard().Drain();
  const std::vector<v1::PushAck> later =
      PushAll(*stub, {W(0, 0), FactorsContribution("w0", 1, "nope", 0, 1, RandomFactors(2, 2, 1, 1))});
  EXPECT_EQ(later[0].result(), v1::PUSH_RESULT_DUPLICATE);
  EXPECT_EQ(later[0].current_version(), 2);
  EXPECT_EQ(later[1].result(), v1::PUSH_RESULT_REJECTED);
  EXPECT_EQ(later[1].current_version(), 0);
}

// ---------------------------------------------------------------------------------------------
// Dedup window

// Before the fix sequence 2^64-1 was accepted, forced the dedup floor to the top of the range
// and every later sequence of the worker for that parameter was DATA_LOSS for good.
TEST(ServerProtocolTest, SequenceBeyondTheHorizonIsRefusedAndDoesNotLockTheWorkerOut) {
  auto server = DionServer::Start(TestServerOptions()).value();
  auto stub = Connect(server->address());
  Register(*stub, "w0");
  const uint64_t top = std::numeric_limits<uint64_t>::max();
  const std::vector<v1::PushAck> acks = PushAll(*stub, {W(5, 0), W(top, 0), W(6, 0), W(top, 0)});
  ASSERT_EQ(acks.size(), 4u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED);
  EXPECT_EQ(acks[1].result(), v1::PUSH_RESULT_REJECTED);
  EXPECT_EQ(acks[1].status_code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  for (const char* part : {"sequence 18446744073709551615", "beyond the sequence horizon",
                           "highest accepted sequence 5", "nothing was recorded"}) {
    EXPECT_TRUE(absl::StrContains(acks[1].message(), part)) << part << ": " << acks[1].message();
  }
  EXPECT_EQ(acks[2].result(), v1::PUSH_RESULT_ACCEPTED) << acks[2].message();
  EXPECT_EQ(acks[3].result(), v1::PUSH_RESULT_REJECTED);
  server->shard().Drain();
  const v1::StatusResponse status = GetStatus(*stub);
  EXPECT_EQ(testing::FindParameter(status, "w")->contributions_applied(), 2);
  EXPECT_EQ(status.pushes().rejected(), 2);
}

// Before the fix the retry of sequence 3 (which never arrived) was answered DUPLICATE, and a
// worker treating that as "accepted" lost the contribution.
TEST(ServerProtocolTest, SequenceOlderThanAForcedDedupFloorIsRejectedDataLossNotDuplicate) {
  ServerOptions options = TestServerOptions();
  options.shard.batcher.dedup_window = 8;
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  Register(*stub, "w0");
  const std::vector<v1::PushAck> acks = PushAll(*stub, {W(0, 0), W(20, 0), W(3, 0), W(20, 0)});
  ASSERT_EQ(acks.size(), 4u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED);
  EXPECT_EQ(acks[1].result(), v1::PUSH_RESULT_ACCEPTED);
  EXPECT_EQ(acks[2].result(), v1::PUSH_RESULT_REJECTED);
  EXPECT_EQ(acks[2].status_code(), static_cast<int>(grpc::StatusCode::DATA_LOSS));
  for (const char* part : {"older than the dedup window", "floor 13", "window 8", "NOT applied",
                           "cannot tell", "fewer than 8 unacknowledged"}) {
    EXPECT_TRUE(absl::StrContains(acks[2].message(), part)) << part << ": " << acks[2].message();
  }
  EXPECT_EQ(acks[3].result(), v1::PUSH_RESULT_DUPLICATE);
  server->shard().Drain();
  const v1::StatusResponse status = GetStatus(*stub);
  EXPECT_EQ(testing::FindParameter(status, "w")->contributions_applied(), 2);
  EXPECT_EQ(status.pushes().rejected(), 1);
  EXPECT_EQ(status.pushes().duplicate(), 1);
}

// ---------------------------------------------------------------------------------------------
// Pull with min_version

struct PullResult {
  grpc::Status status;
  std::vector<v1::ParameterValue> values;
};

PullResult PullAt(v1::ParameterServer::Stub& stub, std::vector<std::string> parameters,
                  int64_t min_version, absl::Duration deadline) {
  grpc::ClientContext context;
  testing::SetDeadline(context, deadline);
  v1::PullRequest request;
  for (const std::string& p : parameters) request.add_parameters(p);
  request.set_min_version(min_version);
  auto reader = stub.Pull(&context, request);
  PullResult result;
  v1::ParameterValue value;
  while (reader->Read(&value)) result.values.push_back(value);
  result.status = reader->Finish();
  return result;
}

TEST(ServerProtocolTest, PullAtTheNextVersionReturnsOnceAPushCompletesTheStep) {
  auto server = DionServer::Start(TestServerOptions()).value();
  auto stub = Connect(server->address());
  Register(*stub, "w0");
  ASSERT_EQ(PushAll(*stub, {W(0, 0)})[0].result(), v1::PUSH_RESULT_ACCEPTED);
  ASSERT_TRUE(testing::WaitForStatus(
      *stub, [](const v1::StatusResponse& s) { return testing::FindParameter(s, "w")->version() == 1; }));

  // Asks for "b" (already at 0) and "w" at version 2, which does not exist yet.
  std::future<PullResult> pending = std::async(std::launch::async, [&] {
    auto client = Connect(server->address());
    return PullAt(*client, {"b", "w"}, 2, absl::Seconds(20));
  });
  // "b" is at version 0 < 2 as well: push one step of each.
  EXPECT_EQ(pending.wait_for(std::chrono::milliseconds(150)), std::future_status::timeout)
      << "the Pull must wait for version 2";
  ASSERT_EQ(PushAll(*stub, {W(1, 1)})[0].result(), v1::PUSH_RESULT_ACCEPTED);
  EXPECT_EQ(pending.wait_for(std::chrono::milliseconds(150)), std::future_status::timeout)
      << "'b' is still below version 2";
  Contribution dense;
  dense.worker_id = "w0";
  dense.parameter = "b";
  dense.sample_count = 1;
  dense.payload = Matrix::Constant(1, 24, 0.5f);
  for (int64_t k = 0; k < 2; ++k) {
    dense.sequence = k;
    dense.base_version = k;
    v1::Contribution proto;
    ContributionToProto(dense, &proto, {24});
    ASSERT_EQ(PushAll(*stub, {proto})[0].result(), v1::PUSH_RESULT_ACCEPTED);
    if (k == 0) {
      ASSERT_TRUE(testing::WaitForStatus(*stub, [](const v1::StatusResponse& s) {
        return testing::FindParameter(s, "b")->version() == 1;
      }));
    }
  }
  ASSERT_EQ(pending.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  PullResult result = pending.get();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  ASSERT_EQ(result.values.size(), 2u);
  EXPECT_EQ(result.values[0].parameter(), "b");
  EXPECT_EQ(result.values[1].parameter(), "w");
  for (const v1::ParameterValue& value : result.values) {
    EXPECT_EQ(value.version(), 2) << value.parameter();
    EXPECT_EQ(WeightsChecksum(testing::ValueOf(value)), value.checksum());
    EXPECT_EQ(value.checksum(), PullOne(*stub, value.parameter()).checksum());
  }
  // A version already reached returns at once.
  const absl::Time start = absl::Now();
  PullResult reached = PullAt(*stub, {"w"}, 1, absl::Seconds(20));
  ASSERT_TRUE(reached.status.ok()) << reached.status.error_message();
  EXPECT_EQ(reached.values.at(0).version(), 2);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(ServerProtocolTest, PullAtAVersionNotReachedBeforeTheDeadlineIsDeadlineExceeded) {
  auto server = DionServer::Start(TestServerOptions()).value();
  auto stub = Connect(server->address());
  Register(*stub, "w0");
  const absl::Time start = absl::Now();
  PullResult result = PullAt(*stub, {"v", "w"}, 5, absl::Seconds(1));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(result.values.empty()) << "nothing is sent unless every parameter is ready";
  // The server answers before the deadline so that its message, naming the parameter and both
  // versions, reaches the client.
  for (const char* part : {"'v'", "reached version 0", "5 wanted"}) {
    EXPECT_TRUE(absl::StrContains(result.status.error_message(), part))
        << part << ": " << result.status.error_message();
  }
  EXPECT_LT(took, absl::Seconds(5));
}

TEST(ServerProtocolTest, PullAtAVersionIsRefusedWhenItCannotBeServed) {
  auto server = DionServer::Start(TestServerOptions()).value();
  auto stub = Connect(server->address());
  // No model: FAILED_PRECONDITION at once, not a wait until the deadline.
  PullResult unregistered = PullAt(*stub, {"w"}, 1, absl::Seconds(20));
  EXPECT_EQ(unregistered.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  PullResult all_unregistered = PullAt(*stub, {}, 1, absl::Seconds(20));
  EXPECT_EQ(all_unregistered.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  Register(*stub, "w0");
  EXPECT_EQ(PullAt(*stub, {"w"}, -1, absl::Seconds(20)).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(PullAt(*stub, {"nope"}, 1, absl::Seconds(20)).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST(ServerProtocolTest, PullWaitingForAVersionEndsUnavailableWhenTheShardShutsDown) {
  auto server = DionServer::Start(TestServerOptions()).value();
  auto stub = Connect(server->address());
  Register(*stub, "w0");
  std::future<PullResult> pending = std::async(std::launch::async, [&] {
    return PullAt(*stub, {"w"}, 3, absl::Seconds(20));
  });
  ASSERT_EQ(pending.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  const absl::Time start = absl::Now();
  ASSERT_TRUE(server->Shutdown().ok());
  ASSERT_EQ(pending.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const PullResult result = pending.get();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << result.status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << "the shutdown grace must not be waited out";
}

}  // namespace
}  // namespace dion
