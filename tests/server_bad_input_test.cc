// Every kind of bad input through gRPC: the exact ack (REJECTED + status code) or call status,
// and the shard's state unchanged afterwards (versions, checksums, momentum, counters).
#include <gtest/gtest.h>
#include <grpcpp/generic/generic_stub.h>

#include <future>
#include <limits>
#include <string>
#include <vector>

#include "tests/server_test_util.h"

namespace dion {
namespace {

using testing::Connect;
using testing::FactorsContribution;
using testing::GetStatus;
using testing::PullOne;
using testing::RandomFactors;
using testing::Register;
using testing::TestServerOptions;

struct BadPush {
  std::string name;
  v1::Contribution contribution;
  grpc::StatusCode code;
  std::string message_part;  // a piece of the message that says what was wrong
};

void SetFloat(v1::Tensor* tensor, int index, float value) {
  std::string data = tensor->data();
  std::memcpy(data.data() + 4 * index, &value, 4);
  tensor->set_data(data);
}

std::vector<BadPush> BadPushes() {
  const v1::Contribution good = FactorsContribution("w0", 1, "w", 0, 1, RandomFactors(32, 24, 2, 1));
  std::vector<BadPush> cases;
  auto add = [&](std::string name, grpc::StatusCode code, std::string part, auto edit) {
    v1::Contribution c = good;
    edit(c);
    cases.push_back({std::move(name), std::move(c), code, std::move(part)});
  };
  add("UnknownParameter", grpc::StatusCode::NOT_FOUND, "not in model",
      [](v1::Contribution& c) { c.set_parameter("nope"); });
  add("WrongShape", grpc::StatusCode::INVALID_ARGUMENT, "rows, expected m = 32",
      [](v1::Contribution& c) {
        *c.mutable_factors() = FactorsContribution("w0", 1, "w", 0, 1,
                                                   RandomFactors(31, 24, 2, 1)).factors();
      });
  add("RankZero", grpc::StatusCode::INVALID_ARGUMENT, "P", [](v1::Contribution& c) {
    c.mutable_factors()->mutable_p()->set_shape(1, 0);
    c.mutable_factors()->mutable_p()->clear_data();
    c.mutable_factors()->mutable_r()->set_shape(1, 0);
    c.mutable_factors()->mutable_r()->clear_data();
  });
  add("RankAboveMin", grpc::StatusCode::INVALID_ARGUMENT, "outside [1, min(m, n) = 24]",
      [](v1::Contribution& c) {
        *c.mutable_factors() = FactorsContribution("w0", 1, "w", 0, 1,
                                                   RandomFactors(32, 24, 25, 1)).factors();
      });
  add("NaNInP", grpc::StatusCode::INVALID_ARGUMENT, "nan", [](v1::Contribution& c) {
    SetFloat(c.mutable_factors()->mutable_p(), 5, std::numeric_limits<float>::quiet_NaN());
  });
  add("InfInR", grpc::StatusCode::INVALID_ARGUMENT, "inf", [](v1::Contribution& c) {
    SetFloat(c.mutable_factors()->mutable_r(), 7, std::numeric_limits<float>::infinity());
  });
  add("ZeroSamples", grpc::StatusCode::INVALID_ARGUMENT, "sample_count must be > 0",
      [](v1::Contribution& c) { c.set_sample_count(0); });
  add("NegativeSamples", grpc::StatusCode::INVALID_ARGUMENT, "sample_count must be > 0",
      [](v1::Contribution& c) { c.set_sample_count(-4); });
  add("FutureVersion", grpc::StatusCode::OUT_OF_RANGE, "base_version 5",
      [](v1::Contribution& c) { c.set_base_version(5); });
  add("NegativeVersion", grpc::StatusCode::OUT_OF_RANGE, "base_version -1",
      [](v1::Contribution& c) { c.set_base_version(-1); });
  add("UnregisteredWorker", grpc::StatusCode::FAILED_PRECONDITION, "not registered",
      [](v1::Contribution& c) { c.set_worker_id("stranger"); });
  add("EmptyWorker", grpc::StatusCode::INVALID_ARGUMENT, "worker_id",
      [](v1::Contribution& c) { c.set_worker_id(""); });
  add("OverlongWorker", grpc::StatusCode::INVALID_ARGUMENT,
      "worker_id is 257 bytes long, above the limit of 256 bytes",
      [](v1::Contribution& c) { c.set_worker_id(std::string(257, 'w')); });
  add("HugeEntryInP", grpc::StatusCode::INVALID_ARGUMENT, "exceeds the magnitude limit",
      [](v1::Contribution& c) { SetFloat(c.mutable_factors()->mutable_p(), 3, 3e38f); });
  add("NoPayload", grpc::StatusCode::INVALID_ARGUMENT, "neither",
      [](v1::Contribution& c) { c.clear_factors(); });
  add("DenseGradientForDion", grpc::StatusCode::INVALID_ARGUMENT, "low-rank factors",
      [](v1::Contribution& c) {
        c.clear_factors();
        c.mutable_gradient()->add_shape(32);
        c.mutable_gradient()->add_shape(24);
        c.mutable_gradient()->set_data(std::string(32 * 24 * 4, '\0'));
      });
  add("GradientDataLengthMismatch", grpc::StatusCode::INVALID_ARGUMENT, "b",
      [](v1::Contribution& c) {
        c.clear_factors();
        c.set_parameter("b");
        c.mutable_gradient()->add_shape(24);
        c.mutable_gradient()->set_data(std::string(23 * 4, '\0'));
      });
  add("NonFiniteLoss", grpc::StatusCode::INVALID_ARGUMENT, "loss",
      [](v1::Contribution& c) { c.set_loss(std::numeric_limits<double>::infinity()); });
  return cases;
}

class ServerBadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options = TestServerOptions();
    options.max_message_bytes = 64 << 10;
    options.service.allow_optimizer_state = true;  // Fingerprint() compares the momentum too
    server_ = DionServer::Start(options).value();
    stub_ = Connect(server_->address());
  }
  // Everything a bad input could have touched.
  std::string Fingerprint() {
    std::string s;
    for (const std::string p : {"w", "v", "b"}) {
      const v1::ParameterValue value = PullOne(*stub_, p, true);
      absl::StrAppend(&s, p, ":", value.version(), ":", value.checksum(), ":",
                      value.ByteSizeLong(), ":", std::hash<std::string>()(value.SerializeAsString()),
                      ";");
    }
    v1::StatusResponse status = GetStatus(*stub_);
    for (const v1::ParameterStatus& p : status.parameters()) {
      absl::StrAppend(&s, p.parameter(), p.version(), "/", p.contributions_applied(), "/",
                      p.pushes().accepted(), ";");
    }
    return s;
  }
  std::unique_ptr<DionServer> server_;
  std::unique_ptr<v1::ParameterServer::Stub> stub_;
};

