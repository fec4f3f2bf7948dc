// Push throughput of the dion.v1 ParameterServer on loopback, next to a bare gRPC service that
// carries the same messages.
//
// For each client count (default 1, 4, 8) and repetition, in one process:
//   echo     PushEcho (bench/push_echo.proto): Contribution messages on a bidi stream, each
//            parsed and answered with a PushAck naming its sequence, nothing else: what gRPC
//            and protobuf alone cost for this traffic.
//   dion     an in-process DionServer (server/dion_server.h) with one Dion parameter "w" n x n
//            (default 1024 x 1024, rank fraction 1/16: r = 64), dion-server's defaults (2
//            compute threads, 1 BLAS thread, adaptive batching, 50 ms deadline) plus a sample
//            target, max_staleness large so that every contribution is accepted. The server
//            acknowledges a contribution once its batcher accepted it, before any step, so
//            acks can outrun steps: "unbounded" runs let them (up to --unbounded_cap) and
//            measure how fast the service takes contributions in; "bounded" runs hold every
//            writer while more than --max_backlog contributions are sent but not yet applied
//            (bench/push_load.h BacklogGate) and measure what the shard sustains.
// Every client has its own channel (its own TCP connection), registers as a worker (dion) and
// keeps up to --window contributions unacknowledged on one Push stream: the same message each
// time (P and R, n x r float32) with an increasing sequence and, for dion, base_version = the
// applied version of "w" read in-process before each write (a subscribed worker with no delay;
// versions from acks may run ahead of the applied version and would be OUT_OF_RANGE).
// Each run starts a fresh server, warms up, then counts acks over a fixed window; the three
// runs alternate within a repetition so that load from other processes hits them alike, the
// ratios to echo are taken per repetition (paired), every figure is a median.
//
// Server side of the dion runs (Shard::Status and the shard's metrics, same window):
// contributions applied/s, steps/s, contributions per step, mean step time by phase, the
// fraction of the window a step was running ("busy"), the backlog (accepted, not yet applied)
// at the end of the window and how long Shutdown took to apply it. Before the runs, the
// per-contribution work of each side is timed alone on one thread.
//
// bounded_wal runs are bounded runs with the shard's write-ahead log on (--wal_sync, its
// checkpoints and log in a fresh directory under --wal_root): what durability costs, paired
// with the bounded run of the same repetition. bounded_tls runs are bounded runs over TLS with
// a bearer token on every call (a throwaway CA made with the openssl command, as `dion local`
// makes it), paired with the bounded run likewise. echo_tls runs are echo runs over TLS with the
// same certificate and token, paired with the echo run: what TLS costs the transport alone, as
// CPU time of the receiving process per message (with --client_process, the shard's side only).
//
// Where the clients run. By default (the mode of the earlier figures) in this process, on the
// CPUs the shard uses, so their serialization and, for bounded_tls, their encryption count
// against the shard's throughput. With --client_process they run in a separate process forked
// at start, before any gRPC object exists, pinned to --client_cpus while this process (the
// shard) is pinned to --shard_cpus (default: the last CPU for the clients, the others for the
// shard): what a shard sees when its workers are on other machines. The processes coordinate
// through shared memory (bench/client_process.h): the child registers and streams, the parent
// publishes the shard's applied count and version every millisecond for the child's backlog
// gate and base versions, and reads the acks the child counts. Every run reports the CPU
// seconds per second of each process over its window.
//
// Output: markdown tables of medians on stdout; per-run figures and progress on stderr.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
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
#include "common/blas.h"
#include "common/dion.h"
#include "common/rng.h"
#include "common/wire.h"
#include "bench/push_load.h"
#include "common/tls.h"
#include "dion/v1/dion.grpc.pb.h"
#include "server/dion_server.h"
#include "server/shard_log.h"
#include "server/stepper.h"
#include "worker/local/local_security.h"

ABSL_FLAG(std::string, clients, "1,4,8", "Comma-separated numbers of concurrent clients");
ABSL_FLAG(int, reps, 3, "Repetitions of every configuration (figures are medians)");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(3), "Measured window of every run");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(1), "Unmeasured time before the window");
ABSL_FLAG(int, window, 8, "Contributions a client keeps unacknowledged");
ABSL_FLAG(int, n, 1024, "The Dion parameter is n x n");
ABSL_FLAG(double, rank_fraction, 0.0625,
          "Dion rank fraction: r = DionRank(n, n, fraction, 1), also the contributions' rank");
ABSL_FLAG(int64_t, sample_count, 32, "Samples per contribution");
ABSL_FLAG(int64_t, target_samples, 256,
          "Batch sample target (the starting target when --adaptive_batching)");
ABSL_FLAG(absl::Duration, batch_deadline, absl::Milliseconds(50),
          "A batch closes this long after its first contribution");
ABSL_FLAG(bool, adaptive_batching, true, "Adapt the sample target to arrival rate x step time");
ABSL_FLAG(int, compute_threads, 2, "Shard compute threads (one parameter uses one at a time)");
ABSL_FLAG(int, blas_threads, 1, "OpenBLAS threads per product (dion-server's default)");
ABSL_FLAG(int64_t, max_backlog, 128,
          "Bounded dion runs: contributions sent but not yet applied, at most (>= 1)");
ABSL_FLAG(int64_t, unbounded_cap, 8192,
          "Safety cap on the backlog of the unbounded runs (~0.5 MB of factors each); a run "
          "that reaches it says so");
ABSL_FLAG(std::string, runs, "echo,unbounded,bounded,bounded_wal",
          "Which runs to do per client count and repetition (comma-separated subset of echo, "
          "unbounded, bounded, bounded_wal, bounded_tls, echo_tls)");
ABSL_FLAG(std::string, client_channel_args, "",
          "Integer gRPC channel arguments for every client's channel, \"name=value,...\" (e.g. "
          "\"grpc.http2.bdp_probe=0\"): to measure transport settings");
ABSL_FLAG(std::string, echo_server_args, "",
          "Integer gRPC channel arguments for the echo runs' server (echo, echo_tls), as "
          "--client_channel_args; the dion runs' DionServer keeps its own");
ABSL_FLAG(std::string, wal_root, "",
          "bounded_wal runs: directory for the checkpoints and the write-ahead log (one "
          "subdirectory per run, removed after it); empty: the system's temporary directory");
