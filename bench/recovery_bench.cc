// How long a shard takes to come back from a kill: the write-ahead log's replay.
//
// A forked child runs a Shard (server/shard.h) with the log on and no checkpoint, registers one
// Dion parameter n x n (default 1024 x 1024, rank fraction 1/16, push_bench's size), pushes
// --contributions (default 10,000) contributions of rank r = n/16 from one worker (batches of
// --target_samples, backpressure as in dion-server), and ends with _exit: no shutdown, no
// checkpoint, what a kill -9 leaves. The parent then times Shard::Create on the same
// directories, which replays the log (every contribution decoded and validated, every batch
// applied), and reports the log's size, the replay time and its rate, next to the rate the
// child applied the same batches at while it was pushing. Then it removes the directories.
//
//   build/bench/recovery_bench [--contributions=10000] [--n=1024] [--reps=1]
//
// Output: a markdown table on stdout; progress on stderr.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/rng.h"
#include "common/wire.h"
#include "server/shard.h"

ABSL_FLAG(int64_t, contributions, 10000, "Contributions in the log");
ABSL_FLAG(int, n, 1024, "The Dion parameter is n x n");
ABSL_FLAG(double, rank_fraction, 0.0625, "Rank of the contributions and of Dion: n x this");
ABSL_FLAG(int64_t, target_samples, 256, "Batch sample target (32 samples per contribution)");
ABSL_FLAG(int, reps, 1, "Repetitions (a fresh log each)");
ABSL_FLAG(std::string, dir, "", "Where to put the log; empty: the system's temporary directory");

namespace dion {
namespace {

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "recovery_bench: %s\n", message.c_str());
  std::exit(1);
}

ShardOptions Options(const std::string& root) {
  ShardOptions options;
  options.checkpoint_dir = root + "/checkpoints";
  options.checkpoint_interval = absl::ZeroDuration();
  options.wal_dir = root + "/checkpoints/wal";
  options.wal_sync = LogSync::None();  // the log's content is the same; writing it is not timed
  options.batcher.target_samples = absl::GetFlag(FLAGS_target_samples);
  options.batcher.adaptive = false;
  options.batcher.staleness.max_staleness = int64_t{1} << 40;
  return options;
}

ModelTable Table() {
  v1::RegisterModelRequest request;
  request.set_model_name("recovery-bench");
  v1::ParameterSpec* p = request.add_parameters();
  p->set_name("w");
  p->add_shape(absl::GetFlag(FLAGS_n));
  p->add_shape(absl::GetFlag(FLAGS_n));
  p->set_optimizer(v1::OPTIMIZER_KIND_DION);
  p->mutable_dion()->set_rank_fraction(absl::GetFlag(FLAGS_rank_fraction));
  p->mutable_init()->set_kind(v1::INIT_KIND_KAIMING);
  p->set_seed(1);
  absl::StatusOr<ModelTable> table = ModelTableFromProto(request);
  if (!table.ok()) Die(table.status().ToString());
  return *table;
}

// The child: fills the log and dies. Prints the rate it applied contributions at.
void FillLogAndDie(const std::string& root) {
  absl::StatusOr<std::unique_ptr<Shard>> shard = Shard::Create(Options(root));
  if (!shard.ok()) Die(shard.status().ToString());
  if (!(*shard)->RegisterModel(Table()).ok() || !(*shard)->RegisterWorker("bench").ok()) {
    Die("registration failed");
  }
  const int n = absl::GetFlag(FLAGS_n);
  const int r = std::max(1, static_cast<int>(std::lround(n * absl::GetFlag(FLAGS_rank_fraction))));
  Rng rng(7);
  LowRankFactors f{Matrix(n, r), Matrix(n, r)};
  rng.FillNormal(f.P, 1.0 / std::sqrt(static_cast<double>(r)));
  rng.FillNormal(f.R);
  const int64_t total = absl::GetFlag(FLAGS_contributions);
  const absl::Time start = absl::Now();
  for (int64_t k = 0; k < total; ++k) {
    Contribution c;
    c.worker_id = "bench";
    c.sequence = static_cast<uint64_t>(k);
    c.parameter = "w";
    c.base_version = (*shard)->Version("w").value_or(0);
    c.sample_count = 32;
    c.payload = f;
    absl::StatusOr<PushReply> reply = (*shard)->Push(std::move(c));
    if (!reply.ok() || reply->result != PushOutcome::kAccepted) Die("a push was not accepted");
    if (k % 1000 == 999) std::fprintf(stderr, "  child: %lld pushed\n", static_cast<long long>(k + 1));
  }
  const ShardStatus status = (*shard)->Status();
  std::fprintf(stderr, "  child: applied %lld, failed steps %lld, pending %lld\n",
               static_cast<long long>(status.parameters[0].status.contributions_applied),
               static_cast<long long>(status.failed_steps),
               static_cast<long long>(status.pending_batches));
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("%.1f\n", static_cast<double>(status.parameters[0].status.contributions_applied) /
                            seconds);
  std::fflush(stdout);
  (void)shard->release();
  _exit(0);
}

struct Result {
  double log_mb = 0, replay_s = 0, live_rate = 0;
  LogReplayStats stats;
};

Result RunOnce(const std::string& root) {
  std::filesystem::remove_all(root);
  int fds[2];
  if (pipe(fds) != 0) Die("pipe");
  std::fflush(stdout);  // or the child would write the parent's buffered output again
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDOUT_FILENO);
    FillLogAndDie(root);
  }
  close(fds[1]);
  char buffer[64] = {0};
  const ssize_t got = read(fds[0], buffer, sizeof(buffer) - 1);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got <= 0) Die("the child failed");
  Result result;
  result.live_rate = std::atof(buffer);
  uint64_t bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(root + "/checkpoints/wal")) {
    bytes += entry.file_size();
  }
  result.log_mb = static_cast<double>(bytes) / 1e6;
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Shard>> shard = Shard::Create(Options(root));
  result.replay_s = absl::ToDoubleSeconds(absl::Now() - start);
  if (!shard.ok()) Die(shard.status().ToString());
  result.stats = (*shard)->Status().wal_replayed;
  shard->reset();  // its last checkpoint is not timed
  std::filesystem::remove_all(root);
  return result;
}

int Main() {
  const std::string base = absl::GetFlag(FLAGS_dir).empty()
                               ? std::filesystem::temp_directory_path().string()
                               : absl::GetFlag(FLAGS_dir);
  std::printf("| contributions | log MB | replay s | replayed contributions/s | batches | "
              "applied/s while pushing | replay / live |\n|---|---|---|---|---|---|---|\n");
  for (int rep = 0; rep < absl::GetFlag(FLAGS_reps); ++rep) {
    const Result r = RunOnce(absl::StrCat(base, "/recovery_bench-", getpid(), "-", rep));
    const double rate = static_cast<double>(r.stats.contributions) / r.replay_s;
    std::printf("| %lld | %.0f | %.2f | %.0f | %lld | %.0f | %.2f |\n",
                static_cast<long long>(r.stats.contributions), r.log_mb, r.replay_s, rate,
                static_cast<long long>(r.stats.batches), r.live_rate, rate / r.live_rate);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dion::Main();
}
