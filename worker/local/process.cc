#include "worker/local/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

extern char** environ;

namespace dion {
namespace {

absl::Status ErrnoError(absl::string_view what, int error) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(error)));
}

// Writes all of `data` (the log is a regular file: short writes only on a full disk, and then
// the log is incomplete but the run goes on).
void WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data += n;
    size -= static_cast<size_t>(n);
  }
}

// The supervisor's environment with `extra` ("NAME=VALUE") added, replacing variables of the
// same names; null-terminated, pointing into environ and `extra`.
std::vector<char*> ChildEnvironment(const std::vector<std::string>& extra) {
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    const size_t equals = entry.find('=');
    const absl::string_view prefix = entry.substr(0, equals + 1);  // "NAME="
    const bool replaced =
        equals != absl::string_view::npos &&
        std::any_of(extra.begin(), extra.end(),
                    [&](const std::string& s) { return absl::StartsWith(s, prefix); });
    if (!replaced) envp.push_back(*e);
  }
  for (const std::string& entry : extra) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);
  return envp;
}

}  // namespace

std::string ExitStatus::ToString() const {
  if (exited) return absl::StrCat("exit status ", code);
  return absl::StrCat("killed by signal ", signal, " (", strsignal(signal), ")");
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const ChildSpec& spec) {
  const int log_fd = open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return ErrnoError(absl::StrCat("cannot create log ", spec.log_path), errno);
  // Both ends close on exec: the child sees only its dup2'ed stdout / stderr, so no child holds
  // another child's pipe open (which would hide that child's end of file).
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    const int error = errno;
    close(log_fd);
    return ErrnoError("pipe2", error);
  }

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);

  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t empty;
  sigemptyset(&empty);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD}) sigaddset(&defaults, s);
  posix_spawnattr_setsigmask(&attributes, &empty);
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  posix_spawnattr_setpgroup(&attributes, 0);  // a group of its own: no terminal Ctrl-C
  posix_spawnattr_setflags(&attributes,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(spec.binary.c_str()));
  for (const std::string& arg : spec.args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);

  std::vector<char*> envp = ChildEnvironment(spec.env);
  pid_t pid = 0;
  const int error =
      posix_spawn(&pid, spec.binary.c_str(), &actions, &attributes, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  close(pipe_fds[1]);
  if (error != 0) {
    close(pipe_fds[0]);
    close(log_fd);
    return ErrnoError(absl::StrCat("cannot start ", spec.name, " (", spec.binary, ")"), error);
  }
  fcntl(pipe_fds[0], F_SETFL, fcntl(pipe_fds[0], F_GETFL) | O_NONBLOCK);
  return std::unique_ptr<ChildProcess>(new ChildProcess(spec, pid, pipe_fds[0], log_fd));
}

ChildProcess::ChildProcess(ChildSpec spec, pid_t pid, int fd, int log_fd)
    : spec_(std::move(spec)), pid_(pid), fd_(fd), log_fd_(log_fd) {}

ChildProcess::~ChildProcess() {
  if (!TryWait().has_value()) {
    kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  if (fd_ >= 0) close(fd_);
  close(log_fd_);
}

void ChildProcess::KeepLine(const std::string& line) {
  tail_.push_back(line);
  while (tail_.size() > spec_.tail_lines) tail_.pop_front();
}

void ChildProcess::ReadAvailable(const std::function<void(const std::string&)>& on_line) {
  if (fd_ < 0) return;
  char buffer[16384];
  for (;;) {
    const ssize_t n = read(fd_, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;  // EAGAIN: nothing more for now
    if (n == 0) {       // end of file: the child (and anything it forked) closed its output
      if (!partial_.empty()) {
        std::string line = std::move(partial_);
        partial_.clear();
        KeepLine(line);
        if (on_line) on_line(line);
      }
      close(fd_);
      fd_ = -1;
      return;
    }
    WriteAll(log_fd_, buffer, static_cast<size_t>(n));
    partial_.append(buffer, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t newline; (newline = partial_.find('\n', start)) != std::string::npos;
         start = newline + 1) {
      std::string line = partial_.substr(start, newline - start);
      KeepLine(line);
      if (on_line) on_line(line);
    }
    partial_.erase(0, start);
  }
}

std::vector<std::string> ChildProcess::Tail() const {
  std::vector<std::string> lines(tail_.begin(), tail_.end());
  if (!partial_.empty()) lines.push_back(partial_);
  return lines;
}

void ChildProcess::Signal(int signal) {
  if (!TryWait().has_value()) kill(pid_, signal);
}

std::optional<ExitStatus> ChildProcess::TryWait() {
  if (status_.has_value()) return status_;
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r != pid_) return std::nullopt;
  ExitStatus s;
  if (WIFEXITED(status)) {
    s.exited = true;
    s.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    s.signal = WTERMSIG(status);
  }
  status_ = s;
  return status_;
}

bool PumpOutput(const std::vector<ChildProcess*>& children, absl::Duration timeout,
                const LineHandler& on_line, int wake_fd) {
  std::vector<pollfd> fds;
  std::vector<ChildProcess*> owners;
  for (ChildProcess* child : children) {
    if (child->output_fd() < 0) continue;
    fds.push_back({child->output_fd(), POLLIN, 0});
    owners.push_back(child);
  }
  if (wake_fd >= 0) fds.push_back({wake_fd, POLLIN, 0});
  const int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  if (fds.empty()) {
    absl::SleepFor(timeout);
    return false;
  }
  if (poll(fds.data(), fds.size(), timeout_ms) <= 0) return false;
  for (size_t i = 0; i < owners.size(); ++i) {
    if (fds[i].revents == 0) continue;
    ChildProcess* child = owners[i];
    child->ReadAvailable([&](const std::string& line) { on_line(*child, line); });
  }
  return wake_fd >= 0 && (fds.back().revents & POLLIN) != 0;
}

void StopChildren(const std::vector<ChildProcess*>& children, int signal, absl::Duration grace,
                  const LineHandler& on_line, int wake_fd) {
  for (ChildProcess* child : children) child->Signal(signal);
  const absl::Time deadline = absl::Now() + grace;
  const auto all_exited = [&] {
    bool all = true;
    for (ChildProcess* child : children) all = !child->running() && all;
    return all;
  };
  while (!all_exited() && absl::Now() < deadline) {
    if (PumpOutput(children, absl::Milliseconds(50), on_line, wake_fd)) break;  // hurry up
  }
  for (ChildProcess* child : children) child->Signal(SIGKILL);
  // SIGKILL cannot be ignored; the loop only waits for the kernel to finish the exits.
  const absl::Time kill_deadline = absl::Now() + absl::Seconds(2);
  while (!all_exited() && absl::Now() < kill_deadline) {
    PumpOutput(children, absl::Milliseconds(20), on_line);
  }
  // What the children printed last (the pipes close at their exit).
  for (ChildProcess* child : children) {
    child->ReadAvailable([&](const std::string& line) { on_line(*child, line); });
  }
}

}  // namespace dion