ABSL_FLAG(std::string, wal_sync, "always", "bounded_wal runs: the shard's --wal_sync");
ABSL_FLAG(absl::Duration, max_runtime, absl::Minutes(20), "Abort the bench after this long");
ABSL_FLAG(bool, client_process, false,
          "Run every run's clients in a separate process, forked at start before any gRPC "
          "object exists and pinned to --client_cpus, with this (the shard's) process pinned "
          "to --shard_cpus: what a shard sees when its workers run on other machines (their "
          "serialization and encryption not on its CPUs). false: clients in this process, on "
          "the shard's CPUs (the earlier figures' mode)");
ABSL_FLAG(std::string, client_cpus, "",
          "--client_process: CPUs of the client process, e.g. \"1\" or \"2-3\"; empty: the "
          "last CPU this process may use");
ABSL_FLAG(std::string, shard_cpus, "",
          "--client_process: CPUs of the shard's process; empty: every CPU this process may "
          "use except --client_cpus (all of them when that leaves none)");

namespace dion {
namespace {

using bench::BacklogGate;
using bench::Fmt;
using bench::LoadAverage;
using bench::ClientRunSpec;
using bench::EchoService;
using bench::IntChannelArgs;
using bench::PushClient;
using bench::SharedControl;
constexpr char kParameter[] = "w";

[[noreturn]] void Die(absl::string_view what) { bench::Die("push_bench", what); }

v1::RegisterModelRequest ModelRequest(const std::string& worker_id) {
  v1::RegisterModelRequest request;
  request.set_model_name("push-bench");
  request.set_worker_id(worker_id);
  v1::ParameterSpec* p = request.add_parameters();
  p->set_name(kParameter);
  p->add_shape(absl::GetFlag(FLAGS_n));
  p->add_shape(absl::GetFlag(FLAGS_n));
  p->set_optimizer(v1::OPTIMIZER_KIND_DION);
  p->mutable_dion()->set_rank_fraction(absl::GetFlag(FLAGS_rank_fraction));
  p->mutable_init()->set_kind(v1::INIT_KIND_KAIMING);
  p->set_seed(1);
  return request;
}

// A rank-r contribution with P R^T entries ~ 1; sequence and base_version are set per write.
v1::Contribution Prototype(const std::string& worker_id, int n, int r, uint64_t seed) {
  Rng rng(seed);
  LowRankFactors f{Matrix(n, r), Matrix(n, r)};
  rng.FillNormal(f.P, 1.0 / std::sqrt(static_cast<double>(r)));
  rng.FillNormal(f.R);
  v1::Contribution proto;
  proto.set_worker_id(worker_id);
  proto.set_parameter(kParameter);
  proto.set_sample_count(absl::GetFlag(FLAGS_sample_count));
  proto.set_loss(1.0);
  MatrixToTensor(f.P, proto.mutable_factors()->mutable_p());
  MatrixToTensor(f.R, proto.mutable_factors()->mutable_r());
  return proto;
}

// Counters read at both ends of the measured window.
struct Counters {
  absl::Time time;
  double cpu_self = 0, cpu_clients = NAN;  // CPU seconds of this process and the client process
  int64_t acks = 0;
  int64_t refused = 0;
  int64_t steps = 0;                       // dion only, from here on
  int64_t applied = 0;
  int64_t accepted = 0;
  std::map<std::string, double> phase_s;   // sum of each step phase's seconds
};

// dion_step_phase_duration_seconds_sum{phase="..."} from the text exposition.
std::map<std::string, double> PhaseSums(const std::string& text) {
  constexpr absl::string_view kPrefix = "dion_step_phase_duration_seconds_sum{phase=\"";
  std::map<std::string, double> sums;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, kPrefix)) continue;
    line.remove_prefix(kPrefix.size());
    const size_t quote = line.find('"');
    const size_t space = line.rfind(' ');
    double value = 0;
    if (quote == absl::string_view::npos || space == absl::string_view::npos ||
        !absl::SimpleAtod(line.substr(space + 1), &value)) {
      continue;
    }
    sums[std::string(line.substr(0, quote))] = value;
  }
  return sums;
}

struct RunResult {
  double pushes_per_s = 0;
  int64_t refused = 0;
  // step_ms: the phases' sum per step; busy: the phases' sum / window.
  double applied_per_s = 0, steps_per_s = 0, per_step = 0, step_ms = 0, busy = 0;
  int64_t backlog = 0;
  double drain_s = 0;
  std::map<std::string, double> phase_ms;  // mean per step
  double wal_syncs = 0, accepted_total = 0;  // whole run, warm-up included
  // CPUs kept busy over the window (CPU seconds / second) by this process (the shard's, and
  // the clients' too without --client_process) and by the client process (NaN without it).
  double cores_self = 0, cores_clients = NAN;
};

// The clients of one run: in this process, or in the client process (--client_process).
class RunClients {
 public:
  virtual ~RunClients() = default;
  // Opens the streams; they end at the latest after `timeout`.
  virtual void Start(absl::Duration timeout) = 0;
  virtual int64_t acks() const = 0;
  virtual int64_t refused() const = 0;
  // Ends the streams; dies when one ended with an error.
  virtual void Stop() = 0;
  // Whether the backlog gate ever held a writer (valid after Stop).
  virtual bool gate_reached() const = 0;
  // CPU seconds of the client process so far; NaN when the clients run in this process.
  virtual double cpu_seconds() const { return NAN; }
};

// The channel arguments of flag `name` = `text` ("name=value,..." with integer values); dies
// when malformed.
IntChannelArgs ParseChannelArgs(const char* name, const std::string& text) {
  IntChannelArgs args;
  for (absl::string_view entry : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    const size_t eq = entry.find('=');
    int value = 0;
    if (eq == absl::string_view::npos || eq == 0 ||
        !absl::SimpleAtoi(entry.substr(eq + 1), &value)) {
      Die(absl::StrCat("--", name, ": bad entry '", entry, "' (expected name=integer)"));
    }
    args.emplace_back(std::string(entry.substr(0, eq)), value);
  }
  return args;
}

// The credentials of a client with TLS and the admin token of `tls`.
std::shared_ptr<grpc::ChannelCredentials> ClientCredentials(const LocalSecurity& tls) {
  TlsClientConfig client;
  client.ca_file = tls.ca_file;
  client.token_file = tls.admin_token_file;
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> made =
      MakeChannelCredentials(client);
  if (!made.ok()) Die(made.status().ToString());
  return *made;
}

