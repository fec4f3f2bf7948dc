// How long pushes wait for a checkpoint: push acknowledgement latency while checkpoints are
// written, against the latency between them, in one run.
//
// A Shard (server/shard.h, in process, no gRPC) owns --params Dion parameters of n x n
// (default 10 of 1024 x 1024: ~88 MB of X and optimizer state, the figure docs/server.md
// quotes), with the write-ahead log on (--wal_sync, default always) in --dir. --clients
// threads push rank n/16 contributions at --rate each (Shard::Push: accepted and durable,
// what an ACCEPTED ack waits for) round-robin over the parameters, while another thread
// writes a checkpoint, pauses --pause, and so on, for --seconds. A push counts as "during a
// checkpoint" when it started or ended while one was being taken (Shard::Checkpoint running).
// The big pushes' latency includes backpressure (waiting for their parameter's steps), which a
// checkpoint slows down by taking CPU and disk; a probe thread therefore also pushes, one at a
// time, into a 16-element AdamW parameter whose steps cost nothing: its latency is what a
// checkpoint makes a push wait for directly (the shard's locks, the log's syncs).
// Then Shutdown (deadline --shutdown_grace), timed. The same source builds against older commits (it uses only the
// Shard's public API; before the deadline argument of Shutdown and longest_checkpoint_cut,
// drop both: the cut was the whole checkpoint then), so blocking and non-blocking checkpoints
// compare on the same machine.
//
//   build/bench/checkpoint_stall_bench [--params=10] [--n=1024] [--clients=4] [--rate=10]
//       [--seconds=10]
//       [--pause=500ms] [--wal_sync=always] [--dir=DIR] [--shutdown_grace=inf]
//
// Output: a markdown table on stdout; progress on stderr.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/rng.h"
#include "common/wire.h"
#include "server/shard.h"

ABSL_FLAG(int, params, 10, "Dion parameters of n x n");
ABSL_FLAG(int, n, 1024, "Each parameter is n x n");
ABSL_FLAG(int, clients, 4, "Pushing threads");
ABSL_FLAG(double, rate, 10, "Pushes per second of each client (0: as fast as acks come)");
ABSL_FLAG(double, seconds, 10, "How long the clients push");
ABSL_FLAG(absl::Duration, pause, absl::Milliseconds(500), "Pause between checkpoints");
ABSL_FLAG(std::string, wal_sync, "always", "always, interval:<duration> or none");
ABSL_FLAG(std::string, dir, "", "Where to put checkpoints and log; empty: the temp directory");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::InfiniteDuration(),
          "Shard::Shutdown's deadline, from its call (dion-server's --shutdown_grace)");

namespace dion {
namespace {

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "checkpoint_stall_bench: %s\n", message.c_str());
  std::exit(1);
}

ModelTable Table() {
  v1::RegisterModelRequest request;
  request.set_model_name("checkpoint-stall-bench");
  for (int i = 0; i < absl::GetFlag(FLAGS_params); ++i) {
    v1::ParameterSpec* p = request.add_parameters();
    p->set_name(absl::StrCat("w", i));
    p->add_shape(absl::GetFlag(FLAGS_n));
    p->add_shape(absl::GetFlag(FLAGS_n));
    p->set_optimizer(v1::OPTIMIZER_KIND_DION);
    p->mutable_dion()->set_rank_fraction(0.0625);
    p->mutable_init()->set_kind(v1::INIT_KIND_KAIMING);
    p->set_seed(static_cast<uint64_t>(i + 1));
  }
  v1::ParameterSpec* probe = request.add_parameters();
  probe->set_name("probe");
  probe->add_shape(16);
  probe->set_optimizer(v1::OPTIMIZER_KIND_ADAMW);
  probe->mutable_init()->set_kind(v1::INIT_KIND_ZEROS);
  absl::StatusOr<ModelTable> table = ModelTableFromProto(request);
  if (!table.ok()) Die(table.status().ToString());
  return *table;
}

struct Sample {
  absl::Time start, end;
};

struct Interval {
  absl::Time start, end;
};

struct Summary {
  size_t count = 0;
  double p50_ms = 0, p99_ms = 0, max_ms = 0;
};

Summary Summarize(std::vector<double> ms) {
  Summary s;
  s.count = ms.size();
  if (ms.empty()) return s;
  std::sort(ms.begin(), ms.end());
  const auto at = [&](double q) { return ms[static_cast<size_t>(q * (ms.size() - 1))]; };
  s.p50_ms = at(0.5);
  s.p99_ms = at(0.99);
  s.max_ms = ms.back();
  return s;
}

void Probe(Shard& shard, absl::Time until, std::vector<Sample>& samples) {
  Matrix G(1, 16);
  for (int64_t j = 0; j < 16; ++j) G(0, j) = 0.01f * static_cast<float>(j - 8);
  for (uint64_t k = 0; absl::Now() < until; ++k) {
    Contribution c;
    c.worker_id = "probe";
    c.sequence = k;
    c.parameter = "probe";
    c.base_version = shard.Version(c.parameter).value_or(0);
    c.sample_count = 32;
    c.payload = G;
    const absl::Time start = absl::Now();
    absl::StatusOr<PushReply> reply = shard.Push(std::move(c));
    if (!reply.ok()) Die(reply.status().ToString());
    samples.push_back({start, absl::Now()});
    absl::SleepFor(absl::Milliseconds(1));
  }
}

