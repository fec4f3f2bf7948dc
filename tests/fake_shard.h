// A scripted stand-in for one dion-ps shard (shard 0 of 1 unless told otherwise), for the
// worker client's fault tests (tests/worker_client_test.cc, tests/worker_split_test.cc). It speaks dion.v1 for a given model on 127.0.0.1, but the test
// decides what a real shard would only do by accident of timing: the answer to every push,
// when Push and Subscribe streams break, Pulls that fail or hang, RegisterModel that hangs, and
// exactly which versions are broadcast.
//
// It keeps one value per parameter (SetValue); Pull and every new subscription serve it (of a
// split parameter, only this shard's block, with its rows). Nothing is applied: pushes are only
// recorded and answered.
//
// Thread-safety: safe for concurrent use (gRPC runs the handlers on its own threads).
#ifndef DION_TESTS_FAKE_SHARD_H_
#define DION_TESTS_FAKE_SHARD_H_

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/checksum.h"
#include "common/layout.h"
#include "common/model_table.h"
#include "common/mutex.h"
#include "common/param_spec.h"
#include "common/wire.h"
#include "dion/v1/dion.grpc.pb.h"

namespace dion::testing {

class FakeShard final : public v1::ParameterServer::Service {
 public:
  // Decides the ack of one contribution. The default accepts each (parameter, sequence) once
  // and answers DUPLICATE afterwards, like a shard's dedup.
  using Judge = std::function<v1::PushAck(const v1::Contribution&)>;
  struct Received {
    int stream;  // 1, 2, ... in the order the Push streams were opened
    std::string parameter;
    uint64_t sequence;
    int64_t base_version;
    int64_t sample_count;
  };

  // Shard `shard_index` of `num_shards`: it serves the parameters (and blocks of split ones)
  // the layout places there.
  explicit FakeShard(ModelTable table, int shard_index = 0, int num_shards = 1)
      : table_(std::move(table)), shard_index_(shard_index) {
    layout_ = Layout::Compute(table_.specs(), num_shards).value();
    for (const ParameterDefinition& d : table_.parameters) {
      values_[d.spec.name] = {0, d.initial_value.has_value() ? *d.initial_value
                                                             : InitialValue(d.spec)};
    }
  }
  ~FakeShard() override { Shutdown(); }

