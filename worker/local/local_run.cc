#include "worker/local/local_run.h"

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "worker/local/local_run_flags.h"
#include "worker/local/local_security.h"
#include "worker/local/process.h"
#include "worker/local/progress_display.h"
#include "worker/local/run_report.h"
#include "worker/local/shard_peers.h"
#include "worker/local/run_summary.h"
#include "worker/local/start_barrier.h"
#include "worker/local/worker_links.h"

namespace dion {
namespace {

namespace fs = std::filesystem;

enum class Role { kShard, kWorker, kEvaluator };

struct Child {
  Role role;
  int index;
  std::unique_ptr<ChildProcess> process;
  std::string address;  // shards: the bound gRPC address, from the start-up line
};

// The text after `marker` up to the next space or comma, if `line` contains marker.
std::optional<std::string> Field(absl::string_view line, absl::string_view marker) {
  const size_t at = line.find(marker);
  if (at == absl::string_view::npos) return std::nullopt;
  absl::string_view rest = line.substr(at + marker.size());
  return std::string(rest.substr(0, rest.find_first_of(" ,")));
}

class LocalRun {
 public:
  LocalRun(const LocalRunOptions& options, int signal_fd)
      : options_(options),
        signal_fd_(signal_fd),
        run_dir_(options.run_dir.empty() ? DefaultRunDir() : options.run_dir),
        run_id_(options.run_id.empty() ? DefaultRunId(run_dir_) : options.run_id),
        start_(absl::StrCat(run_dir_, "/logs/.start"), options.workers),
        aggregate_(options.workers),
        display_(options.progress, options.progress_interval, options.epochs, options.workers) {}

  int Run();

 private:
  double Now() const { return absl::ToDoubleSeconds(absl::Now() - run_start_); }
  std::vector<ChildProcess*> Processes(std::optional<Role> role = std::nullopt) const;
  absl::Status Spawn(Role role, int index, std::vector<std::string> args);
  void OnLine(ChildProcess& process, const std::string& line);
  void Say(FILE* stream, const std::string& message) { display_.Say(stream, message); }
  void ShowProgress(bool force) { display_.Show(aggregate_, Now(), force); }
  // Checks every child; the first that failed (or a shard that exited early) is reported.
  bool FindFailure();
  void ReportFailure(const Child& child, const std::string& what);
  absl::Status StartShards();
  absl::Status StartWorkers();
  // The coordinated checkpoint (LocalRunOptions::checkpoint); false when it failed.
  bool Checkpoint();
  TlsClientConfig CheckpointTls() const;
  // Returns false when interrupted or a child failed.
  bool Supervise();
  bool Evaluate();
  // Consumes the pending signals and remembers the interruption.
  void Interrupt();
  void StopAll();
  int Finish(const std::string& status);
  std::vector<std::string> ShardAddresses() const;