void Client(Shard& shard, int id, absl::Time until, std::vector<Sample>& samples) {
  const int n = absl::GetFlag(FLAGS_n);
  const int r = std::max(1, n / 16);
  Rng rng(static_cast<uint64_t>(id + 11));
  LowRankFactors f{Matrix(n, r), Matrix(n, r)};
  rng.FillNormal(f.P, 1.0 / std::sqrt(static_cast<double>(r)));
  rng.FillNormal(f.R);
  const std::string worker = absl::StrCat("client", id);
  const double rate = absl::GetFlag(FLAGS_rate);
  const absl::Duration period = rate > 0 ? absl::Seconds(1 / rate) : absl::ZeroDuration();
  absl::Time next = absl::Now();
  for (uint64_t k = 0; absl::Now() < until; ++k) {
    next += period;
    Contribution c;
    c.worker_id = worker;
    c.sequence = k;
    c.parameter = absl::StrCat("w", (k + id) % absl::GetFlag(FLAGS_params));
    c.base_version = shard.Version(c.parameter).value_or(0);
    c.sample_count = 32;
    c.payload = f;
    const absl::Time start = absl::Now();
    absl::StatusOr<PushReply> reply = shard.Push(std::move(c));
    if (!reply.ok()) Die(reply.status().ToString());
    samples.push_back({start, absl::Now()});
    absl::SleepFor(next - absl::Now());
  }
}

int Main() {
  const std::string base = absl::GetFlag(FLAGS_dir).empty()
                               ? std::filesystem::temp_directory_path().string()
                               : absl::GetFlag(FLAGS_dir);
  const std::string root = absl::StrCat(base, "/checkpoint_stall_bench-", getpid());
  std::filesystem::remove_all(root);
  ShardOptions options;
  options.checkpoint_dir = root + "/checkpoints";
  options.checkpoint_interval = absl::ZeroDuration();
  options.wal_dir = root + "/checkpoints/wal";
  absl::StatusOr<LogSync> sync = ParseLogSync(absl::GetFlag(FLAGS_wal_sync));
  if (!sync.ok()) Die(sync.status().ToString());
  options.wal_sync = *sync;
  options.batcher.target_samples = 128;
  options.batcher.adaptive = false;
  options.batcher.staleness.max_staleness = int64_t{1} << 40;
  absl::StatusOr<std::unique_ptr<Shard>> created = Shard::Create(options);
  if (!created.ok()) Die(created.status().ToString());
  Shard& shard = **created;
  if (!shard.RegisterModel(Table()).ok()) Die("registration failed");
  const int clients = absl::GetFlag(FLAGS_clients);
  for (int i = 0; i < clients; ++i) {
    if (!shard.RegisterWorker(absl::StrCat("client", i)).ok()) Die("worker registration failed");
  }
  if (!shard.RegisterWorker("probe").ok()) Die("worker registration failed");

  const absl::Time until = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_seconds));
  std::vector<std::vector<Sample>> samples(clients);
  std::vector<Sample> probes;
  std::vector<std::thread> threads;
  threads.emplace_back([&] { Probe(shard, until, probes); });
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] { Client(shard, i, until, samples[i]); });
  }
  std::vector<Interval> checkpoints;
  absl::SleepFor(absl::GetFlag(FLAGS_pause));
  while (absl::Now() < until) {
    const absl::Time start = absl::Now();
    absl::StatusOr<std::string> path = shard.Checkpoint();
    if (!path.ok()) Die(path.status().ToString());
    checkpoints.push_back({start, absl::Now()});
    absl::SleepFor(absl::GetFlag(FLAGS_pause));
  }
  for (std::thread& t : threads) t.join();

  const auto split = [&](const std::vector<Sample>& all, std::vector<double>& during,
                         std::vector<double>& between) {
    for (const Sample& s : all) {
      const bool overlaps = std::any_of(checkpoints.begin(), checkpoints.end(),
                                        [&](const Interval& c) {
                                          return s.end >= c.start && s.start <= c.end;
                                        });
      (overlaps ? during : between).push_back(absl::ToDoubleMilliseconds(s.end - s.start));
    }
  };
  std::vector<double> during, between, probe_during, probe_between;
  for (const std::vector<Sample>& client : samples) split(client, during, between);
  split(probes, probe_during, probe_between);
  std::vector<double> checkpoint_ms;
  for (const Interval& c : checkpoints) checkpoint_ms.push_back(absl::ToDoubleMilliseconds(c.end - c.start));
  const absl::Duration longest_cut = shard.Status().longest_checkpoint_cut;
  const absl::Time shutdown_start = absl::Now();
  if (absl::Status s = shard.Shutdown(shutdown_start + absl::GetFlag(FLAGS_shutdown_grace));
      !s.ok()) {
    Die(s.ToString());
  }
  const double shutdown_ms = absl::ToDoubleMilliseconds(absl::Now() - shutdown_start);
  created->reset();
  std::filesystem::remove_all(root);

  const Summary c = Summarize(checkpoint_ms);
  std::printf("| pushes | n during checkpoints / between | during: p50 / p99 / max ms | between: "
              "p50 / p99 / max ms |\n|---|---|---|---|\n");
  const auto row = [](const char* name, const std::vector<double>& in,
                      const std::vector<double>& out) {
    const Summary d = Summarize(in), b = Summarize(out);
    std::printf("| %s | %zu / %zu | %.2f / %.2f / %.2f | %.2f / %.2f / %.2f |\n", name, d.count,
                b.count, d.p50_ms, d.p99_ms, d.max_ms, b.p50_ms, b.p99_ms, b.max_ms);
  };
  row("probe", probe_during, probe_between);
  row("big", during, between);
  std::printf("\ncheckpoints: %zu, median %.0f ms, max %.0f ms; longest cut %.3f ms; "
              "shutdown %.0f ms\n", c.count, c.p50_ms, c.max_ms,
              absl::ToDoubleMilliseconds(longest_cut), shutdown_ms);
  return 0;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dion::Main();
}
