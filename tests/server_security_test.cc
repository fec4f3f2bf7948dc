// TLS, mutual TLS and bearer tokens with roles at a shard's gRPC port (docs/server.md,
// "Security"): who can connect, which role may make which call with which code, that a refused
// call changes nothing, and that rotated certificates and an edited tokens file take effect
// without a restart. Certificates are made by the `openssl` command in a temporary directory.
#include <gtest/gtest.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/tls.h"
#include "server/auth.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

namespace fs = std::filesystem;
using ::dion::testing::FactorsContribution;
using ::dion::testing::RandomFactors;
using ::dion::testing::SetDeadline;
using ::dion::testing::TestModelRequest;
using ::dion::testing::TestServerOptions;

constexpr char kAdmin[] = "admin-token-0123456789abcdef";
constexpr char kWorker[] = "worker-token-0123456789abcdef";
constexpr char kWorkerW1[] = "worker1-token-0123456789abcdef";
constexpr char kReader[] = "reader-token-0123456789abcdef";
constexpr char kExpired[] = "expired-token-0123456789abcdef";

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

// Runs a shell command of openssl; fails the test when it fails.
void Run(const std::string& command) {
  ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
}

// <dir>/<name>.crt/.key: a CA when `ca` is empty, else a leaf signed by <dir>/<ca>.
void MakeCertificate(const std::string& dir, const std::string& name, const std::string& ca,
                     const std::string& extensions) {
  const std::string base = dir + "/" + name;
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  if (ca.empty()) {
    Run(absl::StrCat("openssl req -x509 ", ec, " -keyout ", base, ".key -out ", base,
                     ".crt -days 2 -subj /CN=", name,
                     " -addext basicConstraints=critical,CA:TRUE"
                     " -addext keyUsage=critical,keyCertSign,cRLSign"));
    return;
  }
  WriteFile(base + ".ext", extensions);
  Run(absl::StrCat("openssl req ", ec, " -keyout ", base, ".key -out ", base, ".csr -subj /CN=",
                   name));
  Run(absl::StrCat("openssl x509 -req -in ", base, ".csr -CA ", dir, "/", ca, ".crt -CAkey ",
                   dir, "/", ca, ".key -CAcreateserial -out ", base, ".crt -days 2 -extfile ",
                   base, ".ext"));
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "/security-", getpid()));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_);
    const std::string server_ext =
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
    MakeCertificate(*dir_, "ca", "", "");
    MakeCertificate(*dir_, "other-ca", "", "");
    MakeCertificate(*dir_, "server", "ca", server_ext);
    MakeCertificate(*dir_, "server-other", "other-ca", server_ext);
    MakeCertificate(*dir_, "client", "ca", "extendedKeyUsage=clientAuth\n");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static std::string F(const std::string& name) { return *dir_ + "/" + name; }

  // A shard with TLS (mTLS when `mutual`) and, when `tokens` is set, that tokens file.
  void StartShard(bool mutual, bool tokens, absl::Duration reload = absl::Seconds(10)) {
    ServerOptions options = TestServerOptions();
    // Copies, so that a test can rotate them.
    fs::copy_file(F("server.crt"), F("live.crt"), fs::copy_options::overwrite_existing);
    fs::copy_file(F("server.key"), F("live.key"), fs::copy_options::overwrite_existing);
    options.tls.cert_file = F("live.crt");
    options.tls.key_file = F("live.key");
    options.tls.reload_interval = reload;
    if (mutual) options.tls.client_ca_file = F("ca.crt");
    if (tokens) {
      tokens_file_ = F("tokens.txt");
      WriteFile(tokens_file_, absl::StrCat(kAdmin, " admin ops\n", kWorker, " worker any\n",
                                           kWorkerW1, " worker w1 workers=w1\n", kReader,
                                           " reader dashboards\n", kExpired,
                                           " admin old expires=2020-01-01T00:00:00Z\n"));
      options.auth_tokens_file = tokens_file_;
      options.auth_reload_interval = absl::Milliseconds(10);
    }
    absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // A stub over TLS trusting `ca` (with the client certificate when `client_cert`), sending
  // `token` when not empty; plaintext when `ca` is empty.
  std::unique_ptr<v1::ParameterServer::Stub> Stub(const std::string& ca, bool client_cert,
                                                  const std::string& token) {
    TlsClientConfig tls;
    if (!ca.empty()) tls.ca_file = F(ca + ".crt");
    if (client_cert) {
      tls.cert_file = F("client.crt");
      tls.key_file = F("client.key");
    }
    if (!token.empty()) {
      tls.token_file = F(absl::StrCat("token-", token.substr(0, 6)));
      WriteFile(tls.token_file, token + "\n");
    }
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
        MakeChannelCredentials(tls);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    return v1::ParameterServer::NewStub(
        grpc::CreateChannel(server_->address(), *credentials));
  }

  static grpc::Status CallStatus(v1::ParameterServer::Stub& stub) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    v1::StatusResponse response;
    return stub.Status(&context, v1::StatusRequest(), &response);
  }

  static grpc::Status CallRegister(v1::ParameterServer::Stub& stub, const std::string& worker,
                                   bool other_table = false) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    v1::RegisterModelRequest request = TestModelRequest(worker);
    if (other_table) request.set_model_name("another-model");
    if (other_table) request.mutable_parameters(0)->set_seed(99);
    v1::RegisterModelResponse response;
    return stub.RegisterModel(&context, request, &response);
  }

  static grpc::Status CallPull(v1::ParameterServer::Stub& stub, bool state) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    v1::PullRequest request;
    request.add_parameters("w");
    request.set_include_optimizer_state(state);
    auto reader = stub.Pull(&context, request);
    v1::ParameterValue value;
    while (reader->Read(&value)) {
    }
    return reader->Finish();
  }

  static grpc::Status CallLayout(v1::ParameterServer::Stub& stub) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    v1::GetLayoutResponse response;
    return stub.GetLayout(&context, v1::GetLayoutRequest(), &response);
  }

  static grpc::Status CallSubscribe(v1::ParameterServer::Stub& stub) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Milliseconds(500));
    v1::SubscribeRequest request;
    request.add_parameters("w");
    auto reader = stub.Subscribe(&context, request);
    v1::VersionUpdate update;
    if (reader->Read(&update)) {  // the initial value: subscribed; end it here
      context.TryCancel();
      while (reader->Read(&update)) {
      }
    }
    return reader->Finish();
  }

  static grpc::Status CallCheckpoint(v1::ParameterServer::Stub& stub) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    v1::CheckpointRequest request;
    request.set_run_id("security-test");
    request.set_cut(1);
    v1::CheckpointResponse response;
    return stub.Checkpoint(&context, request, &response);
  }

  // One push of `worker` (sequence 1); the stream's status, and the ack when one came.
  static grpc::Status CallPush(v1::ParameterServer::Stub& stub, const std::string& worker,
                               v1::PushAck* ack) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    auto stream = stub.Push(&context);
    stream->Write(FactorsContribution(worker, 1, "w", 0, 8, RandomFactors(32, 24, 2, 5)));
    stream->WritesDone();
    v1::PushAck received;
    while (stream->Read(&received)) *ack = received;
    return stream->Finish();
  }

  int64_t Accepted() { return server_->shard().Status().pushes.accepted; }

  static std::string* dir_;
  std::string tokens_file_;
  std::unique_ptr<DionServer> server_;
};

