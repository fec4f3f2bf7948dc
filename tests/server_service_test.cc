// The gRPC service end to end over loopback (127.0.0.1, port 0): registration, concurrent
// pushes checked against common/'s Dion step applied to the same batches, subscribers keeping
// replicas equal to the server, staleness, and graceful shutdown with a restart from the
// checkpoint.
#include <Eigen/QR>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <thread>
#include <vector>

#include "common/dion.h"
#include "common/model_table.h"
#include "common/rng.h"
#include "tests/reference.h"
#include "tests/server_test_util.h"

namespace dion {
namespace {

using testing::Connect;
using testing::GetStatus;
using testing::PullOne;
using testing::Register;
using testing::Replica;
using testing::TestServerOptions;

ParamSpec SpecOf(const std::string& name) {
  ModelTable table = ModelTableFromProto(testing::TestModelRequest()).value();
  for (const ParameterDefinition& d : table.parameters) {
    if (d.spec.name == name) return d.spec;
  }
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

TEST(ServerServiceTest, RegisteringTheSameTableTwiceIsIdempotentAndAConflictIsRefused) {
  auto server = DionServer::Start(TestServerOptions()).value();
  auto stub = Connect(server->address());
  for (bool expect_new : {true, false}) {
    grpc::ClientContext context;
    v1::RegisterModelResponse response;
    ASSERT_TRUE(stub->RegisterModel(&context, testing::TestModelRequest("w0"), &response).ok());
    EXPECT_EQ(response.newly_registered(), expect_new);
    EXPECT_EQ(response.layout().placements_size(), 3);
  }
  v1::RegisterModelRequest conflicting = testing::TestModelRequest();
  conflicting.mutable_parameters(1)->set_shape(0, 13);
  grpc::ClientContext context;
  v1::RegisterModelResponse response;
  grpc::Status status = stub->RegisterModel(&context, conflicting, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("'v'"), std::string::npos) << status.error_message();
}

// A 32 x 24 gradient in factored form (P 32 x 16, R 24 x 16) with a clear rank-6 structure:
// the same orthonormal directions U, V in every push with singular values 8, 7, ..., 3 times
// a per-push amplitude in [0.5, 1.5], plus a rank-10 Gaussian part (P entries N(0, 0.3^2/10),
// R entries N(0, 1/24)) whose largest singular value is ~0.9 (at most 1.2 in 200 draws).
// Signal adds up across pushes and steps while the noise does so only in random directions,
// so the top-6 subspace Dion tracks (r = 6 for 32 x 24) is well determined.
// With unstructured Gaussian factors the momentum's 6th and 7th singular values are at times
// close together, and the subspace between them is decided by rounding: the ~1e-7 by which
// the server's and the reference's sums differ grew to 1e-6..2e-5 in X within 40 steps
// (the TSan CI failure of 2026-11-25: 3.3e-6), in whichever build rounds differently.
LowRankFactors PlantedFactors(uint64_t seed) {
  static constexpr int kM = 32, kN = 24, kSignal = 6, kNoise = 10;
  const auto orthonormal = [](int rows, uint64_t basis_seed) {
    Rng rng(basis_seed);
    Matrix A(rows, kSignal);
    rng.FillNormal(A);
    return Matrix(Eigen::HouseholderQR<Matrix>(A).householderQ() *
                  Matrix::Identity(rows, kSignal));
  };
  static const Matrix U = orthonormal(kM, 11), V = orthonormal(kN, 12);
  Rng rng(seed);
  const double amplitude = 0.5 + rng.Uniform();
  LowRankFactors f{Matrix(kM, kSignal + kNoise), Matrix(kN, kSignal + kNoise)};
  for (int k = 0; k < kSignal; ++k) {
    f.P.col(k) = static_cast<float>(amplitude * (8 - k)) * U.col(k);
    f.R.col(k) = V.col(k);
  }
  rng.FillNormal(f.P.rightCols(kNoise), 0.3 / std::sqrt(static_cast<double>(kNoise)));
  rng.FillNormal(f.R.rightCols(kNoise), 1.0 / std::sqrt(static_cast<double>(kN)));
  return f;
}

// N clients push concurrently; the batches the server formed (read back from the acks: an
// accepted contribution went into the batch of version base_version + staleness) are
// replayed with common/'s Dion step and the `inverse` weights samples / (1 + tau).
// Tolerance 1e-6 relative: the reference sums each batch with plain Eigen products (in the
// server's order, by worker and sequence, but not as one stacked GEMM), so the two differ by
// float rounding (~1e-7 per step), not by any formula. Every contribution has rank 16 >= r:
// a batch of one contribution never leaves M rank-deficient (P = M Q would then have columns
// of pure rounding noise, scaled up by the column normalisation: 1-3% apart).
TEST(ServerServiceTest, ConcurrentClientsMatchCommonDionAppliedToTheSameBatches) {
  ServerOptions options = TestServerOptions();
  options.shard.batcher.target_workers = 0;
  options.shard.batcher.target_samples = 4;
  options.shard.batcher.adaptive = false;  // a fixed target, so batches group several pushes
  options.shard.batcher.deadline = absl::Milliseconds(20);  // closes the last, partial batch
  options.service.allow_optimizer_state = true;  // the replay starts from the pulled M
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  constexpr int kClients = 4, kPushes = 12;
  for (int c = 0; c < kClients; ++c) Register(*stub, absl::StrCat("worker", c));

  const v1::ParameterValue initial = PullOne(*stub, "w", /*state=*/true);
  Replica replica(*stub, {"w"});

  struct Sent {
    LowRankFactors factors;
    int64_t samples, base;
    v1::PushAck ack;
  };
  std::vector<std::vector<Sent>> sent(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto client = Connect(server->address());
      grpc::ClientContext context;
      testing::SetDeadline(context);
      auto stream = client->Push(&context);
      for (int k = 0; k < kPushes; ++k) {
        const v1::ParameterStatus* w = nullptr;
        v1::StatusResponse status = GetStatus(*client);
        w = testing::FindParameter(status, "w");
        const int64_t base = std::max<int64_t>(0, (w ? w->version() : 0) - k % 3);
        Sent s{PlantedFactors(1000 * c + k), 1 + k % 3, base, {}};
        ASSERT_TRUE(stream->Write(testing::FactorsContribution(
            absl::StrCat("worker", c), k, "w", base, s.samples, s.factors)));
        ASSERT_TRUE(stream->Read(&s.ack));
        sent[c].push_back(std::move(s));
      }
      stream->WritesDone();
      EXPECT_TRUE(stream->Finish().ok());
    });
  }
  for (std::thread& t : clients) t.join();