TEST_F(ServerBadInputTest, PushBeforeRegistrationIsRejectedFailedPrecondition) {
  std::vector<v1::PushAck> acks = testing::PushAll(
      *stub_, {FactorsContribution("w0", 1, "w", 0, 1, RandomFactors(32, 24, 2, 1))});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_REJECTED);
  EXPECT_EQ(acks[0].status_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(acks[0].message().find("no model is registered"), std::string::npos);
  EXPECT_FALSE(GetStatus(*stub_).model_registered());
  EXPECT_EQ(GetStatus(*stub_).pushes().rejected(), 1);
  grpc::ClientContext context;
  v1::GetLayoutResponse layout;
  EXPECT_EQ(stub_->GetLayout(&context, {}, &layout).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

// Each case is answered REJECTED with its code on a stream that stays open (a good push after
// them is accepted), and nothing changes.
TEST_F(ServerBadInputTest, EveryMalformedContributionIsRejectedWithItsCodeAndChangesNothing) {
  Register(*stub_, "w0");
  const std::string before = Fingerprint();
  const std::vector<BadPush> cases = BadPushes();
  std::vector<v1::Contribution> pushes;
  for (const BadPush& c : cases) pushes.push_back(c.contribution);
  std::vector<v1::PushAck> acks = testing::PushAll(*stub_, pushes);
  ASSERT_EQ(acks.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].name);
    EXPECT_EQ(acks[i].result(), v1::PUSH_RESULT_REJECTED);
    EXPECT_EQ(acks[i].status_code(), cases[i].code) << acks[i].message();
    EXPECT_NE(acks[i].message().find(cases[i].message_part), std::string::npos)
        << acks[i].message();
  }
  server_->shard().Drain();
  EXPECT_EQ(Fingerprint(), before);
  EXPECT_EQ(GetStatus(*stub_).pushes().rejected(), static_cast<int64_t>(cases.size()));
  EXPECT_EQ(GetStatus(*stub_).pushes().accepted(), 0);
}

grpc::Status RegisterAs(v1::ParameterServer::Stub& stub, const std::string& worker_id) {
  grpc::ClientContext context;
  v1::RegisterModelResponse response;
  return stub.RegisterModel(&context, testing::TestModelRequest(worker_id), &response);
}