std::string* SecurityTest::dir_ = nullptr;

TEST_F(SecurityTest, TlsPortRefusesPlaintextAndAnotherCaAndServesItsOwn) {
  StartShard(/*mutual=*/false, /*tokens=*/false);
  EXPECT_TRUE(CallStatus(*Stub("ca", false, "")).ok());
  const grpc::Status plaintext = CallStatus(*Stub("", false, ""));
  EXPECT_EQ(plaintext.error_code(), grpc::StatusCode::UNAVAILABLE) << plaintext.error_message();
  const grpc::Status other = CallStatus(*Stub("other-ca", false, ""));
  EXPECT_EQ(other.error_code(), grpc::StatusCode::UNAVAILABLE) << other.error_message();
}

TEST_F(SecurityTest, MutualTlsRequiresAClientCertificateOfItsCa) {
  StartShard(/*mutual=*/true, /*tokens=*/false);
  EXPECT_TRUE(CallStatus(*Stub("ca", /*client_cert=*/true, "")).ok());
  const grpc::Status without = CallStatus(*Stub("ca", /*client_cert=*/false, ""));
  EXPECT_EQ(without.error_code(), grpc::StatusCode::UNAVAILABLE) << without.error_message();
}

TEST_F(SecurityTest, RotatedServerCertificateIsServedWithoutARestart) {
  StartShard(/*mutual=*/false, /*tokens=*/false, /*reload=*/absl::Seconds(1));
  ASSERT_TRUE(CallStatus(*Stub("ca", false, "")).ok());
  // Kubernetes swaps a mounted Secret's files in place; here: the other CA's certificate.
  fs::copy_file(F("server-other.crt"), F("live.crt"), fs::copy_options::overwrite_existing);
  fs::copy_file(F("server-other.key"), F("live.key"), fs::copy_options::overwrite_existing);
  bool rotated = false;
  for (int i = 0; i < 100 && !rotated; ++i) {  // the provider polls every second
    absl::SleepFor(absl::Milliseconds(100));
    rotated = CallStatus(*Stub("other-ca", false, "")).ok();  // a new channel: a new handshake
  }
  EXPECT_TRUE(rotated) << "the rotated certificate was not served within 10 s";
  EXPECT_FALSE(CallStatus(*Stub("ca", false, "")).ok());
}