  // Group by batch version.
  std::map<int64_t, std::vector<const Sent*>> batches;
  for (const auto& client : sent) {
    ASSERT_EQ(client.size(), kPushes);
    for (const Sent& s : client) {
      ASSERT_EQ(s.ack.result(), v1::PUSH_RESULT_ACCEPTED) << s.ack.message();
      // current_version is the applied version, never ahead of the batch's version.
      const int64_t batch_version = s.base + s.ack.staleness();
      EXPECT_LE(s.ack.current_version(), batch_version);
      EXPECT_GE(s.ack.current_version(), s.base);
      batches[batch_version].push_back(&s);
    }
  }
  const int64_t versions = static_cast<int64_t>(batches.size());
  ASSERT_EQ(batches.rbegin()->first, versions - 1) << "batch versions must be contiguous";
  ASSERT_TRUE(testing::WaitForStatus(*stub, [&](const v1::StatusResponse& s) {
    const v1::ParameterStatus* w = testing::FindParameter(s, "w");
    return w != nullptr && w->contributions_applied() == kClients * kPushes;
  }));
  EXPECT_GT(versions, 1);
  EXPECT_LT(versions, kClients * kPushes) << "the sample target should group contributions";

  const ParamSpec spec = SpecOf("w");
  Matrix X = testing::ValueOf(initial);
  DionState state;
  state.M = TensorToMatrix(initial.dion().momentum(), "M").value();
  state.Q = TensorToMatrix(initial.dion().q(), "Q").value();
  state.step = initial.dion().step();
  for (const auto& [version, entries] : batches) {
    std::vector<testing::ReferenceEntry> reference;
    double total = 0;
    for (const Sent* s : entries) {
      const double w = static_cast<double>(s->samples) / (1.0 + (version - s->base));
      reference.push_back({s->factors, w});
      total += w;
    }
    for (auto& e : reference) e.weight /= total;
    testing::ApplyReferenceBatch(reference, spec.dion, X, state);
  }
  const v1::ParameterValue final_value = PullOne(*stub, "w");
  EXPECT_EQ(final_value.version(), versions);
  // 1e-6 relative in the Frobenius norm (the stated bound), and 1e-5 for the largest entry.
  // Measured: 6e-8..8e-8 over 20 Release and 25 TSan runs; a replay that forgets the
  // staleness weights is off by ~1e-3.
  const MatrixD served = testing::ValueOf(final_value).cast<double>();
  EXPECT_LE(testing::RelativeError(served, X.cast<double>()), 1e-6);
  EXPECT_LE(testing::MaxRelativeError(served, X.cast<double>()), 1e-5);

