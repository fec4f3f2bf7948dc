// ChildProcess (worker/local/process.h): the environment a child is started with.
#include "worker/local/process.h"

#include <stdlib.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace dion {
namespace {

// Runs /bin/sh -c `script` with `env` and returns the lines it printed.
std::vector<std::string> RunShell(const std::string& script, std::vector<std::string> env) {
  ChildSpec spec{"sh", "/bin/sh", {"-c", script}, ::testing::TempDir() + "/child_process_test.log"};
  spec.env = std::move(env);
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Spawn(spec);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return {};
  std::vector<std::string> lines;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (((*child)->running() || (*child)->output_fd() >= 0) && absl::Now() < deadline) {
    PumpOutput({child->get()}, absl::Milliseconds(100),
               [&](ChildProcess&, const std::string& line) { lines.push_back(line); });
  }
  EXPECT_TRUE((*child)->TryWait().has_value() && (*child)->TryWait()->ok());
  return lines;
}

TEST(ChildProcessTest, SetsItsEnvironmentOnTopOfTheSupervisors) {
  ASSERT_EQ(setenv("DION_CHILD_TEST_KEPT", "kept", 1), 0);
  ASSERT_EQ(setenv("DION_CHILD_TEST_REPLACED", "old", 1), 0);
  const std::string script =
      "echo \"$DION_CHILD_TEST_KEPT $DION_CHILD_TEST_REPLACED $DION_CHILD_TEST_NEW\"; "
      "env | grep -c '^DION_CHILD_TEST_REPLACED='";
  EXPECT_EQ(RunShell(script, {"DION_CHILD_TEST_REPLACED=new", "DION_CHILD_TEST_NEW=a=b"}),
            (std::vector<std::string>{"kept new a=b", "1"}));
  // Without entries the child sees the supervisor's environment as it is.
  EXPECT_EQ(RunShell(script, {}), (std::vector<std::string>{"kept old ", "1"}));
}

}  // namespace
}  // namespace dion