// Makes spec.clients PushClients to 127.0.0.1:spec.port and registers them (dion); their
// backlog gate follows `applied`, their base version `version` (both ignored for echo).
// Returns an error message, or "" when all registered.
std::string MakePushClients(const ClientRunSpec& spec, const LocalSecurity* tls, int rank,
                            std::function<int64_t()> applied,
                            const std::function<int64_t()>& version,
                            std::unique_ptr<BacklogGate>* gate,
                            std::vector<std::unique_ptr<PushClient>>* clients) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (spec.tls) credentials = ClientCredentials(*tls);
  if (spec.max_backlog > 0) {
    *gate = std::make_unique<BacklogGate>(std::move(applied), spec.max_backlog);
  }
  const std::string address = absl::StrCat("127.0.0.1:", spec.port);
  const IntChannelArgs channel_args = ParseChannelArgs(
      "client_channel_args", absl::GetFlag(FLAGS_client_channel_args));
  for (int i = 0; i < spec.clients; ++i) {
    const std::string worker = absl::StrCat("bench-", i);
    clients->push_back(std::make_unique<PushClient>(
        address, spec.echo, Prototype(worker, absl::GetFlag(FLAGS_n), rank, 100 + i),
        absl::GetFlag(FLAGS_window), gate->get(), version, credentials, channel_args));
    if (spec.echo) continue;
    grpc::Status registered = clients->back()->Register(ModelRequest(worker));
    if (!registered.ok()) return absl::StrCat("RegisterModel: ", registered.error_message());
  }
  return "";
}

// Stops every client; an error message for the first stream that did not end OK, or "".
std::string StopPushClients(std::vector<std::unique_ptr<PushClient>>& clients) {
  std::string error;
  for (auto& c : clients) {
    grpc::Status s = c->Stop();
    if (!s.ok() && error.empty()) error = absl::StrCat("Push stream ended with ", s.error_message());
    if (c->refused() > 0) std::fprintf(stderr, "  refused: %s\n", c->first_refusal().c_str());
  }
  return error;
}

class InProcessClients final : public RunClients {
 public:
  // `shard`: null for echo; must outlive this.
  InProcessClients(const ClientRunSpec& spec, const Shard* shard, const LocalSecurity* tls,
                   int rank) {
    std::function<int64_t()> applied, version = [] { return int64_t{0}; };
    if (shard != nullptr) {
      // The applied version, read before each write: a subscribed worker with no delay.
      version = [shard] { return shard->store().Version(kParameter).value_or(0); };
      applied = [shard] { return bench::ContributionsApplied(*shard); };
    }
    const std::string error =
        MakePushClients(spec, tls, rank, std::move(applied), version, &gate_, &clients_);
    if (!error.empty()) Die(error);
  }
  void Start(absl::Duration timeout) override {
    for (auto& c : clients_) c->Start(timeout);
  }
  int64_t acks() const override {
    int64_t n = 0;
    for (const auto& c : clients_) n += c->acks();
    return n;
  }
  int64_t refused() const override {
    int64_t n = 0;
    for (const auto& c : clients_) n += c->refused();
    return n;
  }
  void Stop() override {
    const std::string error = StopPushClients(clients_);
    if (!error.empty()) Die(error);
    clients_.clear();
    reached_ = gate_ != nullptr && gate_->reached();
  }
  bool gate_reached() const override { return reached_; }

 private:
  std::unique_ptr<BacklogGate> gate_;  // outlives the clients
  std::vector<std::unique_ptr<PushClient>> clients_;
  bool reached_ = false;
};

// The client process of --client_process, made once by StartClientProcess.
struct ClientProcess {
  SharedControl* control = nullptr;
  pid_t pid = 0;
};
ClientProcess* client_process = nullptr;

// What the client process does for one run (see bench/client_process.h); "" or an error.
std::string ServeRun(SharedControl* ctl, const LocalSecurity* tls, int rank) {
  const ClientRunSpec spec = ctl->spec;
  std::unique_ptr<BacklogGate> gate;
  std::vector<std::unique_ptr<PushClient>> clients;
  std::string error = MakePushClients(
      spec, tls, rank, [ctl] { return ctl->applied.load(std::memory_order_relaxed); },
      [ctl] { return ctl->version.load(std::memory_order_relaxed); }, &gate, &clients);
  if (!error.empty()) return error;
  const absl::Duration timeout =
      absl::GetFlag(FLAGS_warmup) + absl::GetFlag(FLAGS_duration) + absl::Seconds(60);
  for (auto& c : clients) {
    c->CountAlsoIn(&ctl->acks, &ctl->refused);
    c->Start(timeout);
  }
  ctl->state.store(SharedControl::kRunning, std::memory_order_release);
  while (ctl->request.load(std::memory_order_acquire) != SharedControl::kStop) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  error = StopPushClients(clients);
  clients.clear();
  ctl->gate_reached.store(gate != nullptr && gate->reached());
  return error;
}

// The client process's life: serves runs until asked to exit.
[[noreturn]] void ClientProcessMain(SharedControl* ctl, const LocalSecurity* tls, int rank) {
  const auto await = [ctl](int request) {
    while (ctl->request.load(std::memory_order_acquire) != request) {
      absl::SleepFor(absl::Milliseconds(1));
    }
  };
  while (true) {
    int request;
    while ((request = ctl->request.load(std::memory_order_acquire)) == SharedControl::kIdle) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    if (request == SharedControl::kExit) std::_Exit(0);
    const std::string error = ServeRun(ctl, tls, rank);
    if (!error.empty()) {
      std::snprintf(ctl->message, sizeof(ctl->message), "%s", error.c_str());
      ctl->state.store(SharedControl::kFailed, std::memory_order_release);
      await(SharedControl::kExit);
      std::_Exit(1);
    }
    ctl->state.store(SharedControl::kStopped, std::memory_order_release);
    await(SharedControl::kIdle);
    ctl->state.store(SharedControl::kReady, std::memory_order_release);
  }
}

