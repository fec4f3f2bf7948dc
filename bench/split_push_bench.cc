// Ingest into one Dion parameter served whole by 1 shard against the same parameter split by
// rows over 2 shards (docs/server.md, "Split parameters"): sustained contributions applied per
// second, paired per repetition.
//
// For each client count (default 1, 4) and repetition, in one process, two runs alternate:
//   whole  one in-process DionServer (server/dion_server.h) holding the n x n parameter "w"
//          (default 2048 x 2048, rank fraction 1/16: r = 128);
//   split  two in-process DionServers on loopback, each with the other's address in
//          --peer_addresses (PeerOptions), the same table: split_owners = 2 gives shard 0 the
//          first n/2 rows (it leads the batching) and shard 1 the others.
// Both tables say split_owners = 2; with one shard that keeps the parameter whole. Server
// options as push_bench's bounded runs: adaptive batching from a 256-sample target, 50 ms
// deadline, max_staleness large so that every contribution is accepted, --compute_threads and
// --blas_threads per shard.
//
// Clients (the same code for both runs): each has one channel (its own TCP connection) and
// one Push stream per owner, and keeps up to --window contributions unsettled. A contribution
// is one prepared rank-r P and R with an increasing sequence and base_version = the oldest of
// the owners' applied versions (a worker's replica of a split parameter is at the oldest of its
// blocks), read in-process before it starts (a subscribed worker with no delay). To a
// split parameter it goes as workers send it (docs/protocol.md, "Split parameters"): each
// owner gets its rows of P and the whole R; the followers first, and the leader's block only
// once every follower answered ACCEPTED or DUPLICATE (a follower's refusal settles it without
// the leader); the leader's ack settles it. Whole: the leader's block is the whole P. Every
// writer waits while more than --max_backlog contributions are started but not yet applied by
// the leader (bench/push_load.h BacklogGate), as push_bench's bounded runs.
//
// Per run, over the measured window: contributions settled/s (leader acks) and applied/s
// (leader's contributions_applied), steps/s, contributions per step, the CPU seconds per second
// of the process and of the client threads (named "bench-client"; the rest is the shards') and
// both per applied contribution, the minor page faults of the process per applied contribution
// (memory the allocator had returned to the kernel; ~12 us each on the development VM); per
// owner: step
// time by phase (dion_step_phase_duration_seconds), time in the peer reductions
// (dion_peer_reduction_duration_seconds, waiting for the other owner included), busy = step
// time / window, peer bytes per step. The ratio split / whole of applied/s is taken per
// repetition, then the median. Before the runs, the per-contribution work of each side is
// timed alone on one thread: parsing an owner's message and folding it into M.
//
// Output: markdown tables of medians on stdout; per-run figures on stderr.
#include <dirent.h>
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/bench_util.h"
#include "bench/client_process.h"
#include "bench/median.h"
#include "bench/push_load.h"
#include "common/blas.h"
#include "common/loopback_ports.h"
#include "common/dion.h"
#include "common/rng.h"
#include "common/wire.h"
#include "dion/v1/dion.grpc.pb.h"
#include "server/dion_server.h"

ABSL_FLAG(std::string, clients, "1,4", "Comma-separated numbers of concurrent clients");
ABSL_FLAG(int, reps, 5, "Repetitions of both runs per client count (figures are medians)");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(4), "Measured window of every run");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(1.5), "Unmeasured time before the window");
ABSL_FLAG(int, window, 8, "Contributions a client keeps unsettled");
ABSL_FLAG(int, n, 2048, "The Dion parameter is n x n");
ABSL_FLAG(double, rank_fraction, 0.0625,
          "Dion rank fraction: r = DionRank(n, n, fraction, 1), also the contributions' rank");
ABSL_FLAG(int64_t, sample_count, 32, "Samples per contribution");
ABSL_FLAG(int64_t, target_samples, 256,
          "Batch sample target (the starting target when --adaptive_batching)");
ABSL_FLAG(absl::Duration, batch_deadline, absl::Milliseconds(50),
          "A batch closes this long after its first contribution");
ABSL_FLAG(bool, adaptive_batching, true, "Adapt the sample target to arrival rate x step time");
ABSL_FLAG(int, compute_threads, 1, "Compute threads of every shard");
ABSL_FLAG(int, blas_threads, 1, "OpenBLAS threads per product (dion-server's default)");
ABSL_FLAG(int64_t, max_backlog, 128,
          "Contributions started but not yet applied by the leader, at most (>= 1)");
ABSL_FLAG(absl::Duration, peer_timeout, absl::Seconds(5), "Deadline of a peer reduction");
ABSL_FLAG(absl::Duration, max_runtime, absl::Minutes(15), "Abort the bench after this long");

