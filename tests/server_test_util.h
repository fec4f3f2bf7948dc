// Helpers of the server tests (tests/server_*_test.cc): a small model, an in-process server on
// 127.0.0.1 port 0, clients, random contributions and the reference application of a batch
// with common/ directly.
#ifndef DION_TESTS_SERVER_TEST_UTIL_H_
#define DION_TESTS_SERVER_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/dion.h"
#include "common/mutex.h"
#include "common/rng.h"
#include "common/checksum.h"
#include "dion/v1/dion.grpc.pb.h"
#include "server/dion_server.h"
#include "server/wire.h"

namespace dion::testing {

// Parameters: "w" 32 x 24 Dion (tall), "v" 12 x 20 Dion (runs on X^T), "b" {24} AdamW.
inline v1::RegisterModelRequest TestModelRequest(const std::string& worker_id = "") {
  v1::RegisterModelRequest request;
  request.set_model_name("server-test");
  request.set_worker_id(worker_id);
  const auto add = [&](const std::string& name, std::vector<int64_t> shape,
                       v1::OptimizerKind optimizer, uint64_t seed) {
    v1::ParameterSpec* p = request.add_parameters();
    p->set_name(name);
    for (int64_t d : shape) p->add_shape(d);
    p->set_optimizer(optimizer);
    p->mutable_init()->set_kind(v1::INIT_KIND_KAIMING);
    p->set_seed(seed);
    if (optimizer == v1::OPTIMIZER_KIND_DION) p->mutable_dion()->set_lr(0.05);
  };
  add("w", {32, 24}, v1::OPTIMIZER_KIND_DION, 1);
  add("v", {12, 20}, v1::OPTIMIZER_KIND_DION, 2);
  add("b", {24}, v1::OPTIMIZER_KIND_ADAMW, 3);
  return request;
}

// Adds a Dion matrix `name` (m x n, Kaiming init) to a registration request: for tests that
// need steps or messages much larger than TestModelRequest's.
inline void AddDionMatrix(v1::RegisterModelRequest& request, const std::string& name, int64_t m,
                          int64_t n, uint64_t seed) {
  v1::ParameterSpec* p = request.add_parameters();
  p->set_name(name);
  p->add_shape(m);
  p->add_shape(n);
  p->set_optimizer(v1::OPTIMIZER_KIND_DION);
  p->mutable_init()->set_kind(v1::INIT_KIND_KAIMING);
  p->set_seed(seed);
}

inline ServerOptions TestServerOptions() {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.shutdown_grace = absl::Seconds(2);
  options.shard.compute_threads = 2;
  options.shard.checkpoint_interval = absl::ZeroDuration();
  options.shard.batcher.target_workers = 1;  // one contribution per batch unless a test says so
  options.shard.batcher.deadline = absl::InfiniteDuration();
  options.shard.batcher.staleness.kind = StalenessKind::kInverse;
  options.shard.batcher.staleness.max_staleness = 1000;
  return options;
}

inline std::unique_ptr<v1::ParameterServer::Stub> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  return v1::ParameterServer::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

inline absl::Time Deadline(absl::Duration d = absl::Seconds(30)) { return absl::Now() + d; }

inline void SetDeadline(grpc::ClientContext& context, absl::Duration d = absl::Seconds(30)) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + d));
}

inline void Register(v1::ParameterServer::Stub& stub, const std::string& worker_id) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::RegisterModelResponse response;
  grpc::Status status = stub.RegisterModel(&context, TestModelRequest(worker_id), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
}