// The CPUs of --client_cpus and --shard_cpus, defaults applied.
std::pair<std::vector<int>, std::vector<int>> ProcessCpus() {
  const std::vector<int> allowed = bench::AllowedCpus();
  if (allowed.empty()) Die("sched_getaffinity failed");
  std::vector<int> client, shard;
  if (absl::GetFlag(FLAGS_client_cpus).empty()) {
    client = {allowed.back()};
  } else if (!bench::ParseCpuList(absl::GetFlag(FLAGS_client_cpus), &client)) {
    Die("bad --client_cpus (expected a list such as \"1\" or \"0,2-3\")");
  }
  if (absl::GetFlag(FLAGS_shard_cpus).empty()) {
    for (int c : allowed) {
      if (std::find(client.begin(), client.end(), c) == client.end()) shard.push_back(c);
    }
    if (shard.empty()) shard = allowed;
  } else if (!bench::ParseCpuList(absl::GetFlag(FLAGS_shard_cpus), &shard)) {
    Die("bad --shard_cpus (expected a list such as \"0\" or \"0,2-3\")");
  }
  return {client, shard};
}

std::string CpuList(const std::vector<int>& cpus) { return absl::StrJoin(cpus, ","); }

// Forks the client process (before any gRPC object exists) and pins both processes. The child
// never returns from here.
void StartClientProcess(const LocalSecurity* tls, int rank) {
  const auto [client_cpus, shard_cpus] = ProcessCpus();
  SharedControl* ctl = bench::NewSharedControl();
  if (ctl == nullptr) Die("mmap of the shared control block failed");
  std::fflush(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) Die("fork failed");
  if (pid == 0) {
    bench::DieWithParent(parent);
    if (!bench::PinProcess(client_cpus)) Die("cannot pin the client process");
    ClientProcessMain(ctl, tls, rank);
  }
  if (!bench::PinProcess(shard_cpus)) Die("cannot pin the shard's process");
  std::fprintf(stderr, "client process %d on CPU(s) %s, shard's process on CPU(s) %s\n",
               static_cast<int>(pid), CpuList(client_cpus).c_str(),
               CpuList(shard_cpus).c_str());
  client_process = new ClientProcess{ctl, pid};
}

void StopClientProcess() {
  if (client_process == nullptr) return;
  client_process->control->request.store(SharedControl::kExit, std::memory_order_release);
  waitpid(client_process->pid, nullptr, 0);
}

// The clients of one run in the client process. While a dion run lasts, a thread here
// publishes the shard's applied count and version every millisecond (the in-process clients'
// gate polls at the same rate).
class RemoteClients final : public RunClients {
 public:
  // `shard`: null for echo; must outlive this.
  RemoteClients(const ClientRunSpec& spec, const Shard* shard)
      : ctl_(client_process->control), pid_(client_process->pid), shard_(shard) {
    ctl_->spec = spec;
    ctl_->acks.store(0);
    ctl_->refused.store(0);
    ctl_->gate_reached.store(false);
    if (shard_ != nullptr) {
      Publish();
      publisher_ = std::thread([this] {
        while (!done_.load()) {
          Publish();
          absl::SleepFor(absl::Milliseconds(1));
        }
      });
    }
  }
  ~RemoteClients() override {
    done_.store(true);
    if (publisher_.joinable()) publisher_.join();
  }
  void Start(absl::Duration) override {  // the child knows the flags' timeout
    ctl_->request.store(SharedControl::kRun, std::memory_order_release);
    Await("start", [this] { return ctl_->state.load() != SharedControl::kReady; });
    CheckFailed();
  }
  int64_t acks() const override { return ctl_->acks.load(); }
  int64_t refused() const override { return ctl_->refused.load(); }
  void Stop() override {
    ctl_->request.store(SharedControl::kStop, std::memory_order_release);
    Await("stop", [this] { return ctl_->state.load() != SharedControl::kRunning; });
    CheckFailed();
    ctl_->request.store(SharedControl::kIdle, std::memory_order_release);
    Await("reset", [this] { return ctl_->state.load() == SharedControl::kReady; });
  }
  bool gate_reached() const override { return ctl_->gate_reached.load(); }
  double cpu_seconds() const override { return bench::ProcessCpuSeconds(pid_); }

 private:
  void Publish() {
    const int64_t applied = bench::ContributionsApplied(*shard_);
    ctl_->version.store(shard_->store().Version(kParameter).value_or(0));
    ctl_->applied.store(applied);
  }
  template <typename Done>
  void Await(const char* what, Done done) {
    if (!bench::AwaitChild(pid_, absl::Minutes(2), done)) {
      Die(absl::StrCat("the client process did not ", what, " (exited or timed out)"));
    }
  }
  void CheckFailed() {
    if (ctl_->state.load(std::memory_order_acquire) == SharedControl::kFailed) {
      Die(absl::StrCat("client process: ", ctl_->message));
    }
  }

  SharedControl* const ctl_;
  const pid_t pid_;
  const Shard* const shard_;
  std::atomic<bool> done_{false};
  std::thread publisher_;
};

std::unique_ptr<RunClients> MakeRunClients(const ClientRunSpec& spec, const Shard* shard,
                                           const LocalSecurity* tls, int rank) {
  if (client_process != nullptr) return std::make_unique<RemoteClients>(spec, shard);
  return std::make_unique<InProcessClients>(spec, shard, tls, rank);
}

// Starts the clients, warms up, counts over the window, stops the clients.
RunResult Measure(RunClients& clients, const std::function<void(Counters&)>& server_counters) {
  const absl::Duration window = absl::GetFlag(FLAGS_duration);
  const absl::Duration warmup = absl::GetFlag(FLAGS_warmup);
  clients.Start(warmup + window + absl::Seconds(60));
  absl::SleepFor(warmup);
  const auto read = [&] {
    Counters c;
    server_counters(c);  // first: it may wait for a running step
    c.time = absl::Now();
    c.acks = clients.acks();
    c.refused = clients.refused();
    c.cpu_self = bench::ProcessCpuSeconds(0);
    c.cpu_clients = clients.cpu_seconds();
    return c;
  };
  const Counters a = read();
  absl::SleepFor(window);
  const Counters b = read();
  clients.Stop();
  const double seconds = absl::ToDoubleSeconds(b.time - a.time);
  RunResult r;
  r.pushes_per_s = (b.acks - a.acks) / seconds;
  r.refused = b.refused;
  r.cores_self = (b.cpu_self - a.cpu_self) / seconds;
  r.cores_clients = (b.cpu_clients - a.cpu_clients) / seconds;
  r.applied_per_s = (b.applied - a.applied) / seconds;
  const int64_t steps = b.steps - a.steps;
  r.steps_per_s = steps / seconds;
  r.per_step = steps > 0 ? static_cast<double>(b.applied - a.applied) / steps : NAN;
  double busy_s = 0;
  for (const auto& [phase, sum] : b.phase_s) {
    const double d = sum - (a.phase_s.contains(phase) ? a.phase_s.at(phase) : 0.0);
    busy_s += d;
    r.phase_ms[phase] = steps > 0 ? 1e3 * d / steps : NAN;
  }
  r.step_ms = steps > 0 ? 1e3 * busy_s / steps : NAN;
  r.busy = busy_s / seconds;
  r.backlog = b.accepted - b.applied;
  return r;
}