namespace dion {
namespace {

using bench::BacklogGate;
using bench::Fmt;
using bench::LoadAverage;
constexpr char kParameter[] = "w";
constexpr int kSplitShards = 2;

[[noreturn]] void Die(absl::string_view what) { bench::Die("split_push_bench", what); }

int Rank() {
  const int n = absl::GetFlag(FLAGS_n);
  return DionRank(n, n, absl::GetFlag(FLAGS_rank_fraction), 1);
}

// The table of both runs: "w" n x n, split over 2 owners where there are 2 shards.
v1::RegisterModelRequest ModelRequest(const std::string& worker_id) {
  v1::RegisterModelRequest request;
  request.set_model_name("split-push-bench");
  request.set_worker_id(worker_id);
  v1::ParameterSpec* p = request.add_parameters();
  p->set_name(kParameter);
  p->add_shape(absl::GetFlag(FLAGS_n));
  p->add_shape(absl::GetFlag(FLAGS_n));
  p->set_optimizer(v1::OPTIMIZER_KIND_DION);
  p->mutable_dion()->set_rank_fraction(absl::GetFlag(FLAGS_rank_fraction));
  p->mutable_init()->set_kind(v1::INIT_KIND_KAIMING);
  p->set_seed(1);
  p->set_split_owners(kSplitShards);
  return request;
}

// One owner's part of the parameter: its shard's address and its rows.
struct OwnerBlock {
  std::string address;
  int64_t row_begin = 0, row_end = 0;
};

// Owner `block`'s message of a rank-r contribution with P R^T entries ~ 1: its rows of P, the
// whole R. Sequence and base_version are set per write.
v1::Contribution BlockMessage(const std::string& worker_id, const OwnerBlock& block, int n,
                              int r, uint64_t seed) {
  Rng rng(seed);
  Matrix P(n, r), R(n, r);
  rng.FillNormal(P, 1.0 / std::sqrt(static_cast<double>(r)));
  rng.FillNormal(R);
  v1::Contribution proto;
  proto.set_worker_id(worker_id);
  proto.set_parameter(kParameter);
  proto.set_sample_count(absl::GetFlag(FLAGS_sample_count));
  proto.set_loss(1.0);
  const Matrix rows = P.middleRows(block.row_begin, block.row_end - block.row_begin);
  MatrixToTensor(rows, proto.mutable_factors()->mutable_p());
  MatrixToTensor(R, proto.mutable_factors()->mutable_r());
  return proto;
}

// The name of every client thread: ClientCpuSeconds tells the clients' CPU from the shards'.
constexpr char kClientThread[] = "bench-client";
void NameClientThread() { pthread_setname_np(pthread_self(), kClientThread); }

// CPU seconds (user + system) of this process's threads named kClientThread so far: the
// clients' serialization and writes, not what gRPC's own threads do for them (a lower bound).
double ClientCpuSeconds() {
  double ticks = 0;
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return NAN;
  while (dirent* e = readdir(tasks)) {
    if (e->d_name[0] == '.') continue;
    const std::string dir = absl::StrCat("/proc/self/task/", e->d_name);
    char comm[64] = {0};
    if (FILE* f = std::fopen((dir + "/comm").c_str(), "r")) {
      if (std::fgets(comm, sizeof(comm), f) == nullptr) comm[0] = 0;
      std::fclose(f);
    }
    if (!absl::StartsWith(comm, kClientThread)) continue;
    // /proc/<tid>/stat: "pid (comm) state ..." with utime, stime the 14th and 15th fields.
    char stat[1024] = {0};
    if (FILE* f = std::fopen((dir + "/stat").c_str(), "r")) {
      if (std::fgets(stat, sizeof(stat), f) == nullptr) stat[0] = 0;
      std::fclose(f);
    }
    const char* after = std::strrchr(stat, ')');
    if (after == nullptr) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(after + 2, ' ');
    double user = 0, system = 0;  // fields from the 3rd (state) on: utime is index 11
    if (fields.size() > 12 && absl::SimpleAtod(fields[11], &user) &&
        absl::SimpleAtod(fields[12], &system)) {
      ticks += user + system;
    }
  }
  closedir(tasks);
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

bool Staged(v1::PushResult result) {
  return result == v1::PUSH_RESULT_ACCEPTED || result == v1::PUSH_RESULT_DUPLICATE;
}

// One worker pushing into "w" over its owners (index 0: the leader), with the commit order of
// docs/protocol.md "Split parameters": the writer thread starts a contribution by sending the
// followers' blocks (the leader's when it is the only owner); the reader of the last follower
// to stage it sends the leader's block; the leader's reader settles it.
// Thread-safety: Start / Stop from one thread; the counters may be read from any thread.
class SplitPushClient {
 public:
  using PushStream = grpc::ClientReaderWriter<v1::Contribution, v1::PushAck>;

  // `gate` must outlive the client; `base_version` gives the leader's applied version.
  SplitPushClient(const std::string& worker_id, const std::vector<OwnerBlock>& owners,
                  int window, BacklogGate* gate, std::function<int64_t()> base_version)
      : window_(window), gate_(gate), base_version_(std::move(base_version)) {
    for (size_t i = 0; i < owners.size(); ++i) {
      auto link = std::make_unique<Link>();
      link->stub = v1::ParameterServer::NewStub(bench::NewChannel(owners[i].address));
      link->message = BlockMessage(worker_id, owners[i], absl::GetFlag(FLAGS_n), Rank(),
                                   std::hash<std::string>()(worker_id));
      links_.push_back(std::move(link));
    }
  }
  ~SplitPushClient() { Stop(); }

  // RegisterModel on every owner; the first error, or OK.
  grpc::Status Register(const v1::RegisterModelRequest& request) {
    for (auto& link : links_) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
      v1::RegisterModelResponse response;
      grpc::Status s = link->stub->RegisterModel(&context, request, &response);
      if (!s.ok()) return s;
    }
    return grpc::Status::OK;
  }

  // Opens the streams; they end at the latest after `timeout`.
  void Start(absl::Duration timeout) {
    for (auto& link : links_) {
      link->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
      link->stream = link->stub->Push(&link->context);
    }
    for (size_t i = 1; i < links_.size(); ++i) {
      links_[i]->reader = std::thread([this, i] { FollowerLoop(static_cast<int>(i)); });
    }
    links_[0]->reader = std::thread([this] { LeaderLoop(); });
    writer_ = std::thread([this] { WriteLoop(); });
  }

  // Stops starting contributions, lets the started ones settle and ends the calls; the first
  // stream that did not end OK.
  grpc::Status Stop() {
    if (links_.empty() || links_[0]->stream == nullptr || stopped_) return final_;
    {
      MutexLock lock(&mu_);
      stop_ = true;
    }
    cv_.SignalAll();
    writer_.join();  // the followers' WritesDone (the leader's when whole) at its end
    for (size_t i = 1; i < links_.size(); ++i) links_[i]->reader.join();
    if (links_.size() > 1) {
      MutexLock lock(&links_[0]->write_mu);
      links_[0]->stream->WritesDone();
    }
    links_[0]->reader.join();
    for (auto& link : links_) {
      grpc::Status s = link->stream->Finish();
      if (!s.ok() && final_.ok()) final_ = s;
    }
    stopped_ = true;
    return final_;
  }

  int64_t settled() const { return settled_.load(std::memory_order_relaxed); }
  int64_t refused() const { return refused_.load(std::memory_order_relaxed); }
  std::string first_refusal() const {
    MutexLock lock(&mu_);
    return first_refusal_;
  }

 private:
  struct Link {
    std::unique_ptr<v1::ParameterServer::Stub> stub;
    grpc::ClientContext context;
    std::unique_ptr<PushStream> stream;
    std::thread reader;
    Mutex write_mu;  // one writer at a time on the stream; a leaf
    v1::Contribution message ABSL_GUARDED_BY(write_mu);
  };
  struct Commit {
    int followers_left = 0;
    int64_t base_version = 0;
  };

  bool stopping() const {
    MutexLock lock(&mu_);
    return stop_;
  }

  // Owner `index`'s block of `sequence`; false when its call ended.
  bool Send(int index, uint64_t sequence, int64_t base_version) {
    Link& link = *links_[index];
    MutexLock lock(&link.write_mu);
    link.message.set_sequence(sequence);
    link.message.set_base_version(base_version);
    return link.stream->Write(link.message);
  }

  void WriteLoop() {
    NameClientThread();
    const int followers = static_cast<int>(links_.size()) - 1;
    uint64_t sequence = 0;
    while (true) {
      {
        MutexLock lock(&mu_);
        while (in_flight_ >= window_ && !stop_ && !ended_) cv_.Wait(&mu_);
        if (stop_ || ended_) break;
        ++in_flight_;
      }
      if (!gate_->Pass([this] { return stopping(); })) break;
      const int64_t base = base_version_();
      ++sequence;
      {
        MutexLock lock(&mu_);
        commits_[sequence] = Commit{followers, base};
      }
      bool sent = true;
      if (followers == 0) sent = Send(0, sequence, base);
      for (int i = 1; i <= followers && sent; ++i) sent = Send(i, sequence, base);
      if (!sent) break;  // a call ended (deadline, server gone)
    }
    for (size_t i = links_.size() > 1 ? 1 : 0; i < links_.size(); ++i) {
      MutexLock lock(&links_[i]->write_mu);
      links_[i]->stream->WritesDone();
    }
  }

  // Settles one contribution (leader's ack, or a follower's refusal).
  void Settle(uint64_t sequence, const v1::PushAck& ack) {
    if (!Staged(ack.result()) && refused_.fetch_add(1) == 0) {
      MutexLock lock(&mu_);
      first_refusal_ = absl::StrCat(v1::PushResult_Name(ack.result()), ": ", ack.message());
    }
    settled_.fetch_add(1, std::memory_order_relaxed);
    MutexLock lock(&mu_);
    commits_.erase(sequence);
    --in_flight_;
    cv_.Signal();
  }

  void FollowerLoop(int index) {
    NameClientThread();
    v1::PushAck ack;
    while (links_[index]->stream->Read(&ack)) {
      if (!Staged(ack.result())) {
        Settle(ack.sequence(), ack);
        continue;
      }
      int64_t base = 0;
      {
        MutexLock lock(&mu_);
        auto it = commits_.find(ack.sequence());
        if (it == commits_.end() || --it->second.followers_left > 0) continue;
        base = it->second.base_version;
      }
      if (!Send(0, ack.sequence(), base)) break;
    }
    MarkEnded();
  }

  void LeaderLoop() {
    NameClientThread();
    v1::PushAck ack;
    while (links_[0]->stream->Read(&ack)) Settle(ack.sequence(), ack);
    MarkEnded();
  }

  void MarkEnded() {
    MutexLock lock(&mu_);
    ended_ = true;
    cv_.SignalAll();
  }

  std::vector<std::unique_ptr<Link>> links_;
  const int window_;
  BacklogGate* const gate_;
  const std::function<int64_t()> base_version_;
  std::thread writer_;
  bool stopped_ = false;
  grpc::Status final_;

  mutable Mutex mu_;
  CondVar cv_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;  // a reader's call ended
  std::map<uint64_t, Commit> commits_ ABSL_GUARDED_BY(mu_);
  std::string first_refusal_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> settled_{0};
  std::atomic<int64_t> refused_{0};
};

ServerOptions ShardOptions(int index, const std::vector<std::string>& addresses) {
  ServerOptions options;
  options.listen = addresses[index];
  options.metrics_listen = "";
  options.shard.store.shard_index = index;
  options.shard.store.num_shards = static_cast<int>(addresses.size());
  options.shard.compute_threads = absl::GetFlag(FLAGS_compute_threads);
  options.shard.checkpoint_interval = absl::ZeroDuration();
  options.shard.batcher.target_samples = absl::GetFlag(FLAGS_target_samples);
  options.shard.batcher.deadline = absl::GetFlag(FLAGS_batch_deadline);
  options.shard.batcher.adaptive = absl::GetFlag(FLAGS_adaptive_batching);
  options.shard.batcher.staleness.kind = StalenessKind::kInverse;
  options.shard.batcher.staleness.max_staleness = int64_t{1} << 40;  // accept everything
  if (addresses.size() > 1) {
    options.peer.addresses = addresses;
    options.peer.timeout = absl::GetFlag(FLAGS_peer_timeout);
  }
  return options;
}

// The `text` exposition's samples `<prefix><label>"} value` by label.
std::map<std::string, double> LabeledSamples(const std::string& text, absl::string_view prefix) {
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, prefix)) continue;
    line.remove_prefix(prefix.size());
    const size_t quote = line.find('"');
    const size_t space = line.rfind(' ');
    double value = 0;
    if (quote == absl::string_view::npos || space == absl::string_view::npos ||
        !absl::SimpleAtod(line.substr(space + 1), &value)) {
      continue;
    }
    samples[std::string(line.substr(0, quote))] = value;
  }
  return samples;
}

