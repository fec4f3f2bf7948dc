// The flag-parsing start of the binaries' mains (common/cli.h): exit statuses and messages.
#include "common/cli.h"

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "gtest/gtest.h"

ABSL_FLAG(int, cli_test_count, 1, "a flag of this test");

namespace dion {
namespace {

const CommandLineSpec kSpec = {"cli-test", "tests/cli_test.cc", "cli-test: a test program"};

void Parse(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  ParseCommandLineOrExit(static_cast<int>(argv.size()), argv.data(), kSpec);
}

TEST(ParseCommandLineOrExitTest, SetsTheFlags) {
  Parse({"cli-test", "--cli_test_count=7"});
  EXPECT_EQ(absl::GetFlag(FLAGS_cli_test_count), 7);
}

TEST(ParseCommandLineOrExitDeathTest, BadCommandLinesExitWithStatus2) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(Parse({"cli-test", "--no_such_flag=1"}), testing::ExitedWithCode(kBadFlagsExitCode),
              "no_such_flag(.|\n)*cli-test: bad flags \\(see above\\); `cli-test --help`");
  EXPECT_EXIT(Parse({"cli-test", "--cli_test_count=many"}),
              testing::ExitedWithCode(kBadFlagsExitCode), "many(.|\n)*cli-test: bad flags");
  EXPECT_EXIT(Parse({"cli-test", "--cli_test_count=2", "stray"}),
              testing::ExitedWithCode(kBadFlagsExitCode),
              "cli-test: unexpected argument 'stray' \\(all options are --flags\\)");
}

TEST(ParseCommandLineOrExitDeathTest, HelpExitsWithStatus0) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(Parse({"cli-test", "--help"}), testing::ExitedWithCode(0), "");
  EXPECT_EXIT(Parse({"cli-test", "--helpfull"}), testing::ExitedWithCode(0), "");
}

TEST(BadFlagsTest, PrintsTheProgramAndMessageAndReturns2) {
  testing::internal::CaptureStderr();
  EXPECT_EQ(BadFlags("cli-test", "--x=1: expected 2"), 2);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "cli-test: bad flags: --x=1: expected 2\n");
}

}  // namespace
}  // namespace dion