// Where a bounded_wal run keeps its checkpoints and log; removed after the run.
std::string WalRunRoot() {
  static int runs = 0;
  const std::string root = absl::GetFlag(FLAGS_wal_root).empty()
                               ? std::filesystem::temp_directory_path().string()
                               : absl::GetFlag(FLAGS_wal_root);
  return absl::StrCat(root, "/push_bench-", getpid(), "-", runs++);
}

// bounded false: the backlog is limited only by --unbounded_cap. wal: the shard keeps a
// write-ahead log (--wal_sync) in a fresh directory, with checkpoints only at shutdown.
RunResult RunDion(int num_clients, int rank, bool bounded, bool wal = false,
                  const LocalSecurity* tls = nullptr) {
  ServerOptions options;
  if (tls != nullptr) {  // TLS, and every client sends an admin token
    options.tls.cert_file = tls->server_cert_file;
    options.tls.key_file = tls->server_key_file;
    options.auth_tokens_file = tls->tokens_file;
  }
  std::string wal_root;
  if (wal) {
    wal_root = WalRunRoot();
    options.shard.checkpoint_dir = wal_root + "/checkpoints";
    options.shard.wal_dir = wal_root + "/checkpoints/wal";
    absl::StatusOr<LogSync> sync = ParseLogSync(absl::GetFlag(FLAGS_wal_sync));
    if (!sync.ok()) Die(sync.status().ToString());
    options.shard.wal_sync = *sync;
  }
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.shard.compute_threads = absl::GetFlag(FLAGS_compute_threads);
  options.shard.checkpoint_interval = absl::ZeroDuration();
  options.shard.batcher.target_samples = absl::GetFlag(FLAGS_target_samples);
  options.shard.batcher.deadline = absl::GetFlag(FLAGS_batch_deadline);
  options.shard.batcher.adaptive = absl::GetFlag(FLAGS_adaptive_batching);
  options.shard.batcher.staleness.kind = StalenessKind::kInverse;
  options.shard.batcher.staleness.max_staleness = int64_t{1} << 40;  // accept everything
  absl::StatusOr<std::unique_ptr<DionServer>> server = DionServer::Start(options);
  if (!server.ok()) Die(server.status().ToString());
  DionServer& s = **server;
  ClientRunSpec spec;
  spec.port = s.port();
  spec.clients = num_clients;
  spec.tls = tls != nullptr;
  spec.max_backlog = absl::GetFlag(bounded ? FLAGS_max_backlog : FLAGS_unbounded_cap);
  std::unique_ptr<RunClients> clients = MakeRunClients(spec, &s.shard(), tls, rank);
  RunResult r = Measure(*clients, [&s](Counters& c) {
    const ShardStatus status = s.shard().Status();
    for (const ShardStatus::Parameter& p : status.parameters) {
      c.steps += p.status.steps;
      c.applied += p.status.contributions_applied;
      c.accepted += p.pushes.accepted;
    }
    c.phase_s = PhaseSums(s.metrics().Serialize());
  });
  if (!bounded && clients->gate_reached()) {
    std::fprintf(stderr, "  reached --unbounded_cap=%lld: this run's ack rate is capped\n",
                 static_cast<long long>(spec.max_backlog));
  }
  clients.reset();
  const ShardStatus end_status = s.shard().Status();
  r.wal_syncs = static_cast<double>(end_status.wal_syncs);
  for (const ShardStatus::Parameter& p : end_status.parameters) {
    r.accepted_total += static_cast<double>(p.pushes.accepted);
  }
  const absl::Time start = absl::Now();
  if (absl::Status st = s.Shutdown(); !st.ok()) Die(st.ToString());  // applies the backlog
  r.drain_s = absl::ToDoubleSeconds(absl::Now() - start);
  if (wal) std::filesystem::remove_all(wal_root);
  return r;
}

// `tls` non-null: the server serves TLS with its certificate, the clients send its admin token
// (the echo service does not check it).
RunResult RunEcho(int num_clients, int rank, const LocalSecurity* tls = nullptr) {
  EchoService service;
  grpc::ServerBuilder builder;
  int port = 0;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (tls != nullptr) {
    TlsServerConfig config;
    config.cert_file = tls->server_cert_file;
    config.key_file = tls->server_key_file;
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> made =
        MakeServerCredentials(config);
    if (!made.ok()) Die(made.status().ToString());
    credentials = *made;
  }
  builder.AddListeningPort("127.0.0.1:0", credentials, &port);
  builder.SetMaxReceiveMessageSize(64 << 20);  // DionServer's default
  for (const auto& [name, value] : ParseChannelArgs(
           "echo_server_args", absl::GetFlag(FLAGS_echo_server_args))) {
    builder.AddChannelArgument(name, value);
  }
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) Die("cannot start the echo server");
  ClientRunSpec spec;
  spec.port = port;
  spec.clients = num_clients;
  spec.echo = true;
  spec.tls = tls != nullptr;
  std::unique_ptr<RunClients> clients = MakeRunClients(spec, nullptr, tls, rank);
  RunResult r = Measure(*clients, [](Counters&) {});
  clients.reset();
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  server->Wait();
  return r;
}

// The 1-minute load average (the machine may be shared), or -1.
// The per-contribution work of each side, timed alone on one thread (median of `reps`, us):
// what the step-time and message-time figures of the runs are made of.
struct MessageCosts {
  double serialize = 0, parse = 0, decode = 0, validate = 0, fold = 0;
};