// The value of the unlabeled sample `name` in `text`, or 0.
double Sample(const std::string& text, absl::string_view name) {
  const std::string prefix = absl::StrCat(name, " ");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    double value = 0;
    if (absl::StartsWith(line, prefix) &&
        absl::SimpleAtod(line.substr(prefix.size()), &value)) {
      return value;
    }
  }
  return 0;
}

// One owner's counters at one end of the window.
struct OwnerCounters {
  int64_t steps = 0, applied = 0, accepted = 0;
  std::map<std::string, double> phase_s;   // sum of each step phase's seconds
  double reduce_s = 0;                     // sum over every reduction tag
  double peer_bytes = 0;                   // ShardPeer payload sent + received
};

OwnerCounters ReadOwner(DionServer& server) {
  OwnerCounters c;
  for (const ShardStatus::Parameter& p : server.shard().Status().parameters) {
    c.steps += p.status.steps;
    c.applied += p.status.contributions_applied;
    c.accepted += p.pushes.accepted;
  }
  const std::string text = server.metrics().Serialize();
  c.phase_s = LabeledSamples(text, "dion_step_phase_duration_seconds_sum{phase=\"");
  for (const auto& [tag, s] :
       LabeledSamples(text, "dion_peer_reduction_duration_seconds_sum{tag=\"")) {
    c.reduce_s += s;
  }
  c.peer_bytes = Sample(text, "dion_peer_sent_bytes_total") +
                 Sample(text, "dion_peer_received_bytes_total");
  return c;
}

