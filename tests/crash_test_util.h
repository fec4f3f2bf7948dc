// Helpers of the crash tests (shard_wal_test, shard_checkpoint_test): whole files as bytes, and
// a body run in a forked child that dies without any cleanup, as a kill -9 would leave it.
#ifndef DION_TESTS_CRASH_TEST_UTIL_H_
#define DION_TESTS_CRASH_TEST_UTIL_H_

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>

namespace dion::testing {

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs `body` in a forked child that ends with _exit, skipping every destructor and shutdown:
// what it leaves on disk is what a kill -9 would. Returns the child's exit status (0 when
// body() returned true, 3 when false, 128 + the signal when one ended it).
template <typename Body>
int RunAndDie(Body body) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body() ? 0 : 3);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace dion::testing

#endif  // DION_TESTS_CRASH_TEST_UTIL_H_