// Before the fix a worker_id of any length was registered and kept (and reported by Status).
TEST_F(ServerBadInputTest, OverlongWorkerIdIsRefusedByRegisterModelAndNothingIsRegistered) {
  const grpc::Status overlong = RegisterAs(*stub_, std::string(10000, 'w'));
  EXPECT_EQ(overlong.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(overlong.error_message().find("10000 bytes long, above the limit of 256 bytes"),
            std::string::npos)
      << overlong.error_message();
  EXPECT_FALSE(GetStatus(*stub_).model_registered());
  EXPECT_TRUE(RegisterAs(*stub_, std::string(256, 'w')).ok());
  EXPECT_EQ(GetStatus(*stub_).workers_size(), 1);
}

// Before the fix a shard registered every new worker id it was sent, without bound.
TEST(ServerWorkerLimitTest, ANewWorkerBeyondMaxWorkersIsResourceExhaustedAndNotRecorded) {
  ServerOptions options = TestServerOptions();
  options.shard.store.max_workers = 2;
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  ASSERT_TRUE(RegisterAs(*stub, "w0").ok());
  ASSERT_TRUE(RegisterAs(*stub, "w1").ok());
  const grpc::Status third = RegisterAs(*stub, "w2");
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(third.error_message().find("already tracks 2 workers"), std::string::npos)
      << third.error_message();
  EXPECT_TRUE(RegisterAs(*stub, "w1").ok());  // registering again is fine at the limit
  const v1::StatusResponse status = GetStatus(*stub);
  ASSERT_EQ(status.workers_size(), 2);
  // w2 was not recorded: its push is refused as unregistered.
  const std::vector<v1::PushAck> acks = testing::PushAll(
      *stub, {FactorsContribution("w2", 1, "w", 0, 1, RandomFactors(32, 24, 2, 1))});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].status_code(), grpc::StatusCode::FAILED_PRECONDITION);
  options.shard.store.max_workers = 0;
  EXPECT_EQ(DionServer::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServerBadInputTest, DuplicateSequenceIsAcknowledgedAsDuplicateAndAppliedOnce) {
  Register(*stub_, "w0");
  const v1::Contribution c = FactorsContribution("w0", 7, "w", 0, 1, RandomFactors(32, 24, 2, 1));
  std::vector<v1::PushAck> acks = testing::PushAll(*stub_, {c, c});
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED);
  EXPECT_EQ(acks[1].result(), v1::PUSH_RESULT_DUPLICATE);
  acks = testing::PushAll(*stub_, {c});  // a retry on a new stream
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_DUPLICATE);
  server_->shard().Drain();
  const v1::StatusResponse status = GetStatus(*stub_);
  EXPECT_EQ(testing::FindParameter(status, "w")->contributions_applied(), 1);
  EXPECT_EQ(testing::FindParameter(status, "w")->version(), 1);
  EXPECT_EQ(status.pushes().duplicate(), 2);
}

TEST_F(ServerBadInputTest, OversizeMessageEndsTheStreamWithResourceExhausted) {
  Register(*stub_, "w0");
  const std::string before = Fingerprint();
  // 128 x 128 floats = 64 KiB of P alone, above the 64 KiB limit.
  v1::Contribution big = FactorsContribution("w0", 1, "w", 0, 1, RandomFactors(32, 24, 2, 1));
  big.mutable_factors()->mutable_p()->set_data(std::string(128 * 128 * 4, '\0'));
  grpc::Status status;
  std::vector<v1::PushAck> acks = testing::PushAll(*stub_, {big}, &status);
  EXPECT_TRUE(acks.empty());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_EQ(Fingerprint(), before);
}

// Before the fix the server stopped reading at a message that did not parse and ended the
// stream OK, so the client never learned that it and the messages after it were not judged.
TEST_F(ServerBadInputTest, UnparsableMessageEndsTheStreamInvalidArgumentNamingItsPosition) {
  Register(*stub_, "w0");
  const v1::Contribution good = FactorsContribution("w0", 1, "w", 0, 1, RandomFactors(32, 24, 2, 1));
  v1::Contribution bad = FactorsContribution("w0", 2, "w", 0, 1, RandomFactors(32, 24, 2, 2));
  bad.set_worker_id(std::string("w\xff\xfe", 3));  // proto3 strings must be UTF-8
  v1::Contribution after = FactorsContribution("w0", 3, "w", 0, 1, RandomFactors(32, 24, 2, 3));
  grpc::Status status;
  const std::vector<v1::PushAck> acks = testing::PushAll(*stub_, {good, bad, after}, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("message 2 of the push stream (counting from 1)"),
            std::string::npos)
      << status.error_message();
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED);
  server_->shard().Drain();
  EXPECT_EQ(GetStatus(*stub_).pushes().accepted(), 1);  // nothing after the bad one was judged
}