// Every role against every call: the documented code, and a refused call changes nothing.
TEST_F(SecurityTest, EachRoleGetsTheDocumentedCodeForEachCall) {
  StartShard(/*mutual=*/false, /*tokens=*/true);
  auto none = Stub("ca", false, "");
  auto unknown = Stub("ca", false, "unknown-token-0123456789abcdef");
  auto worker = Stub("ca", false, kWorker);
  auto reader = Stub("ca", false, kReader);
  auto admin = Stub("ca", false, kAdmin);
  using grpc::StatusCode;
  auto expired = Stub("ca", false, kExpired);
  const grpc::Status expired_status = CallStatus(*expired);
  EXPECT_EQ(expired_status.error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_NE(expired_status.error_message().find("expired at 2020-01-01"), std::string::npos)
      << expired_status.error_message();
  for (auto* stub : {none.get(), unknown.get(), expired.get()}) {
    EXPECT_EQ(CallStatus(*stub).error_code(), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(CallRegister(*stub, "w0").error_code(), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(CallLayout(*stub).error_code(), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(CallPull(*stub, false).error_code(), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(CallSubscribe(*stub).error_code(), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(CallCheckpoint(*stub).error_code(), StatusCode::UNAUTHENTICATED);
    v1::PushAck ack;
    EXPECT_EQ(CallPush(*stub, "w0", &ack).error_code(), StatusCode::UNAUTHENTICATED);
  }
  // Registering the first table is the admin's: a worker is told to wait for it, a reader
  // may not, and nothing is registered by either.
  EXPECT_EQ(CallRegister(*worker, "w0").error_code(), StatusCode::UNAVAILABLE);
  EXPECT_EQ(CallRegister(*reader, "w0").error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_FALSE(server_->shard().model_registered());
  ASSERT_TRUE(CallRegister(*admin, "w0").ok());
  EXPECT_TRUE(CallRegister(*worker, "w1").ok());  // the registered table: joins
  EXPECT_EQ(CallRegister(*worker, "w1", /*other_table=*/true).error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CallRegister(*admin, "w1", /*other_table=*/true).error_code(),
            StatusCode::FAILED_PRECONDITION);

  for (auto* stub : {worker.get(), reader.get(), admin.get()}) {
    EXPECT_TRUE(CallStatus(*stub).ok());
    EXPECT_TRUE(CallLayout(*stub).ok());
    EXPECT_TRUE(CallPull(*stub, false).ok());
  }
  const StatusCode subscribed = CallSubscribe(*worker).error_code();  // ended by the test
  EXPECT_TRUE(subscribed == StatusCode::CANCELLED || subscribed == StatusCode::DEADLINE_EXCEEDED)
      << subscribed;
  EXPECT_EQ(CallSubscribe(*reader).error_code(), StatusCode::PERMISSION_DENIED);
  // Optimizer state: admin only (and then still subject to --allow_optimizer_state_pull).
  EXPECT_EQ(CallPull(*worker, true).error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CallPull(*reader, true).error_code(), StatusCode::PERMISSION_DENIED);
  const grpc::Status admin_state = CallPull(*admin, true);
  EXPECT_EQ(admin_state.error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_NE(admin_state.error_message().find("allow_optimizer_state_pull"), std::string::npos);
  EXPECT_EQ(CallCheckpoint(*worker).error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CallCheckpoint(*reader).error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CallCheckpoint(*admin).error_code(), StatusCode::FAILED_PRECONDITION)
      << "no checkpoint directory: past authorization, refused by the shard";

  v1::PushAck ack;
  EXPECT_EQ(CallPush(*reader, "w1", &ack).error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Accepted(), 0);
  ASSERT_TRUE(CallPush(*worker, "w1", &ack).ok());
  EXPECT_EQ(ack.result(), v1::PUSH_RESULT_ACCEPTED) << ack.message();
  EXPECT_EQ(Accepted(), 1);
}

TEST_F(SecurityTest, WorkerTokenActsOnlyAsItsListedWorkerIds) {
  StartShard(/*mutual=*/false, /*tokens=*/true);
  ASSERT_TRUE(CallRegister(*Stub("ca", false, kAdmin), "w2").ok());
  auto w1 = Stub("ca", false, kWorkerW1);
  EXPECT_EQ(CallRegister(*w1, "w2").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(CallRegister(*w1, "w1").ok());
  v1::PushAck ack;
  ASSERT_TRUE(CallPush(*w1, "w2", &ack).ok());
  EXPECT_EQ(ack.result(), v1::PUSH_RESULT_REJECTED);
  EXPECT_EQ(ack.status_code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
  EXPECT_EQ(Accepted(), 0);
  ASSERT_TRUE(CallPush(*w1, "w1", &ack).ok());
  EXPECT_EQ(ack.result(), v1::PUSH_RESULT_ACCEPTED) << ack.message();
}

TEST_F(SecurityTest, EditedTokensFileTakesEffectWithoutARestart) {
  StartShard(/*mutual=*/false, /*tokens=*/true);
  auto reader = Stub("ca", false, kReader);
  ASSERT_TRUE(CallStatus(*reader).ok());
  // The reader's token is revoked, a new one added; an invalid edit keeps the last good table.
  WriteFile(tokens_file_, absl::StrCat(kAdmin, " admin ops\n", kReader, " nosuchrole\n"));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_TRUE(CallStatus(*reader).ok()) << "an invalid tokens file must not lock everyone out";
  const std::string fresh = "fresh-reader-token-0123456789";
  WriteFile(tokens_file_, absl::StrCat(kAdmin, " admin ops\n", fresh, " reader new\n"));
  grpc::Status revoked;
  for (int i = 0; i < 100; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    revoked = CallStatus(*reader);
    if (!revoked.ok()) break;
  }
  EXPECT_EQ(revoked.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(CallStatus(*Stub("ca", false, fresh)).ok());
}

TEST_F(SecurityTest, AuthorizationSchemeIsCaseInsensitiveAndNothingElseIsAccepted) {
  StartShard(/*mutual=*/false, /*tokens=*/true);
  auto stub = Stub("ca", false, "");  // metadata set by hand below
  const auto status_with = [&](const std::string& authorization) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    context.AddMetadata("authorization", authorization);
    v1::StatusResponse response;
    return stub->Status(&context, v1::StatusRequest(), &response).error_code();
  };
  EXPECT_EQ(status_with(absl::StrCat("Bearer ", kReader)), grpc::StatusCode::OK);
  EXPECT_EQ(status_with(absl::StrCat("bearer ", kReader)), grpc::StatusCode::OK);
  EXPECT_EQ(status_with(absl::StrCat("BEARER   ", kReader)), grpc::StatusCode::OK);
  EXPECT_EQ(status_with(absl::StrCat("Basic ", kReader)), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status_with(absl::StrCat("Bearer", kReader)), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status_with("Bearer "), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status_with(absl::StrCat("Bearer ", kReader, "x")),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status_with(std::string(kReader).substr(0, 20)), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(SecurityTest, HealthCheckingNeedsNoToken) {
  StartShard(/*mutual=*/false, /*tokens=*/true);
  TlsClientConfig tls;
  tls.ca_file = F("ca.crt");
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(tls);
  ASSERT_TRUE(credentials.ok());
  grpc::GenericStub stub(grpc::CreateChannel(server_->address(), *credentials));
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(10));
  grpc::ByteBuffer request;  // an empty HealthCheckRequest: the server as a whole
  grpc::Slice empty;
  request = grpc::ByteBuffer(&empty, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                 &response, [&](grpc::Status s) { done.set_value(s); });
  const grpc::Status status = done.get_future().get();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST(TlsCredentials, RefuseUnusableFilesAtStartNamingThem) {
  TlsClientConfig token_without_tls;
  token_without_tls.token_file = "whatever";
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> c =
      MakeChannelCredentials(token_without_tls);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("tls_ca_file"), std::string::npos) << c.status();

  TlsServerConfig missing;
  missing.cert_file = "/nonexistent/server.crt";
  missing.key_file = "/nonexistent/server.key";
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> s = MakeServerCredentials(missing);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("/nonexistent/server.crt"), std::string::npos);

  const std::string not_pem = absl::StrCat(::testing::TempDir(), "/not-pem-", getpid());
  WriteFile(not_pem, "hello\n");
  TlsServerConfig garbage;
  garbage.cert_file = not_pem;
  garbage.key_file = not_pem;
  s = MakeServerCredentials(garbage);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("tls_cert_file"), std::string::npos) << s.status();
  TlsServerConfig half;
  half.cert_file = not_pem;
  EXPECT_EQ(MakeServerCredentials(half).status().code(), absl::StatusCode::kInvalidArgument);
  fs::remove(not_pem);
}

TEST(TokensFile, MalformedLinesAreRefusedNamingTheLine) {
  EXPECT_TRUE(ParseTokens("# comment\n\nabcdefghijklmnopq worker w workers=a,b  # x\n", "f")
                  .ok());
  const auto code = [](absl::string_view text) { return ParseTokens(text, "f").status(); };
  EXPECT_NE(code("short admin\n").message().find("line 1"), std::string::npos);
  EXPECT_NE(code("\nabcdefghijklmnopq boss\n").message().find("line 2"), std::string::npos);
  EXPECT_FALSE(code("abcdefghijklmnopq admin a\nabcdefghijklmnopq reader b\n").ok());
  EXPECT_FALSE(code("abcdefghijklmnopq worker w workers=\n").ok());
  EXPECT_FALSE(code("abcdefghijklmnopq worker w workers=a,,b\n").ok());
  EXPECT_FALSE(code("abcdefghijklmnopq worker w extra\n").ok());
  EXPECT_FALSE(code("abcdefghijklmnopq\n").ok());
  EXPECT_FALSE(code("abcdefghijklmnopq reader r expires=tomorrow\n").ok());
  absl::StatusOr<std::vector<TokenEntry>> dated =
      ParseTokens("abcdefghijklmnopq reader r expires=2027-01-31T12:00:00Z\n", "f");
  ASSERT_TRUE(dated.ok()) << dated.status();
  EXPECT_EQ((*dated)[0].principal.expires, absl::FromUnixSeconds(1801396800));
  absl::StatusOr<std::vector<TokenEntry>> parsed =
      ParseTokens("abcdefghijklmnopq worker w workers=a,b\n", "f");
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->size(), 1u);
  EXPECT_TRUE((*parsed)[0].principal.MayActAs("b"));
  EXPECT_FALSE((*parsed)[0].principal.MayActAs("c"));
}

}  // namespace
}  // namespace dion