MessageCosts TimeMessageCosts(int n, int rank, int reps) {
  const v1::Contribution proto = Prototype("bench-0", n, rank, 1);
  absl::StatusOr<ParameterDefinition> def = ParameterFromProto(ModelRequest("").parameters(0));
  if (!def.ok()) Die(def.status().ToString());
  const auto time = [reps](auto&& f) {
    std::vector<double> us;
    for (int i = 0; i < reps; ++i) {
      const absl::Time start = absl::Now();
      f();
      us.push_back(absl::ToDoubleMicroseconds(absl::Now() - start));
    }
    return Median(us);
  };
  MessageCosts c;
  std::string bytes;
  c.serialize = time([&] { proto.SerializeToString(&bytes); });
  v1::Contribution parsed;
  c.parse = time([&] {
    if (!parsed.ParseFromString(bytes)) Die("cannot parse the contribution");
  });
  absl::StatusOr<Contribution> decoded;
  c.decode = time([&] { decoded = ContributionFromProto(parsed, &def->spec); });
  if (!decoded.ok()) Die(decoded.status().ToString());
  c.validate = time([&] {
    if (absl::Status s = ValidatePayload(def->spec, *decoded); !s.ok()) Die(s.ToString());
  });
  // M += w P R^T, the server's fold of one contribution (server/stepper.cc, one GEMM).
  Matrix M = Matrix::Zero(n, n);
  const LowRankFactors& f = decoded->factors();
  c.fold = time([&] { Gemm(Trans::kNo, Trans::kYes, 0.5f, f.P, f.R, 1.0f, M); });
  return c;
}

// Which runs --runs asks for.
struct RunKinds {
  bool echo = false, unbounded = false, bounded = false, bounded_wal = false;
  bool bounded_tls = false, echo_tls = false;
  bool tls() const { return bounded_tls || echo_tls; }
};

RunKinds ParseRunKinds() {
  RunKinds kinds;
  for (absl::string_view run : absl::StrSplit(absl::GetFlag(FLAGS_runs), ',')) {
    if (run == "echo") {
      kinds.echo = true;
    } else if (run == "unbounded") {
      kinds.unbounded = true;
    } else if (run == "bounded") {
      kinds.bounded = true;
    } else if (run == "bounded_wal") {
      kinds.bounded_wal = true;
    } else if (run == "bounded_tls") {
      kinds.bounded_tls = true;
    } else if (run == "echo_tls") {
      kinds.echo_tls = true;
    } else {
      Die(absl::StrCat("unknown --runs entry '", run,
                       "' (echo, unbounded, bounded, bounded_wal, bounded_tls, echo_tls)"));
    }
  }
  return kinds;
}

// Every run of every repetition, [count index][rep], interleaved so that load from other
// processes hits each kind alike.
struct AllRuns {
  std::vector<std::vector<RunResult>> echo, dion, bounded;  // dion: no backlog bound
  std::vector<std::vector<RunResult>> bounded_wal, bounded_tls, echo_tls;
};

void LogRun(const char* what, int rep, int clients, const RunResult& d) {
  std::fprintf(stderr,
               "rep %d clients %d %s: %.0f pushes/s, applied %.0f/s, %.1f steps/s, "
               "%.1f per step, step %.1f ms, busy %.2f, backlog %lld, drain %.2f s, "
               "refused %lld, cores %.2f (shard's process) %.2f (client process)\n",
               rep, clients, what, d.pushes_per_s, d.applied_per_s, d.steps_per_s, d.per_step,
               d.step_ms, d.busy, static_cast<long long>(d.backlog), d.drain_s,
               static_cast<long long>(d.refused), d.cores_self, d.cores_clients);
}

AllRuns RunAll(const std::vector<int>& counts, const RunKinds& kinds, int rank, int reps,
               const LocalSecurity* tls) {
  AllRuns all;
  all.echo.resize(counts.size());
  all.dion.resize(counts.size());
  all.bounded.resize(counts.size());
  all.bounded_wal.resize(counts.size());
  all.bounded_tls.resize(counts.size());
  all.echo_tls.resize(counts.size());
  for (int rep = 0; rep < reps; ++rep) {
    for (size_t i = 0; i < counts.size(); ++i) {
      if (kinds.echo) {
        all.echo[i].push_back(RunEcho(counts[i], rank));
        std::fprintf(stderr, "rep %d clients %d echo: %.0f msgs/s\n", rep, counts[i],
                     all.echo[i].back().pushes_per_s);
      }
      if (kinds.echo_tls) {
        all.echo_tls[i].push_back(RunEcho(counts[i], rank, tls));
        std::fprintf(stderr, "rep %d clients %d echo tls: %.0f msgs/s, cores %.2f / %.2f\n",
                     rep, counts[i], all.echo_tls[i].back().pushes_per_s,
                     all.echo_tls[i].back().cores_self, all.echo_tls[i].back().cores_clients);
      }
      if (kinds.unbounded) {
        all.dion[i].push_back(RunDion(counts[i], rank, /*bounded=*/false));
        LogRun("dion", rep, counts[i], all.dion[i].back());
      }
      if (kinds.bounded) {
        all.bounded[i].push_back(RunDion(counts[i], rank, /*bounded=*/true));
        LogRun("dion bounded", rep, counts[i], all.bounded[i].back());
      }
      if (kinds.bounded_wal) {
        all.bounded_wal[i].push_back(RunDion(counts[i], rank, /*bounded=*/true, /*wal=*/true));
        LogRun("dion bounded wal", rep, counts[i], all.bounded_wal[i].back());
      }
      if (kinds.bounded_tls) {
        all.bounded_tls[i].push_back(
            RunDion(counts[i], rank, /*bounded=*/true, /*wal=*/false, tls));
        LogRun("dion bounded tls", rep, counts[i], all.bounded_tls[i].back());
      }
    }
  }
  return all;
}

template <typename Field>
double MedianOf(const std::vector<RunResult>& runs, Field field) {
  std::vector<double> v;
  for (const RunResult& r : runs) v.push_back(field(r));
  return Median(v);
}

// Paired per repetition: both runs saw about the same load from other processes.
double PairedRatio(const std::vector<RunResult>& a, const std::vector<RunResult>& b) {
  std::vector<double> v;
  for (size_t k = 0; k < std::min(a.size(), b.size()); ++k) {
    v.push_back(a[k].pushes_per_s / b[k].pushes_per_s);
  }
  return Median(v);
}

