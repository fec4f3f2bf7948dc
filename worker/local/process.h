// Child processes of the `dion local` supervisor (worker/local/local_run.h): spawn with
// posix_spawn, capture stdout and stderr, signal, reap.
//
// A child's stdout and stderr both go into one pipe. The supervisor reads it (PumpOutput), writes
// every byte to the child's log file and hands each complete line to a callback, so the log
// holds everything the child printed and progress lines are parsed as they arrive. The last
// few lines are kept for crash reports.
//
// Children get an empty signal mask, default dispositions for SIGINT, SIGTERM, SIGPIPE and
// SIGCHLD (whatever the supervisor blocks or ignores), /dev/null as stdin, and a process group
// of their own: a Ctrl-C in the terminal reaches only the supervisor, which then stops the
// children in order (workers before shards). The flip side: a supervisor killed with SIGKILL
// leaves its children running.
//
// Thread-safety: none; one thread (the supervisor's) owns every ChildProcess.
#ifndef DION_WORKER_PROCESS_H_
#define DION_WORKER_PROCESS_H_

#include <sys/types.h>

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dion {

// How a child ended (from waitpid).
struct ExitStatus {
  bool exited = false;  // WIFEXITED: `code` is valid
  int code = 0;
  int signal = 0;  // WIFSIGNALED: the signal that killed it

  bool ok() const { return exited && code == 0; }
  // "exit status 1", "killed by signal 9 (Killed)".
  std::string ToString() const;
};

struct ChildSpec {
  std::string name;               // "shard-0", "worker-3": used in reports
  std::string binary;             // path of the executable (not searched in PATH)
  std::vector<std::string> args;  // argv[1..]; argv[0] is `binary`
  std::string log_path;           // created or truncated; everything the child prints
  size_t tail_lines = 20;         // lines kept for Tail()
  // "NAME=VALUE" entries set in the child's environment on top of the supervisor's (an entry
  // replaces the supervisor's variable of that name).
  std::vector<std::string> env;
};

class ChildProcess {
 public:
  // Starts the child. Errors: the log file cannot be created, or posix_spawn fails (a binary
  // that exists but cannot run shows up later as exit status 127 instead).
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(const ChildSpec& spec);
  // A child still running is killed (SIGKILL) and reaped.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  const std::string& name() const { return spec_.name; }
  const std::string& log_path() const { return spec_.log_path; }
  pid_t pid() const { return pid_; }
  // Read end of the output pipe (non-blocking); -1 once it reached end of file.
  int output_fd() const { return fd_; }

  // Reads everything the pipe holds now without blocking, appends it to the log and calls
  // on_line for each complete line (without the newline). At end of file a last unterminated
  // line is delivered too and the pipe is closed.
  void ReadAvailable(const std::function<void(const std::string&)>& on_line);

  // The last `tail_lines` lines the child printed, oldest first.
  std::vector<std::string> Tail() const;

  // Sends `signal` unless the child has already been reaped (then it is a no-op).
  void Signal(int signal);

  // Reaps the child if it has exited (non-blocking). Returns its status once it has exited,
  // and the same status on every later call.
  std::optional<ExitStatus> TryWait();
  bool running() { return !TryWait().has_value(); }

 private:
  ChildProcess(ChildSpec spec, pid_t pid, int fd, int log_fd);
  void KeepLine(const std::string& line);

  ChildSpec spec_;
  pid_t pid_;
  int fd_;  // read end of the pipe, -1 after EOF
  int log_fd_;
  std::string partial_;  // bytes after the last newline
  std::deque<std::string> tail_;
  std::optional<ExitStatus> status_;
};

using LineHandler = std::function<void(ChildProcess& child, const std::string& line)>;

// Waits up to `timeout` until some child has output (or `wake_fd`, if >= 0, is readable), then
// reads what every child has and hands the lines to on_line. Returns true when wake_fd is
// readable (the caller reads it). Children whose pipe is closed are skipped.
bool PumpOutput(const std::vector<ChildProcess*>& children, absl::Duration timeout,
                const LineHandler& on_line, int wake_fd = -1);

// Sends `signal` to every running child, then keeps reading their output until all have
// exited or `grace` has passed; the ones still running then get SIGKILL and are reaped. When
// wake_fd (>= 0) becomes readable meanwhile (a second Ctrl-C), escalates to SIGKILL at once;
// the wake_fd is left for the caller to read. Bounded: returns within grace + ~1 s.
void StopChildren(const std::vector<ChildProcess*>& children, int signal, absl::Duration grace,
                  const LineHandler& on_line, int wake_fd = -1);

}  // namespace dion

#endif  // DION_WORKER_PROCESS_H_
