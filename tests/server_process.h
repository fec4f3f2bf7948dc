// A dion-server (or other) child process for tests that spawn the real binary, with its
// stderr on a pipe. Thread-safety: one thread at a time per object.
#ifndef DION_TESTS_SERVER_PROCESS_H_
#define DION_TESTS_SERVER_PROCESS_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"

extern char** environ;

namespace dion::testing {

// One dion-server child process with its stderr on a pipe. The destructor kills (SIGKILL) and
// reaps it if it is still running, so a failing test leaves nothing behind.
class ServerProcess {
 public:
  ServerProcess(const std::string& binary, const std::vector<std::string>& flags) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
    std::vector<std::string> args = {binary};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    stderr_ = fds[0];
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exit_status_.has_value()) {
      kill(pid_, SIGKILL);
      int status;
      waitpid(pid_, &status, 0);
    }
    if (stderr_ >= 0) close(stderr_);
  }

  bool started() const { return pid_ > 0; }
  const std::string& log() const { return log_; }

  // Reads stderr until the "serving gRPC on <host:port>," line and returns host:port, or "" if
  // it does not come within `timeout` (or the process ends).
  std::string WaitForAddress(absl::Duration timeout) {
    const std::string kMarker = "serving gRPC on ";
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      const size_t at = log_.find(kMarker);
      if (at != std::string::npos) {
        const size_t end = log_.find(',', at);
        if (end != std::string::npos) return log_.substr(at + kMarker.size(), end - at - kMarker.size());
      }
      if (!ReadSome(deadline)) break;
    }
    return "";
  }

  void Signal(int signal) { kill(pid_, signal); }
  pid_t pid() const { return pid_; }

  // The exit code once the process exits within `timeout`; nullopt if it does not (or dies of
  // a signal). Keeps draining stderr meanwhile so the child never blocks on a full pipe.
  std::optional<int> WaitForExit(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      int status = 0;
      const pid_t done = waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        exit_status_ = status;
        while (ReadSome(absl::Now() + absl::Milliseconds(100))) {
        }
        if (!WIFEXITED(status)) return std::nullopt;
        return WEXITSTATUS(status);
      }
      ReadSome(absl::Now() + absl::Milliseconds(10));
    }
    return std::nullopt;
  }

 private:
  // Appends what stderr has (waiting until `deadline` for something); false at EOF or error.
  bool ReadSome(absl::Time deadline) {
    pollfd p{stderr_, POLLIN, 0};
    const int ms = static_cast<int>(
        std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    if (poll(&p, 1, ms) <= 0) return true;  // nothing yet
    char buffer[4096];
    const ssize_t n = read(stderr_, buffer, sizeof(buffer));
    if (n <= 0) return false;
    log_.append(buffer, static_cast<size_t>(n));
    return true;
  }

  pid_t pid_ = -1;
  int stderr_ = -1;
  std::string log_;
  std::optional<int> exit_status_;
};

}  // namespace dion::testing

#endif  // DION_TESTS_SERVER_PROCESS_H_