  // The subscriber followed along and holds the same weights, bit for bit.
  ASSERT_TRUE(replica.WaitFor("w", versions));
  EXPECT_EQ(replica.mismatches(), 0);
  EXPECT_EQ(replica.gaps(), 0);
  EXPECT_EQ(WeightsChecksum(replica.value("w")), final_value.checksum());
}

// One contribution per batch, 100 versions of each Dion parameter (tall and transposed) and 20
// of the AdamW one; the replica applies every low-rank step and checks every checksum.
TEST(ServerServiceTest, SubscriberApplyingLowRankStepsMatchesChecksumsAcross100Versions) {
  auto server = DionServer::Start(TestServerOptions()).value();
  auto stub = Connect(server->address());
  Register(*stub, "w0");
  Replica replica(*stub, {});  // every parameter, starting with full values
  ASSERT_TRUE(replica.WaitFor("w", 0) && replica.WaitFor("v", 0) && replica.WaitFor("b", 0));

  std::vector<v1::Contribution> pushes;
  for (int k = 0; k < 100; ++k) {
    pushes.push_back(testing::FactorsContribution("w0", k, "w", 0, 1,
                                                  testing::RandomFactors(32, 24, 2, k)));
    pushes.push_back(testing::FactorsContribution("w0", k, "v", 0, 1,
                                                  testing::RandomFactors(12, 20, 2, 500 + k)));
  }
  for (int k = 0; k < 20; ++k) {
    Contribution c;
    c.worker_id = "w0";
    c.sequence = k;
    c.parameter = "b";
    c.sample_count = 1;
    Matrix G(1, 24);
    Rng(900 + k).FillNormal(G);
    c.payload = G;
    v1::Contribution proto;
    ContributionToProto(c, &proto, std::vector<int64_t>{24});
    pushes.push_back(proto);
  }
  for (const v1::PushAck& ack : testing::PushAll(*stub, pushes)) {
    ASSERT_EQ(ack.result(), v1::PUSH_RESULT_ACCEPTED) << ack.message();
  }
  ASSERT_TRUE(replica.WaitFor("w", 100));
  ASSERT_TRUE(replica.WaitFor("v", 100));
  ASSERT_TRUE(replica.WaitFor("b", 20));
  EXPECT_EQ(replica.mismatches(), 0);
  EXPECT_EQ(replica.gaps(), 0);
  EXPECT_GE(replica.low_rank_steps(), 100);  // a lagging stream may turn some into full values
  for (const std::string p : {"w", "v", "b"}) {
    EXPECT_EQ(WeightsChecksum(replica.value(p)), PullOne(*stub, p).checksum()) << p;
  }
}

TEST(ServerServiceTest, PushAboveMaxStalenessIsRefusedAndNothingIsApplied) {
  ServerOptions options = TestServerOptions();
  options.shard.batcher.staleness.max_staleness = 2;
  options.service.allow_optimizer_state = true;  // "nothing is applied" includes the momentum
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  Register(*stub, "w0");
  std::vector<v1::Contribution> pushes;
  for (int k = 0; k < 3; ++k) {
    pushes.push_back(testing::FactorsContribution("w0", k, "w", 0, 1,
                                                  testing::RandomFactors(32, 24, 2, k)));
  }
  for (const v1::PushAck& ack : testing::PushAll(*stub, pushes)) {
    ASSERT_EQ(ack.result(), v1::PUSH_RESULT_ACCEPTED);
  }
  ASSERT_TRUE(testing::WaitForStatus(*stub, [](const v1::StatusResponse& s) {
    return testing::FindParameter(s, "w")->version() == 3;
  }));
  const v1::ParameterValue before = PullOne(*stub, "w", true);

  // tau = 3 - 0 > 2: refused with the current version.
  const LowRankFactors late = testing::RandomFactors(32, 24, 2, 77);
  std::vector<v1::PushAck> acks =
      testing::PushAll(*stub, {testing::FactorsContribution("w0", 10, "w", 0, 1, late)});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_STALE);
  EXPECT_EQ(acks[0].current_version(), 3);
  EXPECT_EQ(acks[0].staleness(), 3);
  server->shard().Drain();
  const v1::ParameterValue after = PullOne(*stub, "w", true);
  EXPECT_EQ(after.version(), 3);
  EXPECT_EQ(after.checksum(), before.checksum());
  EXPECT_EQ(after.dion().momentum().data(), before.dion().momentum().data());
  const v1::StatusResponse status = GetStatus(*stub);
  EXPECT_EQ(testing::FindParameter(status, "w")->contributions_applied(), 3);
  EXPECT_EQ(status.pushes().stale(), 1);