// Pushes per CPU second of this process: what a push costs it, however much CPU other
// processes on the machine left it.
double PushesPerCpuSecond(const RunResult& r) { return r.pushes_per_s / r.cores_self; }

void PrintThroughput(const std::vector<int>& counts, const AllRuns& all, double payload,
                     int64_t max_backlog) {
  const auto pushes = [](const RunResult& r) { return r.pushes_per_s; };
  std::printf("| clients | echo msgs/s | echo MB/s | dion pushes/s (unbounded) | MB/s | "
              "dion / echo | dion applied/s (unbounded) | dion pushes/s (backlog <= %lld) | "
              "MB/s | bounded / echo |\n|---|---|---|---|---|---|---|---|---|---|\n",
              static_cast<long long>(max_backlog));
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = MedianOf(all.echo[i], pushes);
    const double d = MedianOf(all.dion[i], pushes);
    const double b = MedianOf(all.bounded[i], pushes);
    std::printf("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", counts[i],
                Fmt(e).c_str(), Fmt(e * payload / 1e6, 1).c_str(), Fmt(d).c_str(),
                Fmt(d * payload / 1e6, 1).c_str(),
                Fmt(PairedRatio(all.dion[i], all.echo[i]), 3).c_str(),
                Fmt(MedianOf(all.dion[i], [](const RunResult& r) { return r.applied_per_s; }))
                    .c_str(),
                Fmt(b).c_str(), Fmt(b * payload / 1e6, 1).c_str(),
                Fmt(PairedRatio(all.bounded[i], all.echo[i]), 3).c_str());
  }
}

void PrintTls(const std::vector<int>& counts, const AllRuns& all) {
  const auto pushes = [](const RunResult& r) { return r.pushes_per_s; };
  const auto pair = [](const std::vector<RunResult>& plain, const std::vector<RunResult>& tls,
                       auto field, int digits) {
    return absl::StrCat(Fmt(MedianOf(plain, field), digits), " / ",
                        Fmt(MedianOf(tls, field), digits));
  };
  std::printf("\nTLS and a bearer token on every call (ECDSA P-256 certificate), backlog bound "
              "as above; busy = the shard's step time / window; cores = CPU seconds per second "
              "of the shard's process and of the client process (plaintext / TLS); pushes per "
              "CPU second of the shard's process (the clients' too without --client_process), "
              "plaintext / TLS and their paired ratio:\n\n"
              "| clients | pushes/s plaintext | pushes/s TLS + token | TLS / plaintext (paired) | "
              "per repetition | busy | shard's process cores | client process cores | "
              "pushes per CPU s | TLS / plaintext per CPU s (paired) |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < counts.size(); ++i) {
    const std::vector<RunResult>& plain = all.bounded[i];
    const std::vector<RunResult>& tls = all.bounded_tls[i];
    std::vector<std::string> per_rep;
    for (size_t k = 0; k < std::min(plain.size(), tls.size()); ++k) {
      per_rep.push_back(Fmt(tls[k].pushes_per_s / plain[k].pushes_per_s, 2));
    }
    std::vector<double> per_cpu;
    for (size_t k = 0; k < std::min(plain.size(), tls.size()); ++k) {
      per_cpu.push_back(PushesPerCpuSecond(tls[k]) / PushesPerCpuSecond(plain[k]));
    }
    std::printf("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", counts[i],
                Fmt(MedianOf(plain, pushes)).c_str(), Fmt(MedianOf(tls, pushes)).c_str(),
                Fmt(PairedRatio(tls, plain), 3).c_str(), absl::StrJoin(per_rep, ", ").c_str(),
                pair(plain, tls, [](const RunResult& r) { return r.busy; }, 2).c_str(),
                pair(plain, tls, [](const RunResult& r) { return r.cores_self; }, 2).c_str(),
                pair(plain, tls, [](const RunResult& r) { return r.cores_clients; }, 2).c_str(),
                pair(plain, tls, PushesPerCpuSecond, 0).c_str(), Fmt(Median(per_cpu), 3).c_str());
  }
}

// CPU microseconds of this process per message of a run.
double CpuUsPerMessage(const RunResult& r) { return 1e6 * r.cores_self / r.pushes_per_s; }

void PrintEchoTls(const std::vector<int>& counts, const AllRuns& all) {
  std::printf("\nThe transport alone (echo runs), plaintext / TLS + token: messages/s, CPU us "
              "per message of this process (the receiving side only with --client_process, "
              "clients too without it), TLS - plaintext per message and messages per CPU "
              "second TLS / plaintext (both paired):\n\n"
              "| clients | msgs/s | CPU us per message | TLS - plaintext us (paired) | "
              "TLS / plaintext per CPU s (paired) | per repetition |\n|---|---|---|---|---|---|\n");
  const auto pushes = [](const RunResult& r) { return r.pushes_per_s; };
  for (size_t i = 0; i < counts.size(); ++i) {
    const std::vector<RunResult>& plain = all.echo[i];
    const std::vector<RunResult>& tls = all.echo_tls[i];
    std::vector<double> extra, ratio;
    std::vector<std::string> per_rep;
    for (size_t k = 0; k < std::min(plain.size(), tls.size()); ++k) {
      extra.push_back(CpuUsPerMessage(tls[k]) - CpuUsPerMessage(plain[k]));
      ratio.push_back(CpuUsPerMessage(plain[k]) / CpuUsPerMessage(tls[k]));
      per_rep.push_back(Fmt(ratio.back(), 2));
    }
    std::printf("| %d | %s / %s | %s / %s | %s | %s | %s |\n", counts[i],
                Fmt(MedianOf(plain, pushes)).c_str(), Fmt(MedianOf(tls, pushes)).c_str(),
                Fmt(MedianOf(plain, CpuUsPerMessage)).c_str(),
                Fmt(MedianOf(tls, CpuUsPerMessage)).c_str(), Fmt(Median(extra)).c_str(),
                Fmt(Median(ratio), 3).c_str(), absl::StrJoin(per_rep, ", ").c_str());
  }
}