// One owner over the window, per step of its own.
struct OwnerResult {
  double step_ms = 0, reduce_ms = 0, busy = 0, peer_mb = 0;
  std::map<std::string, double> phase_ms;
};

struct RunResult {
  double settled_per_s = 0, applied_per_s = 0, steps_per_s = 0, per_step = 0;
  // CPU seconds per second: the whole process, and its client threads (the rest: the shards,
  // their gRPC threads included).
  double cores = 0, client_cores = 0;
  int64_t refused = 0, backlog = 0;
  double drain_s = 0;    // after the clients stopped: until the leader applied its backlog
  double faults = 0;     // minor page faults of the process per applied contribution
  std::vector<OwnerResult> owners;
  // CPU ms per applied contribution: the shards', the clients'.
  double shard_cpu_ms() const { return 1e3 * (cores - client_cores) / applied_per_s; }
  double client_cpu_ms() const { return 1e3 * client_cores / applied_per_s; }
};

OwnerResult OwnerOver(const OwnerCounters& a, const OwnerCounters& b, double seconds) {
  OwnerResult r;
  const int64_t steps = b.steps - a.steps;
  double busy_s = 0;
  for (const auto& [phase, sum] : b.phase_s) {
    const double d = sum - (a.phase_s.contains(phase) ? a.phase_s.at(phase) : 0.0);
    busy_s += d;
    r.phase_ms[phase] = steps > 0 ? 1e3 * d / steps : NAN;
  }
  r.step_ms = steps > 0 ? 1e3 * busy_s / steps : NAN;
  r.reduce_ms = steps > 0 ? 1e3 * (b.reduce_s - a.reduce_s) / steps : NAN;
  r.peer_mb = steps > 0 ? (b.peer_bytes - a.peer_bytes) / 1e6 / steps : NAN;
  r.busy = busy_s / seconds;
  return r;
}