inline v1::StatusResponse GetStatus(v1::ParameterServer::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::StatusResponse response;
  grpc::Status status = stub.Status(&context, v1::StatusRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

// The shard's GetLayout answer (a failed call is a test failure and an empty answer).
inline v1::GetLayoutResponse GetLayout(v1::ParameterServer::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::GetLayoutResponse response;
  grpc::Status status = stub.GetLayout(&context, v1::GetLayoutRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

inline const v1::ParameterStatus* FindParameter(const v1::StatusResponse& status,
                                                const std::string& name) {
  for (const v1::ParameterStatus& p : status.parameters()) {
    if (p.parameter() == name) return &p;
  }
  return nullptr;
}

// Polls Status until `done` holds or 30 s pass.
template <typename Predicate>
bool WaitForStatus(v1::ParameterServer::Stub& stub, Predicate done) {
  const absl::Time deadline = Deadline();
  while (absl::Now() < deadline) {
    if (done(GetStatus(stub))) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

// One parameter's value (and optimizer state when asked).
inline v1::ParameterValue PullOne(v1::ParameterServer::Stub& stub, const std::string& name,
                                  bool state = false) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::PullRequest request;
  request.add_parameters(name);
  request.set_include_optimizer_state(state);
  auto reader = stub.Pull(&context, request);
  v1::ParameterValue value;
  EXPECT_TRUE(reader->Read(&value));
  v1::ParameterValue extra;
  EXPECT_FALSE(reader->Read(&extra));
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return value;
}

inline Matrix ValueOf(const v1::ParameterValue& value) {
  return TensorToMatrix(value.value(), "value").value();
}

// The value of the series `key` ("name" or "name{labels}" exactly as printed) in Prometheus
// text format; NaN when it is missing.
inline double MetricValue(const std::string& text, const std::string& key) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space != absl::string_view::npos && line.substr(0, space) == key) {
      return std::strtod(std::string(line.substr(space + 1)).c_str(), nullptr);
    }
  }
  return std::nan("");
}

// Random rank-r factors of an m x n contribution (scaled so P R^T has entries ~ 1).
inline LowRankFactors RandomFactors(int64_t m, int64_t n, int r, uint64_t seed) {
  Rng rng(seed);
  LowRankFactors f{Matrix(m, r), Matrix(n, r)};
  rng.FillNormal(f.P, 1.0 / std::sqrt(static_cast<double>(r)));
  rng.FillNormal(f.R);
  return f;
}

inline v1::Contribution FactorsContribution(const std::string& worker, uint64_t sequence,
                                            const std::string& parameter, int64_t base_version,
                                            int64_t samples, const LowRankFactors& f) {
  Contribution c;
  c.worker_id = worker;
  c.sequence = sequence;
  c.parameter = parameter;
  c.base_version = base_version;
  c.sample_count = samples;
  c.loss = 1.0;
  c.payload = f;
  v1::Contribution proto;
  ContributionToProto(c, &proto);
  return proto;
}

// Sends `contributions` on one Push stream and returns the acks (one per contribution).
inline std::vector<v1::PushAck> PushAll(v1::ParameterServer::Stub& stub,
                                        const std::vector<v1::Contribution>& contributions,
                                        grpc::Status* final_status = nullptr) {
  grpc::ClientContext context;
  SetDeadline(context);
  auto stream = stub.Push(&context);
  std::vector<v1::PushAck> acks;
  for (const v1::Contribution& c : contributions) {
    if (!stream->Write(c)) break;
    v1::PushAck ack;
    if (!stream->Read(&ack)) break;
    acks.push_back(ack);
  }
  stream->WritesDone();
  v1::PushAck extra;
  while (stream->Read(&extra)) acks.push_back(extra);
  grpc::Status status = stream->Finish();
  if (final_status != nullptr) {
    *final_status = status;
  } else {
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  return acks;
}

// The Dion step of one batch applied with common/ directly: M += sum_i w_i P_i R_i^T (plain
// Eigen, not the server's stacked GEMM), then DionStepFromMomentum.
struct ReferenceEntry {
  LowRankFactors factors;
  double weight = 0;  // normalised
};
inline void ApplyReferenceBatch(const std::vector<ReferenceEntry>& entries,
                                const DionConfig& config, Matrix& X, DionState& state) {
  for (const ReferenceEntry& e : entries) {
    state.M.noalias() += static_cast<float>(e.weight) * (e.factors.P * e.factors.R.transpose());
  }
  DionStepFromMomentum(X, state, config);
}

// A subscriber that keeps replicas of the parameters it follows by applying what it receives
// (low-rank steps with ApplyLowRankUpdate, full values by copy) and checks every checksum.
// Runs on its own thread until Stop().
class Replica {
 public:
  Replica(v1::ParameterServer::Stub& stub, std::vector<std::string> parameters,
          std::vector<v1::ParameterVersion> have = {}, std::map<std::string, Matrix> values = {})
      : values_(std::move(values)) {
    v1::SubscribeRequest request;
    for (const std::string& p : parameters) request.add_parameters(p);
    for (const v1::ParameterVersion& h : have) {
      *request.add_have() = h;
      versions_[h.parameter()] = h.version();
    }
    request.set_worker_id("replica");
    reader_ = stub.Subscribe(&context_, request);
    thread_ = std::thread([this] { Run(); });
  }
  ~Replica() { Stop(); }

  // Cancels the stream and joins; returns the stream's final status.
  grpc::Status Stop() {
    if (thread_.joinable()) {
      context_.TryCancel();
      thread_.join();
    }
    return final_status_;
  }

  int64_t version(const std::string& p) const {
    MutexLock lock(&mu_);
    auto it = versions_.find(p);
    return it == versions_.end() ? -1 : it->second;
  }
  // Waits until the replica of `p` reaches version `v` (30 s at most).
  bool WaitFor(const std::string& p, int64_t v) const {
    const absl::Time deadline = Deadline();
    while (absl::Now() < deadline) {
      if (version(p) >= v) return true;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return false;
  }
  Matrix value(const std::string& p) const {
    MutexLock lock(&mu_);
    return values_.at(p);
  }
  int64_t mismatches() const { MutexLock lock(&mu_); return mismatches_; }
  int64_t low_rank_steps() const { MutexLock lock(&mu_); return low_rank_steps_; }
  int64_t full_values() const { MutexLock lock(&mu_); return full_values_; }
  int64_t gaps() const { MutexLock lock(&mu_); return gaps_; }
  bool ended() const { MutexLock lock(&mu_); return ended_; }

 private:
  void Run() {
    v1::VersionUpdate message;
    while (reader_->Read(&message)) {
      absl::StatusOr<VersionUpdate> update = VersionUpdateFromProto(message);
      MutexLock lock(&mu_);
      if (!update.ok()) {
        ++mismatches_;
        continue;
      }
      const std::string& p = update->parameter;
      auto held = versions_.find(p);
      if (update->is_low_rank()) {
        if (held == versions_.end() || !values_.contains(p)) {
          ++gaps_;
          continue;
        }
        if (held->second + 1 != update->version) ++gaps_;
        const LowRankStep& s = std::get<LowRankStep>(update->content);
        ApplyLowRankUpdate(values_.at(p), s.decay, s.scale, s.P, s.Q, s.transposed);
        ++low_rank_steps_;
      } else {
        if (held != versions_.end() && update->version <= held->second) ++gaps_;
        values_[p] = std::get<Matrix>(update->content);
        ++full_values_;
      }
      versions_[p] = update->version;
      if (WeightsChecksum(values_.at(p)) != update->checksum) ++mismatches_;
    }
    grpc::Status status = reader_->Finish();
    MutexLock lock(&mu_);
    final_status_ = status;
    ended_ = true;
  }

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::VersionUpdate>> reader_;
  std::thread thread_;
  mutable Mutex mu_;
  std::map<std::string, Matrix> values_;
  std::map<std::string, int64_t> versions_;
  int64_t mismatches_ = 0, low_rank_steps_ = 0, full_values_ = 0, gaps_ = 0;
  bool ended_ = false;
  grpc::Status final_status_;
};

}  // namespace dion::testing

#endif  // DION_TESTS_SERVER_TEST_UTIL_H_