TEST_F(ServerBadInputTest, EmptyStreamEndsOkWithoutAcks) {
  Register(*stub_, "w0");
  grpc::Status status;
  EXPECT_TRUE(testing::PushAll(*stub_, {}, &status).empty());
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(GetStatus(*stub_).pushes().accepted() + GetStatus(*stub_).pushes().rejected(), 0);
}

// A client cancels after writing without reading its acks: whatever the server accepted is
// applied exactly once, nothing else; resending everything shows which (DUPLICATE) were taken.
TEST_F(ServerBadInputTest, ClientDisconnectMidStreamLeavesStateConsistent) {
  Register(*stub_, "w0");
  std::vector<v1::Contribution> pushes;
  for (int k = 0; k < 20; ++k) {
    pushes.push_back(FactorsContribution("w0", k, "w", 0, 1, RandomFactors(32, 24, 2, k)));
  }
  {
    auto client = Connect(server_->address());
    grpc::ClientContext context;
    auto stream = client->Push(&context);
    for (const v1::Contribution& c : pushes) stream->Write(c);
    absl::SleepFor(absl::Milliseconds(20));
    context.TryCancel();
    stream->Finish().IgnoreError();
  }
  // The client's Finish returns at once; the server's handler may still judge a message it
  // had read. Wait until it has returned.
  const absl::Time deadline = testing::Deadline();
  while (server_->service().push_streams() > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(server_->service().push_streams(), 0);
  server_->shard().Drain();
  v1::StatusResponse status = GetStatus(*stub_);
  const int64_t accepted = status.pushes().accepted();
  EXPECT_EQ(testing::FindParameter(status, "w")->contributions_applied(), accepted);
  EXPECT_EQ(testing::FindParameter(status, "w")->version(), accepted);

  std::vector<v1::PushAck> acks = testing::PushAll(*stub_, pushes);
  ASSERT_EQ(acks.size(), pushes.size());
  int64_t duplicates = 0;
  for (const v1::PushAck& ack : acks) duplicates += ack.result() == v1::PUSH_RESULT_DUPLICATE;
  EXPECT_EQ(duplicates, accepted);
  server_->shard().Drain();
  status = GetStatus(*stub_);
  EXPECT_EQ(testing::FindParameter(status, "w")->contributions_applied(), 20);
}

TEST_F(ServerBadInputTest, CallLevelErrorsCarryThePreciseStatus) {
  {
    grpc::ClientContext context;
    v1::RegisterModelRequest bad = testing::TestModelRequest();
    bad.mutable_parameters(0)->set_optimizer(v1::OPTIMIZER_KIND_UNSPECIFIED);
    v1::RegisterModelResponse response;
    EXPECT_EQ(stub_->RegisterModel(&context, bad, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  Register(*stub_, "w0");
  {
    grpc::ClientContext context;
    v1::SubscribeRequest request;
    request.add_parameters("nope");
    v1::VersionUpdate update;
    auto reader = stub_->Subscribe(&context, request);
    EXPECT_FALSE(reader->Read(&update));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext context;
    v1::PullRequest request;
    request.add_parameters("w");
    request.add_parameters("nope");
    v1::ParameterValue value;
    auto reader = stub_->Pull(&context, request);
    EXPECT_FALSE(reader->Read(&value));  // nothing is sent for a bad request
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

// grpc.health.v1.Health/Check with an empty request (service "") answers SERVING (status 1),
// called without generated health stubs through the generic API.
TEST_F(ServerBadInputTest, HealthServiceAnswersServing) {
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  grpc::ClientContext context;
  testing::SetDeadline(context);
  grpc::Slice empty(std::string{});
  grpc::ByteBuffer request(&empty, 1);  // an empty HealthCheckRequest
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) { done.set_value(s); });
  grpc::Status status = done.get_future().get();
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));  // field 1 (status) = SERVING
}

// grpc.reflection.v1alpha ServerReflectionInfo with list_services lists dion.v1.ParameterServer
// (raw bytes through the generic async API: no generated reflection stubs are installed).
TEST_F(ServerBadInputTest, ReflectionListsTheParameterServerService) {
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  testing::SetDeadline(context);
  auto call = generic.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  const auto step = [&](intptr_t expected) {
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), expected);
  };
  call->StartCall(reinterpret_cast<void*>(1));
  step(1);
  grpc::Slice list_services(std::string("\x3a\x00", 2));  // field 7 (list_services) = ""
  grpc::ByteBuffer request(&list_services, 1);
  call->Write(request, reinterpret_cast<void*>(2));
  step(2);
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  step(3);
  ASSERT_TRUE(ok);
  call->WritesDone(reinterpret_cast<void*>(4));
  step(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_NE(bytes.find("dion.v1.ParameterServer"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
}

}  // namespace
}  // namespace dion