// The owners of "w" from a RegisterModel response: addresses by shard index.
std::vector<OwnerBlock> OwnersOf(const v1::Layout& layout,
                                 const std::vector<std::string>& addresses) {
  for (const v1::Layout::Placement& p : layout.placements()) {
    if (p.parameter() != kParameter) continue;
    std::vector<OwnerBlock> owners;
    for (const v1::Layout::RowOwner& o : p.row_owners()) {
      owners.push_back({addresses.at(o.shard()), o.row_begin(), o.row_end()});
    }
    if (owners.empty()) owners.push_back({addresses.at(p.shard()), 0, absl::GetFlag(FLAGS_n)});
    return owners;
  }
  Die("the layout has no parameter 'w'");
}

// One run: `shards` fresh servers (1: whole, 2: split), `num_clients` clients, the window.
// The shards of one run, started and registered.
struct Shards {
  std::vector<std::unique_ptr<DionServer>> servers;  // by shard index
  std::vector<OwnerBlock> owners;                    // of "w", in row order (leader first)
  std::vector<DionServer*> by_owner;                 // the servers in that order
};

// `shards` fresh servers on reserved loopback ports (each knowing all of them when more than
// one), the table registered on each.
Shards StartShards(int shards) {
  std::vector<std::string> addresses;
  absl::StatusOr<std::vector<int>> ports = ReserveLoopbackPorts(shards);
  if (!ports.ok()) Die(ports.status().ToString());
  for (int port : *ports) addresses.push_back(absl::StrCat("127.0.0.1:", port));
  Shards run;
  for (int i = 0; i < shards; ++i) {
    absl::StatusOr<std::unique_ptr<DionServer>> s =
        DionServer::Start(ShardOptions(i, addresses));
    if (!s.ok()) Die(s.status().ToString());
    run.servers.push_back(*std::move(s));
  }
  // Register on every shard: the layout (shard 0's answer) says who owns which rows.
  v1::Layout layout;
  for (int i = 0; i < shards; ++i) {
    auto stub = v1::ParameterServer::NewStub(bench::NewChannel(addresses[i]));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    v1::RegisterModelResponse response;
    grpc::Status s = stub->RegisterModel(&context, ModelRequest(""), &response);
    if (!s.ok()) Die(absl::StrCat("RegisterModel on shard ", i, ": ", s.error_message()));
    if (i == 0) layout = response.layout();
  }
  run.owners = OwnersOf(layout, addresses);
  if (static_cast<int>(run.owners.size()) != shards) Die("unexpected number of owners");
  for (const OwnerBlock& o : run.owners) {
    for (int i = 0; i < shards; ++i) {
      if (addresses[i] == o.address) run.by_owner.push_back(run.servers[i].get());
    }
  }
  return run;
}