void PrintWal(const std::vector<int>& counts, const AllRuns& all) {
  const auto pushes = [](const RunResult& r) { return r.pushes_per_s; };
  std::printf("\nWrite-ahead log (--wal_sync=%s), backlog bound as above:\n\n"
              "| clients | pushes/s without log | pushes/s with log | with / without (paired) | "
              "acks per fdatasync |\n|---|---|---|---|---|\n",
              absl::GetFlag(FLAGS_wal_sync).c_str());
  for (size_t i = 0; i < counts.size(); ++i) {
    std::printf("| %d | %s | %s | %s | %s |\n", counts[i],
                Fmt(MedianOf(all.bounded[i], pushes)).c_str(),
                Fmt(MedianOf(all.bounded_wal[i], pushes)).c_str(),
                Fmt(PairedRatio(all.bounded_wal[i], all.bounded[i]), 3).c_str(),
                Fmt(MedianOf(all.bounded_wal[i],
                             [](const RunResult& r) { return r.accepted_total / r.wal_syncs; }),
                    1)
                    .c_str());
  }
}

void PrintServerSide(const std::vector<int>& counts, const AllRuns& all, int64_t max_backlog) {
  std::printf("\nServer side of the dion runs (medians; step and phases in ms per step; busy = "
              "step time / window):\n\n"
              "| clients | backlog bound | applied/s | steps/s | contributions / step | step ms | "
              "aggregate | power iteration | orthonormalize | update | broadcast | busy | "
              "backlog at end | shutdown drain s | refused |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < counts.size(); ++i) {
    for (const auto* runs : {&all.dion[i], &all.bounded[i]}) {
      if (runs->empty()) continue;
      const auto f = [&](auto field, int digits) { return Fmt(MedianOf(*runs, field), digits); };
      const auto phase = [&](const char* name) {
        return f([name](const RunResult& r) {
                   return r.phase_ms.contains(name) ? r.phase_ms.at(name) : NAN;
                 }, 2);
      };
      std::printf(
          "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
          counts[i], runs == &all.dion[i] ? "none" : absl::StrCat(max_backlog).c_str(),
          f([](const RunResult& r) { return r.applied_per_s; }, 0).c_str(),
          f([](const RunResult& r) { return r.steps_per_s; }, 1).c_str(),
          f([](const RunResult& r) { return r.per_step; }, 1).c_str(),
          f([](const RunResult& r) { return r.step_ms; }, 1).c_str(), phase("aggregate").c_str(),
          phase("power_iteration").c_str(), phase("orthonormalize").c_str(),
          phase("update").c_str(), phase("broadcast").c_str(),
          f([](const RunResult& r) { return r.busy; }, 2).c_str(),
          f([](const RunResult& r) { return static_cast<double>(r.backlog); }, 0).c_str(),
          f([](const RunResult& r) { return r.drain_s; }, 2).c_str(),
          f([](const RunResult& r) { return static_cast<double>(r.refused); }, 0).c_str());
    }
  }
}

int Main() {
  bench::StartWatchdog("push_bench", absl::GetFlag(FLAGS_max_runtime));

  const std::vector<int> counts =
      bench::ParseCounts("push_bench", "clients", absl::GetFlag(FLAGS_clients));
  const RunKinds kinds = ParseRunKinds();
  const int n = absl::GetFlag(FLAGS_n);
  const int rank = DionRank(n, n, absl::GetFlag(FLAGS_rank_fraction), 1);
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  const double payload = 2.0 * n * rank * sizeof(float);
  const size_t message_bytes = Prototype("bench-0", n, rank, 1).ByteSizeLong();
  const int64_t max_backlog = absl::GetFlag(FLAGS_max_backlog);
  if (max_backlog < 1) Die("--max_backlog must be >= 1");
  const double load_before = LoadAverage();
  // The certificates and tokens of the bounded_tls and echo_tls runs (made with openssl).
  std::optional<LocalSecurity> tls;
  const std::string tls_root = absl::StrCat(std::filesystem::temp_directory_path().string(),
                                            "/push_bench-tls-", getpid());
  if (kinds.tls()) {
    absl::StatusOr<LocalSecurity> made = CreateLocalSecurity(tls_root, 1);
    if (!made.ok()) Die(made.status().ToString());
    tls = *std::move(made);
  }
  // Before any gRPC object exists; the child never returns from here.
  if (absl::GetFlag(FLAGS_client_process)) StartClientProcess(tls ? &*tls : nullptr, rank);
  if (absl::Status s = SetBlasThreads(absl::GetFlag(FLAGS_blas_threads)); !s.ok()) {
    absl::FPrintF(stderr, "note: --blas_threads=%d: %s\n", absl::GetFlag(FLAGS_blas_threads),
                  s.message());
  }
  const MessageCosts costs = TimeMessageCosts(n, rank, 50);

  const AllRuns all = RunAll(counts, kinds, rank, reps, tls ? &*tls : nullptr);
  StopClientProcess();
  if (tls) std::filesystem::remove_all(tls_root);
  std::printf("push_bench: %d x %d Dion parameter, rank %d; payload %.0f bytes (P + R), message "
              "%zu bytes; window %d per client; %s measured after %s warm-up; median of %d; "
              "MB = 1e6 bytes of payload; load average %.1f -> %.1f; clients %s\n\n",
              n, n, rank, payload, message_bytes, absl::GetFlag(FLAGS_window),
              absl::FormatDuration(absl::GetFlag(FLAGS_duration)).c_str(),
              absl::FormatDuration(absl::GetFlag(FLAGS_warmup)).c_str(), reps, load_before,
              LoadAverage(),
              client_process != nullptr
                  ? "in their own process on other CPUs (--client_process)"
                  : "in the shard's process, on its CPUs");
  PrintThroughput(counts, all, payload, max_backlog);
  if (kinds.bounded && kinds.bounded_wal) PrintWal(counts, all);
  if (kinds.bounded && kinds.bounded_tls) PrintTls(counts, all);
  if (kinds.echo && kinds.echo_tls) PrintEchoTls(counts, all);
  std::printf("\nPer contribution, timed alone on one thread (median of 50, us): serialize %.0f, "
              "parse %.0f (echo and dion), decode to matrices %.0f and validate %.0f (dion "
              "handler), fold into M %.0f (dion step, %d BLAS thread(s))\n",
              costs.serialize, costs.parse, costs.decode, costs.validate, costs.fold,
              absl::GetFlag(FLAGS_blas_threads));
  PrintServerSide(counts, all, max_backlog);
  return 0;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dion::Main();
}