  // The same sequence, resent against the current version, is judged again and accepted.
  acks = testing::PushAll(*stub, {testing::FactorsContribution("w0", 10, "w", 3, 1, late)});
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_ACCEPTED);
}

// SIGTERM's path without the signal: subscriptions end UNAVAILABLE, the open batch is applied,
// a checkpoint is written; a new server on the same directory resumes bit for bit, with the
// dedup state (a resent sequence is a duplicate).
TEST(ServerServiceTest, GracefulShutdownCheckpointsAndARestartResumes) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/svc-shutdown-", getpid());
  ServerOptions options = TestServerOptions();
  options.shard.checkpoint_dir = dir;
  options.shard.batcher.target_workers = 0;
  options.shard.batcher.target_samples = 1000;  // nothing closes before the shutdown
  options.service.allow_optimizer_state = true;  // the restored state is pulled
  auto server = DionServer::Start(options).value();
  auto stub = Connect(server->address());
  Register(*stub, "w0");
  Replica replica(*stub, {"w"});
  ASSERT_TRUE(replica.WaitFor("w", 0));
  std::vector<v1::Contribution> pushes;
  for (int k = 0; k < 3; ++k) {
    pushes.push_back(testing::FactorsContribution("w0", k, "w", 0, 2,
                                                  testing::RandomFactors(32, 24, 2, k)));
  }
  for (const v1::PushAck& ack : testing::PushAll(*stub, pushes)) {
    ASSERT_EQ(ack.result(), v1::PUSH_RESULT_ACCEPTED);
  }
  EXPECT_EQ(GetStatus(*stub).parameters(0).version(), 0);  // still in the open batch

  ASSERT_TRUE(server->Shutdown().ok());
  replica.Stop();
  EXPECT_TRUE(replica.ended());
  EXPECT_EQ(replica.Stop().error_code(), grpc::StatusCode::UNAVAILABLE);
  const ParameterSnapshot stopped = server->shard().Snapshot("w", true).value();
  EXPECT_EQ(stopped.version, 1);
  EXPECT_EQ(stopped.contributions_applied, 3);
  server.reset();

  auto restarted = DionServer::Start(options).value();
  auto stub2 = Connect(restarted->address());
  const v1::ParameterValue value = PullOne(*stub2, "w", true);
  EXPECT_EQ(value.version(), 1);
  EXPECT_EQ(value.checksum(), stopped.checksum);
  EXPECT_EQ(testing::ValueOf(value), stopped.X);
  Register(*stub2, "w0");  // the identical table again: fine after a restore
  std::vector<v1::PushAck> acks = testing::PushAll(*stub2, {pushes[1]});
  EXPECT_EQ(acks[0].result(), v1::PUSH_RESULT_DUPLICATE);
}

}  // namespace
}  // namespace dion