// What is read at both ends of the measured window.
struct Ends {
  absl::Time time;
  double cpu = 0, client_cpu = 0;
  int64_t faults = 0;
  int64_t settled = 0;
  std::vector<OwnerCounters> owners;  // leader first
};

Ends ReadEnds(const Shards& run, const std::vector<std::unique_ptr<SplitPushClient>>& clients) {
  Ends e;
  for (DionServer* s : run.by_owner) e.owners.push_back(ReadOwner(*s));
  e.time = absl::Now();
  e.cpu = bench::ProcessCpuSeconds(0);
  e.client_cpu = ClientCpuSeconds();
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  e.faults = usage.ru_minflt;
  for (const auto& c : clients) e.settled += c->settled();
  return e;
}

// The window's figures from its two ends.
RunResult Between(const Ends& a, const Ends& b) {
  RunResult r;
  const double seconds = absl::ToDoubleSeconds(b.time - a.time);
  const int64_t applied = b.owners[0].applied - a.owners[0].applied;
  const int64_t steps = b.owners[0].steps - a.owners[0].steps;
  r.settled_per_s = (b.settled - a.settled) / seconds;
  r.applied_per_s = applied / seconds;
  r.steps_per_s = steps / seconds;
  r.per_step = steps > 0 ? static_cast<double>(applied) / steps : NAN;
  r.cores = (b.cpu - a.cpu) / seconds;
  r.client_cores = (b.client_cpu - a.client_cpu) / seconds;
  r.faults = static_cast<double>(b.faults - a.faults) / static_cast<double>(applied);
  r.backlog = b.owners[0].accepted - b.owners[0].applied;
  for (size_t o = 0; o < a.owners.size(); ++o) {
    r.owners.push_back(OwnerOver(a.owners[o], b.owners[o], seconds));
  }
  return r;
}

