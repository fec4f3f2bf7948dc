// The workers' common start in `dion local` (worker/local/start_barrier.h): the start file
// appears when the last worker is ready, not before.
#include "worker/local/start_barrier.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace dion {
namespace {

class StartBarrierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "start_barrier_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  bool Exists(const std::string& path) const { return access(path.c_str(), F_OK) == 0; }

  std::string dir_;
};

TEST_F(StartBarrierTest, CreatesTheFileWhenTheLastWorkerIsReady) {
  StartBarrier barrier(dir_ + "/.start", 3);
  barrier.Ready(2);
  barrier.Ready(0);
  barrier.Ready(0);  // twice counts once
  EXPECT_FALSE(Exists(barrier.path()));
  EXPECT_TRUE(barrier.ready(0));
  EXPECT_FALSE(barrier.ready(1));
  barrier.Ready(1);
  EXPECT_TRUE(Exists(barrier.path()));
  EXPECT_TRUE(barrier.error().empty()) << barrier.error();
}

TEST_F(StartBarrierTest, IgnoresWorkersOutsideTheRange) {
  StartBarrier barrier(dir_ + "/.start", 1);
  barrier.Ready(-1);
  barrier.Ready(1);
  EXPECT_FALSE(Exists(barrier.path()));
  EXPECT_FALSE(barrier.ready(1));
  barrier.Ready(0);
  EXPECT_TRUE(Exists(barrier.path()));
}

TEST_F(StartBarrierTest, ResetRemovesAStartFileOfAnEarlierRun) {
  StartBarrier barrier(dir_ + "/.start", 1);
  std::ofstream(barrier.path()) << "";
  ASSERT_TRUE(Exists(barrier.path()));
  barrier.Reset();
  EXPECT_FALSE(Exists(barrier.path()));
}

TEST_F(StartBarrierTest, SaysWhyTheFileCouldNotBeCreated) {
  StartBarrier barrier(dir_ + "/no-such-directory/.start", 1);
  barrier.Ready(0);
  EXPECT_NE(barrier.error().find("no-such-directory"), std::string::npos) << barrier.error();
}

}  // namespace
}  // namespace dion