  const LocalRunOptions& options_;
  const int signal_fd_;
  const std::string run_dir_;
  const std::string run_id_;
  // The coordinated checkpoint at the end, with what its Status and GetLayout calls read.
  std::optional<LocalRunOptions::TakenCheckpoint> checkpoint_;
  std::optional<LocalSecurity> security_;  // unless options_.insecure
  StartBarrier start_;  // the start file that starts the workers' training together
  absl::Time run_start_ = absl::Now();
  std::vector<Child> children_;
  RunAggregate aggregate_;
  std::optional<EvaluationResult> evaluation_;
  ProgressDisplay display_;
  std::unique_ptr<WorkerLinks> links_;  // with options_.links enabled
  bool interrupted_ = false;
};

std::vector<ChildProcess*> LocalRun::Processes(std::optional<Role> role) const {
  std::vector<ChildProcess*> out;
  for (const Child& c : children_) {
    if (!role.has_value() || c.role == *role) out.push_back(c.process.get());
  }
  return out;
}

absl::Status LocalRun::Spawn(Role role, int index, std::vector<std::string> args) {
  const std::string name = role == Role::kShard    ? absl::StrCat("shard-", index)
                           : role == Role::kWorker ? absl::StrCat("worker-", index)
                                                   : std::string("evaluator");
  ChildSpec spec;
  spec.name = name;
  spec.binary = role == Role::kShard ? options_.server_binary : options_.worker_binary;
  if (role != Role::kShard) {
    args.insert(args.begin(), options_.worker_args.begin(), options_.worker_args.end());
  }
  spec.args = std::move(args);
  spec.log_path = absl::StrCat(run_dir_, "/logs/", name, ".log");
  if (role == Role::kShard) spec.env = options_.shard_env;
  if (security_.has_value()) {
    std::vector<std::string> secure = role == Role::kShard    ? security_->ServerFlags()
                                      : role == Role::kWorker ? security_->WorkerFlags(index)
                                                              : security_->WorkerFlags(-1);
    spec.args.insert(spec.args.end(), secure.begin(), secure.end());
  }
  if (links_ != nullptr && role == Role::kWorker) links_->PutBehindLink(index, &spec);
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Spawn(spec);
  if (!process.ok()) return process.status();
  children_.push_back({role, index, *std::move(process), ""});
  return absl::OkStatus();
}

void LocalRun::OnLine(ChildProcess& process, const std::string& line) {
  Child* child = nullptr;
  for (Child& c : children_) {
    if (c.process.get() == &process) child = &c;
  }
  if (child == nullptr) return;
  if (child->role == Role::kShard && child->address.empty()) {
    if (auto address = Field(line, "serving gRPC on ")) child->address = *address;
  } else if (child->role == Role::kWorker) {
    if (IsProgressLine(line)) {
      absl::StatusOr<ProgressLine> parsed = ParseProgressLine(line);
      if (parsed.ok()) {
        aggregate_.Add(*parsed, Now());
      } else {
        Say(stderr, absl::StrCat("dion local: ", parsed.status().message()));
      }
    } else if (absl::StrContains(line, " training on ")) {
      // "dion-worker: worker-0 training on 15000 of 60000 samples (iid partition), ..."
      int64_t size = 0;
      if (auto of = Field(line, " of "); of && absl::SimpleAtoi(*of, &size)) {
        aggregate_.SetTrainingSetSize(size);
      }
      start_.Ready(child->index);  // an error is reported by FindFailure
    }
  } else if (child->role == Role::kEvaluator && IsEvaluationLine(line)) {
    absl::StatusOr<EvaluationResult> parsed = ParseEvaluationLine(line);
    if (parsed.ok()) evaluation_ = *parsed;
  }
}

void LocalRun::ReportFailure(const Child& child, const std::string& what) {
  std::string report =
      absl::StrCat("dion local: ", child.process->name(), " (pid ", child.process->pid(), ") ",
                   what, "; last lines of ", child.process->log_path(), ":");
  for (const std::string& line : child.process->Tail()) absl::StrAppend(&report, "\n  | ", line);
  Say(stderr, report);
}

bool LocalRun::FindFailure() {
  for (Child& c : children_) {
    std::optional<ExitStatus> status = c.process->TryWait();
    if (!status.has_value()) continue;
    // Read what it printed last, for the report.
    c.process->ReadAvailable([&](const std::string& line) { OnLine(*c.process, line); });
    if (!status->ok()) {
      ReportFailure(c, status->ToString());
      return true;
    }
    if (c.role == Role::kShard) {
      ReportFailure(c, "exited (status 0) while the workers still needed it");
      return true;
    }
    if (c.role == Role::kWorker && !start_.ready(c.index)) {  // the others would wait for it
      ReportFailure(c, "exited (status 0) before it was ready to train");
      return true;
    }
  }
  if (!start_.error().empty()) {
    Say(stderr, absl::StrCat("dion local: cannot start the workers: ", start_.error()));
    return true;
  }
  return false;
}

absl::Status LocalRun::StartShards() {
  absl::StatusOr<std::vector<std::vector<std::string>>> shards =
      ShardCommandLines(options_, run_dir_, security_ ? &*security_ : nullptr);
  if (!shards.ok()) return shards.status();
  for (int i = 0; i < options_.shards; ++i) {
    if (absl::Status s = Spawn(Role::kShard, i, std::move((*shards)[i])); !s.ok()) return s;
  }
  // Wait for every shard's start-up line: it carries the address (a free port when
  // base_port is 0), and it means the shard is serving.
  const absl::Time deadline = absl::Now() + options_.startup_timeout;
  for (;;) {
    bool all = true;
    for (const Child& c : children_) all = all && !c.address.empty();
    if (all) return absl::OkStatus();
    if (FindFailure()) return absl::AbortedError("a shard failed to start");
    if (absl::Now() > deadline) {
      for (const Child& c : children_) {
        if (c.address.empty()) ReportFailure(c, "did not report its address in time");
      }
      return absl::DeadlineExceededError("shards did not start");
    }
    if (PumpOutput(
            Processes(), absl::Milliseconds(100),
            [this](ChildProcess& p, const std::string& l) { OnLine(p, l); }, signal_fd_)) {
      Interrupt();
      return absl::CancelledError("interrupted");
    }
  }
}

std::vector<std::string> LocalRun::ShardAddresses() const {
  std::vector<std::string> addresses;
  for (const Child& c : children_) {
    if (c.role == Role::kShard) addresses.push_back(c.address);
  }
  return addresses;
}

absl::Status LocalRun::StartWorkers() {
  start_.Reset();
  if (options_.links.enabled()) {  // worker/local/worker_links.h
    auto links = WorkerLinks::Create(options_.workers, options_.links, ShardAddresses());
    if (!links.ok()) return links.status();
    links_ = *std::move(links);
    Say(stdout, "dion local: " + links_->Describe());
  }
  for (int j = 0; j < options_.workers; ++j) {
    const std::vector<std::string> shards = links_ ? links_->ShardAddresses(j) : ShardAddresses();
    absl::Status s = Spawn(Role::kWorker, j, WorkerFlags(options_, j, shards, start_.path()));
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

bool LocalRun::Supervise() {
  const std::vector<ChildProcess*> workers = Processes(Role::kWorker);
  for (;;) {
    if (FindFailure()) return false;
    if (std::none_of(workers.begin(), workers.end(),
                     [](ChildProcess* w) { return w->running(); })) {
      for (ChildProcess* w : workers) {  // their last lines
        w->ReadAvailable([&](const std::string& line) { OnLine(*w, line); });
      }
      ShowProgress(/*force=*/true);
      display_.KeepLiveLine();  // the last status stays on screen above the report
      return true;
    }
    if (PumpOutput(
            Processes(), absl::Milliseconds(100),
            [this](ChildProcess& p, const std::string& l) { OnLine(p, l); }, signal_fd_)) {
      Interrupt();
      return false;
    }
    ShowProgress(/*force=*/false);
  }
}

bool LocalRun::Evaluate() {
  if (absl::Status s = Spawn(Role::kEvaluator, 0, EvaluatorFlags(options_, ShardAddresses()));
      !s.ok()) {
    Say(stderr, absl::StrCat("dion local: ", s.message()));
    return false;
  }
  Child& evaluator = children_.back();
  const absl::Time deadline = absl::Now() + options_.evaluation_timeout;
  while (evaluator.process->running() && absl::Now() < deadline) {
    if (PumpOutput(
            Processes(), absl::Milliseconds(100),
            [this](ChildProcess& p, const std::string& l) { OnLine(p, l); }, signal_fd_)) {
      Interrupt();
      return false;
    }
    if (FindFailure()) return false;
  }
  if (evaluator.process->running()) {
    ReportFailure(evaluator, absl::StrCat("did not finish within ",
                                          absl::FormatDuration(options_.evaluation_timeout)));
    return false;
  }
  if (FindFailure()) return false;
  if (!evaluation_.has_value()) {
    ReportFailure(evaluator, "printed no 'evaluation ...' line");
    return false;
  }
  return true;
}

TlsClientConfig LocalRun::CheckpointTls() const {
  TlsClientConfig tls;
  if (security_.has_value()) {
    tls.ca_file = security_->ca_file;
    tls.token_file = security_->admin_token_file;
  }
  return tls;
}

bool LocalRun::Checkpoint() {
  absl::StatusOr<LocalRunOptions::TakenCheckpoint> taken =
      options_.checkpoint(ShardAddresses(), run_id_, CheckpointTls());
  if (!taken.ok()) {
    Say(stderr, absl::StrCat("dion local: coordinated checkpoint: ", taken.status().message()));
    return false;
  }
  for (const std::string& line : taken->lines) Say(stdout, absl::StrCat("dion local: ", line));
  checkpoint_ = *std::move(taken);
  return true;
}

void LocalRun::Interrupt() {
  signalfd_siginfo info;
  while (read(signal_fd_, &info, sizeof(info)) == sizeof(info)) {
  }
  interrupted_ = true;
}

void LocalRun::StopAll() {
  const auto on_line = [this](ChildProcess& p, const std::string& l) { OnLine(p, l); };
  // Workers first, so their last pushes still reach running shards; shards checkpoint on SIGTERM.
  std::vector<ChildProcess*> workers = Processes(Role::kWorker);
  std::vector<ChildProcess*> evaluator = Processes(Role::kEvaluator);
  workers.insert(workers.end(), evaluator.begin(), evaluator.end());
  StopChildren(workers, SIGTERM, options_.stop_grace, on_line, signal_fd_);
  StopChildren(Processes(Role::kShard), SIGTERM, options_.stop_grace, on_line, signal_fd_);
}

int LocalRun::Finish(const std::string& status) {
  RunSummary summary = SummarizeRun(aggregate_, options_.workers, options_.target_accuracy);
  summary.status = status;
  summary.run_dir = run_dir_;
  summary.final_evaluation = evaluation_;
  summary.wall_time_s = Now();
  summary.config = SummaryConfig(options_);
  summary.config.emplace_back("run_id", run_id_);
  if (checkpoint_.has_value()) {
    summary.checkpoint = checkpoint_->cut;
    summary.privacy = checkpoint_->privacy;
    summary.split_parameters = checkpoint_->split_parameters;
  }
  for (const auto& [file, contents] :
       {std::pair<std::string, std::string>{"summary.json", SummaryJson(summary)},
        {"curves.svg", CurvesSvg(summary)}}) {
    if (absl::Status s = WriteTextFile(absl::StrCat(run_dir_, "/", file), contents); !s.ok()) {
      Say(stderr, absl::StrCat("dion local: ", s.message()));
    }
  }
  Say(stdout, status == "ok" ? absl::StrFormat("dion local: done in %.1f s", summary.wall_time_s)
                             : absl::StrCat("dion local: ", status, "; partial report"));
  for (const std::string& line : ReportLines(summary)) Say(stdout, line);
  if (status == "ok") return 0;
  return status == "interrupted" ? 130 : 1;
}

int LocalRun::Run() {
  std::error_code error;
  fs::create_directories(fs::path(run_dir_) / "logs", error);
  if (error) {
    Say(stderr, absl::StrCat("dion local: cannot create ", run_dir_, "/logs: ", error.message()));
    return 1;
  }
  if (!options_.prometheus_config.empty()) {
    if (absl::Status s = WriteTextFile(options_.prometheus_config, PrometheusConfig(options_));
        !s.ok()) {
      Say(stderr, absl::StrCat("dion local: cannot write the Prometheus configuration: ",
                               s.message()));
      return 1;
    }
    Say(stdout, absl::StrCat("dion local: Prometheus configuration for the metrics ports in ",
                             options_.prometheus_config,
                             options_.alert_rules.empty()
                                 ? " (without alert rules: dion-alerts.yml not found)"
                                 : ""));
  }
  if (!options_.insecure) {
    absl::StatusOr<LocalSecurity> security = CreateLocalSecurity(run_dir_, options_.workers);
    if (!security.ok()) {
      Say(stderr, absl::StrCat("dion local: ", security.status().message()));
      return 1;
    }
    security_ = *std::move(security);
  }
  Say(stdout,
      absl::StrFormat("dion local: %d shard(s), %d worker(s), %s, %d epoch(s)%s; run directory "
                      "%s, run id %s; %s", options_.shards, options_.workers, options_.dataset,
                      options_.epochs, options_.sync ? ", synchronous" : "", run_dir_, run_id_,
                      security_.has_value()
                          ? absl::StrCat("TLS and tokens from a throwaway CA in ",
                                         security_->dir)
                          : std::string("plaintext without tokens (--insecure)")));
  bool ok = true;
  if (absl::Status s = StartShards(); !s.ok()) {
    if (!interrupted_ && !absl::IsAborted(s) && !absl::IsDeadlineExceeded(s)) {
      Say(stderr, absl::StrCat("dion local: ", s.message()));
    }
    ok = false;
  }
  if (ok) {
    Say(stdout,
        absl::StrCat("dion local: shards serving on ", absl::StrJoin(ShardAddresses(), ", "),
                     "; logs in ", run_dir_, "/logs"));
    if (absl::Status s = StartWorkers(); !s.ok()) {
      Say(stderr, absl::StrCat("dion local: ", s.message()));
      ok = false;
    }
  }
  ok = ok && Supervise() && Evaluate();
  if (ok && options_.checkpoint != nullptr) ok = Checkpoint();
  if (interrupted_) {
    Say(stderr,
        "dion local: interrupted; stopping the workers, then the shards (they write a "
        "final checkpoint; a second Ctrl-C kills everything)");
  }
  StopAll();
  if (links_ != nullptr) Say(stdout, links_->ByteReport("dion local: "));
  links_.reset();  // removes the namespaces and veths
  for (const Child& c : children_) {  // a shard whose final checkpoint failed
    if (c.role == Role::kShard && ok && !c.process->TryWait().value_or(ExitStatus{}).ok()) {
      ReportFailure(c, absl::StrCat("stopped with ", c.process->TryWait()->ToString()));
      ok = false;
    }
  }
  return Finish(interrupted_ ? "interrupted" : ok ? "ok" : "failed");
}

}  // namespace

int RunLocal(const LocalRunOptions& options) {
  if (absl::Status s = ValidateLocalRunOptions(options); !s.ok()) {
    std::fprintf(stderr, "dion local: bad flags: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  LocalRunOptions resolved = options;
  if (absl::StatusOr<int64_t> samples = ScheduleSamples(options); samples.ok()) {
    resolved.lr_schedule_samples = *samples;
  } else {
    const bool data = !absl::StrContains(samples.status().message(), "worker flag");
    std::fprintf(stderr, "dion local: cannot work out the lr cooldown's horizon: %s%s\n",
                 std::string(samples.status().message()).c_str(),
                 data ? " (is --data_dir right? Debian: apt-get install dataset-fashion-mnist; "
                        "--lr_cooldown=0 needs no horizon)"
                      : "");
    return 2;
  }
  // SIGINT / SIGTERM are read from a signalfd in the supervision loop; the children get their
  // default dispositions back (worker/local/process.h). SIGPIPE: a closed stdout must not kill the
  // supervisor before it has stopped its children.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  const int signal_fd = signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signal_fd < 0) {
    std::perror("dion local: signalfd");
    return 1;
  }
  const int code = LocalRun(resolved, signal_fd).Run();
  close(signal_fd);
  return code;
}

}  // namespace dion