  absl::Status Start() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port == 0) return absl::InternalError("fake shard did not start");
    address_ = absl::StrCat("127.0.0.1:", port);
    return absl::OkStatus();
  }
  const std::string& address() const { return address_; }
  void Shutdown() {
    {
      MutexLock lock(&mu_);
      shutdown_ = true;
      cv_.SignalAll();
    }
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    // Every handler has returned, but ThreadSanitizer cannot see the synchronisation inside
    // gRPC's Shutdown. Taking the lock the handlers used orders their last accesses before
    // whatever the caller does next (the destructor frees what they touched).
    MutexLock lock(&mu_);
  }

  static v1::PushAck Ack(const v1::Contribution& c, v1::PushResult result, int code = 0,
                         const std::string& message = "") {
    v1::PushAck ack;
    ack.set_sequence(c.sequence());
    ack.set_parameter(c.parameter());
    ack.set_result(result);
    ack.set_status_code(code);
    ack.set_message(message);
    return ack;
  }

  // --- Push
  void SetJudge(Judge judge) {
    MutexLock lock(&mu_);
    judge_ = std::move(judge);
  }
  // Ends every Push stream (UNAVAILABLE) once it has read `n` contributions, the n-th one
  // unanswered; 0: never.
  void BreakPushStreamsAfter(int n) {
    MutexLock lock(&mu_);
    break_push_after_ = n;
  }
  std::vector<Received> received() const {
    MutexLock lock(&mu_);
    return received_;
  }
  int push_streams() const {
    MutexLock lock(&mu_);
    return push_streams_;
  }

  // --- Values, Subscribe, Pull
  void SetValue(const std::string& parameter, int64_t version, const Matrix& X) {
    MutexLock lock(&mu_);
    values_[parameter] = {version, X};
  }
  // Queues `update` on every open subscription.
  void Broadcast(const VersionUpdate& update) {
    v1::VersionUpdate proto;
    VersionUpdateToProto(update, SpecOf(update.parameter).shape, &proto);
    MutexLock lock(&mu_);
    for (const auto& sub : subscriptions_) sub->queue.push_back(proto);
    cv_.SignalAll();
  }
  // Ends every open Subscribe stream with UNAVAILABLE.
  void BreakSubscriptions() {
    MutexLock lock(&mu_);
    for (const auto& sub : subscriptions_) sub->broken = true;
    cv_.SignalAll();
  }
  int open_subscriptions() const {
    MutexLock lock(&mu_);
    return static_cast<int>(subscriptions_.size());
  }
  // The `have` list of every Subscribe call so far, in order.
  std::vector<std::vector<v1::ParameterVersion>> subscribe_haves() const {
    MutexLock lock(&mu_);
    return haves_;
  }
  void FailPulls(int n) {
    MutexLock lock(&mu_);
    fail_pulls_ = n;
  }
  // While held, Pulls wait (until released, cancelled, or the fake shuts down).
  void HoldPulls(bool hold) {
    MutexLock lock(&mu_);
    hold_pulls_ = hold;
    cv_.SignalAll();
  }
  int pulls() const {
    MutexLock lock(&mu_);
    return pulls_;
  }
  // While held, RegisterModel waits (until released, cancelled, or the fake shuts down).
  void HoldRegistrations(bool hold) {
    MutexLock lock(&mu_);
    hold_registrations_ = hold;
    cv_.SignalAll();
  }
  int registrations() const {
    MutexLock lock(&mu_);
    return registrations_;
  }

  // --- dion.v1.ParameterServer
  grpc::Status RegisterModel(grpc::ServerContext* context, const v1::RegisterModelRequest*,
                             v1::RegisterModelResponse* response) override {
    {
      MutexLock lock(&mu_);
      ++registrations_;
      if (!WaitWhile(context, &hold_registrations_)) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "registration held");
      }
    }
    response->set_newly_registered(false);
    LayoutToProto(layout_, response->mutable_layout());
    response->set_shard_index(shard_index_);
    return grpc::Status::OK;
  }

  grpc::Status Push(grpc::ServerContext*,
                    grpc::ServerReaderWriter<v1::PushAck, v1::Contribution>* stream) override {
    int number, break_after;
    {
      MutexLock lock(&mu_);
      number = ++push_streams_;
      break_after = break_push_after_;
    }
    v1::Contribution c;
    int read = 0;
    while (stream->Read(&c)) {
      ++read;
      Judge judge;
      {
        MutexLock lock(&mu_);
        received_.push_back(
            {number, c.parameter(), c.sequence(), c.base_version(), c.sample_count()});
        judge = judge_;
      }
      if (break_after > 0 && read >= break_after) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake: push stream broken");
      }
      v1::PushAck ack;
      if (judge) {
        ack = judge(c);
      } else {
        MutexLock lock(&mu_);
        const bool fresh = accepted_.insert({c.parameter(), c.sequence()}).second;
        ack = Ack(c, fresh ? v1::PUSH_RESULT_ACCEPTED : v1::PUSH_RESULT_DUPLICATE);
      }
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status Subscribe(grpc::ServerContext* context, const v1::SubscribeRequest* request,
                         grpc::ServerWriter<v1::VersionUpdate>* writer) override {
    auto sub = std::make_shared<Subscription>();
    {
      MutexLock lock(&mu_);
      haves_.emplace_back(request->have().begin(), request->have().end());
      absl::flat_hash_map<std::string, int64_t> have;
      for (const v1::ParameterVersion& h : request->have()) have[h.parameter()] = h.version();
      for (const ParameterDefinition& d : table_.parameters) {
        if (!layout_.Holds(d.spec.name, shard_index_)) continue;
        const Value& v = values_[d.spec.name];
        auto it = have.find(d.spec.name);
        if (it != have.end() && it->second == v.version) continue;
        const RowBlock rows = RowsOf(d.spec.name);
        const Matrix X = BlockOf(d.spec, v.X, rows);
        VersionUpdate update{d.spec.name, v.version, WeightsChecksum(X), X};
        update.rows = rows;
        v1::VersionUpdate full;
        VersionUpdateToProto(update, d.spec.shape, &full);
        sub->queue.push_back(std::move(full));
      }
      subscriptions_.push_back(sub);
    }
    grpc::Status status = grpc::Status(grpc::StatusCode::CANCELLED, "subscriber went away");
    while (!context->IsCancelled()) {
      v1::VersionUpdate next;
      {
        MutexLock lock(&mu_);
        if (sub->queue.empty() && !sub->broken && !shutdown_) {
          cv_.WaitWithTimeout(&mu_, absl::Milliseconds(20));
        }
        if (sub->broken || shutdown_) {
          status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake: subscription broken");
          break;
        }
        if (sub->queue.empty()) continue;
        next = std::move(sub->queue.front());
        sub->queue.pop_front();
      }
      if (!writer->Write(next)) break;
    }
    MutexLock lock(&mu_);
    subscriptions_.erase(std::find(subscriptions_.begin(), subscriptions_.end(), sub));
    return status;
  }

  grpc::Status Pull(grpc::ServerContext* context, const v1::PullRequest* request,
                    grpc::ServerWriter<v1::ParameterValue>* writer) override {
    std::vector<v1::ParameterValue> out;
    {
      MutexLock lock(&mu_);
      ++pulls_;
      if (fail_pulls_ > 0) {
        --fail_pulls_;
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake: pull failed");
      }
      if (!WaitWhile(context, &hold_pulls_)) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "pull held");
      }
      std::vector<std::string> names(request->parameters().begin(), request->parameters().end());
      if (names.empty()) {
        for (const ParameterDefinition& d : table_.parameters) {
          if (layout_.Holds(d.spec.name, shard_index_)) names.push_back(d.spec.name);
        }
      }
      for (const std::string& name : names) {
        const Value& v = values_[name];
        const RowBlock rows = RowsOf(name);
        const Matrix X = BlockOf(SpecOf(name), v.X, rows);
        v1::ParameterValue value;
        value.set_parameter(name);
        value.set_version(v.version);
        value.set_checksum(WeightsChecksum(X));
        if (rows.size() > 0) {
          value.set_row_begin(rows.begin);
          value.set_row_end(rows.end);
          MatrixToTensor(X, value.mutable_value());
        } else {
          MatrixToTensor(X, SpecOf(name).shape, value.mutable_value());
        }
        out.push_back(std::move(value));
      }
    }
    for (const v1::ParameterValue& value : out) {
      if (!writer->Write(value)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status GetLayout(grpc::ServerContext*, const v1::GetLayoutRequest*,
                         v1::GetLayoutResponse*) override {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "fake");
  }
  grpc::Status Status(grpc::ServerContext*, const v1::StatusRequest*,
                      v1::StatusResponse*) override {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "fake");
  }

 private:
  struct Value {
    int64_t version = 0;
    Matrix X;
  };
  struct Subscription {
    std::deque<v1::VersionUpdate> queue;
    bool broken = false;
  };

  // This shard's rows of a split parameter; {0, 0} for a whole one.
  RowBlock RowsOf(const std::string& name) const {
    const Placement* placement = layout_.Find(name);
    if (placement == nullptr) return RowBlock{};
    for (const RowOwner& owner : placement->split) {
      if (owner.shard == shard_index_) return owner.rows;
    }
    return RowBlock{};
  }
  // X's block `rows` (X's rows, or its columns when wide); X itself for {0, 0}.
  static Matrix BlockOf(const ParamSpec& spec, const Matrix& X, RowBlock rows) {
    if (rows.size() == 0) return X;
    if (spec.rows() < spec.cols()) return X.middleCols(rows.begin, rows.size());
    return X.middleRows(rows.begin, rows.size());
  }
  const ParamSpec& SpecOf(const std::string& name) const {
    for (const ParameterDefinition& d : table_.parameters) {
      if (d.spec.name == name) return d.spec;
    }
    return table_.parameters.front().spec;
  }
  // Waits while *flag; false when the call was cancelled or the fake shuts down meanwhile.
  bool WaitWhile(grpc::ServerContext* context, const bool* flag)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (*flag) {
      if (shutdown_ || context->IsCancelled()) return false;
      cv_.WaitWithTimeout(&mu_, absl::Milliseconds(10));
    }
    return true;
  }

  const ModelTable table_;
  const int shard_index_;
  Layout layout_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;

  mutable Mutex mu_;
  CondVar cv_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, Value> values_ ABSL_GUARDED_BY(mu_);
  Judge judge_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<std::string, uint64_t>> accepted_ ABSL_GUARDED_BY(mu_);
  int break_push_after_ ABSL_GUARDED_BY(mu_) = 0;
  int push_streams_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Received> received_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Subscription>> subscriptions_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<v1::ParameterVersion>> haves_ ABSL_GUARDED_BY(mu_);
  int fail_pulls_ ABSL_GUARDED_BY(mu_) = 0;
  bool hold_pulls_ ABSL_GUARDED_BY(mu_) = false;
  int pulls_ ABSL_GUARDED_BY(mu_) = 0;
  bool hold_registrations_ ABSL_GUARDED_BY(mu_) = false;
  int registrations_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace dion::testing

#endif  // DION_TESTS_FAKE_SHARD_H_
