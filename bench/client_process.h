// push_bench's client process (--client_process): the push clients of every run in a process
// of their own, forked before any gRPC object exists (gRPC does not survive a fork) and pinned
// to other CPUs than the shard's process, so that the shard's CPUs carry what a deployed shard
// carries: decryption, parsing and steps, not the clients' serialization and encryption.
//
// The two processes share one SharedControl in a MAP_SHARED anonymous mapping made before the
// fork. Per run the parent fills in the run's spec and asks kRun; the child makes the clients,
// registers them, starts their streams and reports kRunning; the parent publishes the shard's
// applied count and version (the child's BacklogGate and base_version read them) and reads the
// ack counters the child's clients increment; kStop makes the child end the streams and report
// kStopped (or kFailed with a message). Bench-only.
//
// Thread-safety: every field the two processes both touch is a lock-free std::atomic (address
// free, so valid across processes); the spec is written before the release store of `request`
// and read after its acquire load.
#ifndef DION_BENCH_CLIENT_PROCESS_H_
#define DION_BENCH_CLIENT_PROCESS_H_

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dion::bench {

// What one run asks of the client process.
struct ClientRunSpec {
  int port = 0;
  int clients = 0;
  bool echo = false;
  bool tls = false;          // TLS and an admin token
  int64_t max_backlog = 0;   // the BacklogGate's bound; 0: no gate (echo)
};

struct SharedControl {
  enum Request : int { kIdle = 0, kRun = 1, kStop = 2, kExit = 3 };
  enum State : int { kReady = 0, kRunning = 1, kStopped = 2, kFailed = 3 };

  std::atomic<int> request{kIdle};
  std::atomic<int> state{kReady};
  ClientRunSpec spec;  // the parent's, before request = kRun
  // The parent's, while a dion run lasts: the shard's contributions applied and the applied
  // version of the benchmark's parameter.
  std::atomic<int64_t> applied{0};
  std::atomic<int64_t> version{0};
  // The child's: acknowledgements and refusals of the current run, summed over its clients.
  std::atomic<int64_t> acks{0};
  std::atomic<int64_t> refused{0};
  std::atomic<bool> gate_reached{false};
  char message[1024] = {};  // the child's, with kFailed
};
static_assert(std::atomic<int64_t>::is_always_lock_free && std::atomic<int>::is_always_lock_free,
              "SharedControl needs address-free atomics");

// A SharedControl in a MAP_SHARED anonymous mapping (inherited by a forked child); never
// unmapped. Null when mmap fails.
inline SharedControl* NewSharedControl() {
  void* p = mmap(nullptr, sizeof(SharedControl), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : new (p) SharedControl();
}

// "0,2-3" -> {0, 2, 3}; false on a malformed list.
inline bool ParseCpuList(absl::string_view text, std::vector<int>* cpus) {
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    const size_t dash = part.find('-');
    int lo = 0, hi = 0;
    if (!absl::SimpleAtoi(part.substr(0, dash), &lo)) return false;
    hi = lo;
    if (dash != absl::string_view::npos && !absl::SimpleAtoi(part.substr(dash + 1), &hi)) {
      return false;
    }
    if (lo < 0 || hi < lo || hi >= CPU_SETSIZE) return false;
    for (int c = lo; c <= hi; ++c) cpus->push_back(c);
  }
  return !cpus->empty();
}

// The CPUs this process may run on, ascending.
inline std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

// Pins every thread of this process to `cpus` (threads made later inherit it); false on error.
inline bool PinProcess(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(c, &set);
  bool ok = true;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    int tid = 0;
    if (!absl::SimpleAtoi(task.path().filename().string(), &tid)) continue;
    ok = sched_setaffinity(tid, sizeof(set), &set) == 0 && ok;
  }
  return ok;
}

// CPU seconds used so far by all threads of process `pid` (0: this one); NaN on error.
inline double ProcessCpuSeconds(pid_t pid) {
  clockid_t clock = CLOCK_PROCESS_CPUTIME_ID;
  if (pid != 0 && clock_getcpuclockid(pid, &clock) != 0) return NAN;
  timespec ts;
  if (clock_gettime(clock, &ts) != 0) return NAN;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Polls `done` every 0.2 ms until it holds, `child` exited (false), or `timeout` passed (false).
template <typename Done>
bool AwaitChild(pid_t child, absl::Duration timeout, Done done) {
  const absl::Time limit = absl::Now() + timeout;
  while (!done()) {
    if (child > 0 && waitpid(child, nullptr, WNOHANG) == child) return false;
    if (absl::Now() > limit) return false;
    absl::SleepFor(absl::Microseconds(200));
  }
  return true;
}

// In the child, right after fork: dies with the parent (also if the parent already exited).
inline void DieWithParent(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1);
}

}  // namespace dion::bench

#endif  // DION_BENCH_CLIENT_PROCESS_H_