// Lets the leader apply its backlog, then stops the shards, leader first: a leader that stops
// with steps pending abandons them, and its follower would wait --peer_timeout in a step's
// reduction. Returns the seconds the backlog took.
double DrainAndStop(Shards& run) {
  const absl::Time start = absl::Now();
  while (absl::Now() - start < absl::Seconds(60)) {
    const OwnerCounters now = ReadOwner(*run.by_owner[0]);
    if (now.applied >= now.accepted) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  const double drain_s = absl::ToDoubleSeconds(absl::Now() - start);
  for (DionServer* s : run.by_owner) {
    if (absl::Status st = s->Shutdown(); !st.ok()) Die(st.ToString());
  }
  return drain_s;
}

// One run: `shards` fresh servers (1: whole, 2: split), `num_clients` clients, the window.
RunResult Run(int shards, int num_clients) {
  Shards run = StartShards(shards);
  BacklogGate gate(&run.by_owner[0]->shard(), absl::GetFlag(FLAGS_max_backlog));
  // A worker's replica of a split parameter is at the oldest of its blocks' versions.
  const auto replica_version = [&run] {
    int64_t version = INT64_MAX;
    for (DionServer* s : run.by_owner) {
      version = std::min(version, s->shard().store().Version(kParameter).value_or(0));
    }
    return version;
  };
  std::vector<std::unique_ptr<SplitPushClient>> clients;
  for (int c = 0; c < num_clients; ++c) {
    const std::string worker = absl::StrCat("bench-", c);
    clients.push_back(std::make_unique<SplitPushClient>(
        worker, run.owners, absl::GetFlag(FLAGS_window), &gate, replica_version));
    grpc::Status s = clients.back()->Register(ModelRequest(worker));
    if (!s.ok()) Die(absl::StrCat("RegisterModel: ", s.error_message()));
  }
  const absl::Duration window = absl::GetFlag(FLAGS_duration);
  for (auto& c : clients) c->Start(absl::GetFlag(FLAGS_warmup) + window + absl::Seconds(60));
  absl::SleepFor(absl::GetFlag(FLAGS_warmup));
  const Ends a = ReadEnds(run, clients);
  absl::SleepFor(window);
  RunResult r = Between(a, ReadEnds(run, clients));
  for (auto& c : clients) {
    grpc::Status s = c->Stop();
    if (!s.ok()) Die(absl::StrCat("a Push stream ended with ", s.error_message()));
    r.refused += c->refused();
    if (c->refused() > 0) std::fprintf(stderr, "  refused: %s\n", c->first_refusal().c_str());
  }
  clients.clear();
  r.drain_s = DrainAndStop(run);
  return r;
}

void LogRun(const char* what, int rep, int clients, const RunResult& r) {
  std::string owners;
  for (size_t o = 0; o < r.owners.size(); ++o) {
    const OwnerResult& w = r.owners[o];
    absl::StrAppendFormat(&owners, "; owner %d: step %.1f ms, reduce %.1f ms, busy %.2f", o,
                          w.step_ms, w.reduce_ms, w.busy);
  }
  std::fprintf(stderr,
               "rep %d clients %d %s: settled %.0f/s, applied %.0f/s, %.1f steps/s, %.1f per "
               "step, cores %.2f (clients %.2f), %.0f page faults per contribution, backlog %lld, "
               "drained in %.2f s, refused %lld%s\n",
               rep, clients, what, r.settled_per_s, r.applied_per_s, r.steps_per_s, r.per_step,
               r.cores, r.client_cores, r.faults, static_cast<long long>(r.backlog), r.drain_s,
               static_cast<long long>(r.refused),
               owners.c_str());
}

// The per-contribution work timed alone on one thread (median of `reps`, us).
struct MessageCosts {
  double parse_whole = 0, parse_block = 0, fold_whole = 0, fold_block = 0;
};

MessageCosts TimeMessageCosts(int n, int rank, int reps) {
  const auto time = [reps](auto&& f) {
    f();  // untimed: the first large allocations fault their pages in
    std::vector<double> us;
    for (int i = 0; i < reps; ++i) {
      const absl::Time start = absl::Now();
      f();
      us.push_back(absl::ToDoubleMicroseconds(absl::Now() - start));
    }
    return Median(us);
  };
  const auto parse = [&](const OwnerBlock& block) {
    const std::string bytes = BlockMessage("bench-0", block, n, rank, 1).SerializeAsString();
    return time([&] {  // into a fresh message, as the service does
      v1::Contribution parsed;
      if (!parsed.ParseFromString(bytes)) Die("cannot parse a contribution");
    });
  };
  // M += w P R^T over all rows, and over the first owner's rows.
  const auto fold = [&](int rows) {
    Rng rng(2);
    Matrix P(rows, rank), R(n, rank);
    rng.FillNormal(P);
    rng.FillNormal(R);
    Matrix M = Matrix::Zero(rows, n);
    return time([&] { Gemm(Trans::kNo, Trans::kYes, 0.5f, P, R, 1.0f, M); });
  };
  MessageCosts c;
  // The block first: timed first, the whole message paid 10 ms per parse instead of ~0.05 (the
  // allocator's mmap threshold had not adapted yet).
  c.parse_block = parse({"", 0, (n + 1) / 2});
  c.parse_whole = parse({"", 0, n});
  c.fold_whole = fold(n);
  c.fold_block = fold((n + 1) / 2);
  return c;
}

template <typename Field>
double MedianOf(const std::vector<RunResult>& runs, Field field) {
  std::vector<double> v;
  for (const RunResult& r : runs) v.push_back(field(r));
  return Median(v);
}

void PrintIngest(const std::vector<int>& counts, const std::vector<std::vector<RunResult>>& whole,
                 const std::vector<std::vector<RunResult>>& split) {
  std::printf("| clients | applied/s whole | applied/s split | split / whole (paired) | per "
              "repetition | settled/s whole / split | steps/s whole / split | contributions "
              "per step whole / split | cores whole / split | shards' CPU ms per contribution whole / "
              "split | clients' CPU ms per contribution whole / split | page faults per contribution "
              "whole / split | refused |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < counts.size(); ++i) {
    std::vector<double> ratios;
    std::vector<std::string> per_rep;
    for (size_t k = 0; k < std::min(whole[i].size(), split[i].size()); ++k) {
      ratios.push_back(split[i][k].applied_per_s / whole[i][k].applied_per_s);
      per_rep.push_back(Fmt(ratios.back(), 2));
    }
    const auto both = [&](auto field, int digits) {
      return absl::StrCat(Fmt(MedianOf(whole[i], field), digits), " / ",
                          Fmt(MedianOf(split[i], field), digits));
    };
    int64_t refused = 0;
    for (const auto* runs : {&whole[i], &split[i]}) {
      for (const RunResult& r : *runs) refused += r.refused;
    }
    std::printf(
        "| %d | %s | %s | **%s** | %s | %s | %s | %s | %s | %s | %s | %s | %lld |\n", counts[i],
        Fmt(MedianOf(whole[i], [](const RunResult& r) { return r.applied_per_s; })).c_str(),
        Fmt(MedianOf(split[i], [](const RunResult& r) { return r.applied_per_s; })).c_str(),
        Fmt(Median(ratios), 3).c_str(), absl::StrJoin(per_rep, ", ").c_str(),
        both([](const RunResult& r) { return r.settled_per_s; }, 0).c_str(),
        both([](const RunResult& r) { return r.steps_per_s; }, 1).c_str(),
        both([](const RunResult& r) { return r.per_step; }, 1).c_str(),
        both([](const RunResult& r) { return r.cores; }, 2).c_str(),
        both([](const RunResult& r) { return r.shard_cpu_ms(); }, 1).c_str(),
        both([](const RunResult& r) { return r.client_cpu_ms(); }, 1).c_str(),
        both([](const RunResult& r) { return r.faults; }, 0).c_str(),
        static_cast<long long>(refused));
  }
}

void PrintOwners(const std::vector<int>& counts, const std::vector<std::vector<RunResult>>& whole,
                 const std::vector<std::vector<RunResult>>& split) {
  std::printf("\nPer owner (medians; ms per step of that owner; reduce = time in the peer "
              "reductions, waiting for the other owner included, part of power iteration and "
              "orthonormalize; busy = step time / window):\n\n"
              "| clients | run | owner | step ms | aggregate (fold) | power iteration | "
              "orthonormalize | update | broadcast | reduce | busy | peer MB / step |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < counts.size(); ++i) {
    for (const auto* runs : {&whole[i], &split[i]}) {
      const size_t owners = runs->empty() ? 0 : runs->front().owners.size();
      for (size_t o = 0; o < owners; ++o) {
        const auto f = [&](auto field, int digits) {
          return Fmt(MedianOf(*runs, [&](const RunResult& r) { return field(r.owners[o]); }),
                     digits);
        };
        const auto phase = [&](const char* name) {
          return f([name](const OwnerResult& w) {
                     return w.phase_ms.contains(name) ? w.phase_ms.at(name) : NAN;
                   }, 1);
        };
        std::printf("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
                    counts[i], runs == &whole[i] ? "whole" : "split",
                    o == 0 ? "0 (leader)" : absl::StrCat(o).c_str(),
                    f([](const OwnerResult& w) { return w.step_ms; }, 1).c_str(),
                    phase("aggregate").c_str(), phase("power_iteration").c_str(),
                    phase("orthonormalize").c_str(), phase("update").c_str(),
                    phase("broadcast").c_str(),
                    f([](const OwnerResult& w) { return w.reduce_ms; }, 1).c_str(),
                    f([](const OwnerResult& w) { return w.busy; }, 2).c_str(),
                    f([](const OwnerResult& w) { return w.peer_mb; }, 2).c_str());
      }
    }
  }
}

int Main() {
  bench::StartWatchdog("split_push_bench", absl::GetFlag(FLAGS_max_runtime));
  const std::vector<int> counts =
      bench::ParseCounts("split_push_bench", "clients", absl::GetFlag(FLAGS_clients));
  const int n = absl::GetFlag(FLAGS_n);
  const int rank = Rank();
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  if (absl::GetFlag(FLAGS_max_backlog) < 1) Die("--max_backlog must be >= 1");
  if (absl::GetFlag(FLAGS_window) < 1) Die("--window must be >= 1");
  const double load_before = LoadAverage();
  if (absl::Status s = SetBlasThreads(absl::GetFlag(FLAGS_blas_threads)); !s.ok()) {
    absl::FPrintF(stderr, "note: --blas_threads=%d: %s\n", absl::GetFlag(FLAGS_blas_threads),
                  s.message());
  }
  const MessageCosts costs = TimeMessageCosts(n, rank, 30);

  std::vector<std::vector<RunResult>> whole(counts.size()), split(counts.size());
  for (int rep = 0; rep < reps; ++rep) {
    for (size_t i = 0; i < counts.size(); ++i) {
      whole[i].push_back(Run(1, counts[i]));
      LogRun("whole", rep, counts[i], whole[i].back());
      split[i].push_back(Run(kSplitShards, counts[i]));
      LogRun("split", rep, counts[i], split[i].back());
    }
  }
  std::printf("split_push_bench: %d x %d Dion parameter, rank %d, whole on 1 shard against "
              "split over %d; window %d per client, backlog <= %lld; %s measured after %s "
              "warm-up; median of %d; %d compute / %d BLAS thread(s) per shard; load average "
              "%.1f -> %.1f\n\n",
              n, n, rank, kSplitShards, absl::GetFlag(FLAGS_window),
              static_cast<long long>(absl::GetFlag(FLAGS_max_backlog)),
              absl::FormatDuration(absl::GetFlag(FLAGS_duration)).c_str(),
              absl::FormatDuration(absl::GetFlag(FLAGS_warmup)).c_str(), reps,
              absl::GetFlag(FLAGS_compute_threads), absl::GetFlag(FLAGS_blas_threads),
              load_before, LoadAverage());
  PrintIngest(counts, whole, split);
  PrintOwners(counts, whole, split);
  std::printf("\nPer contribution, timed alone on one thread (median of 30, us): parse the "
              "whole message %.0f, an owner's block (half of P, all of R) %.0f; fold into M all "
              "rows %.0f, half the rows %.0f\n",
              costs.parse_whole, costs.parse_block, costs.fold_whole, costs.fold_block);
  return 0;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dion::Main();
}
