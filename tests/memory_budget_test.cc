// DetectMemoryLimit and DefaultMaxStateBytes on fake cgroup files.
#include "server/memory_budget.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace dion {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;
constexpr int64_t kPhysical = 64 * kGiB;

class MemoryBudgetTest : public ::testing::Test {
 protected:
  // Sources whose files are absent until Write* creates them.
  MemoryBudgetTest() {
    const std::string dir = ::testing::TempDir();
    const std::string test =
        ::testing::UnitTest::GetInstance()->current_test_info()->name();
    sources_.cgroup_v2_memory_max = dir + "/" + test + ".memory.max";
    sources_.cgroup_v1_limit_in_bytes = dir + "/" + test + ".memory.limit_in_bytes";
    sources_.physical_bytes = kPhysical;
    std::remove(sources_.cgroup_v2_memory_max.c_str());
    std::remove(sources_.cgroup_v1_limit_in_bytes.c_str());
  }
  void WriteV2(const std::string& text) { Write(sources_.cgroup_v2_memory_max, text); }
  void WriteV1(const std::string& text) { Write(sources_.cgroup_v1_limit_in_bytes, text); }
  static void Write(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
  }

  MemoryLimitSources sources_;
};

TEST_F(MemoryBudgetTest, UsesTheCgroupV2Limit) {
  WriteV2("3221225472\n");  // 3 GiB, as Kubernetes writes a 3Gi limit
  const MemoryLimit limit = DetectMemoryLimit(sources_);
  EXPECT_EQ(limit.bytes, 3 * kGiB);
  EXPECT_EQ(limit.source, "cgroup v2 memory.max");
  EXPECT_EQ(DefaultMaxStateBytes(limit), 3 * kGiB / 2);
}

TEST_F(MemoryBudgetTest, CgroupV2MaxMeansPhysicalMemory) {
  WriteV2("max\n");
  const MemoryLimit limit = DetectMemoryLimit(sources_);
  EXPECT_EQ(limit.bytes, kPhysical);
  EXPECT_EQ(limit.source, "physical memory");
  EXPECT_EQ(DefaultMaxStateBytes(limit), 32 * kGiB);
}

TEST_F(MemoryBudgetTest, UsesTheCgroupV1LimitWithoutV2) {
  WriteV1("2147483648\n");
  const MemoryLimit limit = DetectMemoryLimit(sources_);
  EXPECT_EQ(limit.bytes, 2 * kGiB);
  EXPECT_EQ(limit.source, "cgroup v1 memory.limit_in_bytes");
}

TEST_F(MemoryBudgetTest, CgroupV1UnlimitedMeansPhysicalMemory) {
  WriteV1("9223372036854771712\n");  // what v1 reports without a limit
  EXPECT_EQ(DetectMemoryLimit(sources_).bytes, kPhysical);
  sources_.physical_bytes = 0;  // even when physical memory is unknown
  EXPECT_EQ(DetectMemoryLimit(sources_).bytes, 0);
}

TEST_F(MemoryBudgetTest, ALimitAbovePhysicalMemoryIsNoLimit) {
  WriteV2("137438953472\n");  // 128 GiB on a 64 GiB machine
  const MemoryLimit limit = DetectMemoryLimit(sources_);
  EXPECT_EQ(limit.bytes, kPhysical);
  EXPECT_EQ(limit.source, "physical memory");
}

TEST_F(MemoryBudgetTest, IgnoresTextThatIsNotAPositiveNumber) {
  WriteV2("lots\n");
  WriteV1("-1\n");
  EXPECT_EQ(DetectMemoryLimit(sources_).bytes, kPhysical);
  WriteV2("0\n");
  EXPECT_EQ(DetectMemoryLimit(sources_).bytes, kPhysical);
}

TEST_F(MemoryBudgetTest, NoFilesMeansPhysicalMemory) {
  EXPECT_EQ(DetectMemoryLimit(sources_).bytes, kPhysical);
  sources_.physical_bytes = 0;
  const MemoryLimit unknown = DetectMemoryLimit(sources_);
  EXPECT_EQ(unknown.bytes, 0);
  EXPECT_EQ(DefaultMaxStateBytes(unknown), 0);
}

TEST_F(MemoryBudgetTest, AGivenBudgetIsKeptAndZeroMeansTheDefault) {
  WriteV2("4294967296\n");
  EXPECT_EQ(ResolveStateBudget(12345, sources_).bytes, 12345);
  const StateBudget derived = ResolveStateBudget(0, sources_);
  EXPECT_EQ(derived.bytes, 2 * kGiB);
  EXPECT_NE(derived.description.find("cgroup v2 memory.max"), std::string::npos)
      << derived.description;
  EXPECT_EQ(ResolveStateBudget(-1, sources_).bytes, -1);  // for validation to refuse
}

TEST_F(MemoryBudgetTest, AnUnknownLimitMeansNoBudgetAndSaysSo) {
  sources_.physical_bytes = 0;
  const StateBudget none = ResolveStateBudget(0, sources_);
  EXPECT_EQ(none.bytes, kNoStateBudget);
  EXPECT_NE(none.description.find("--max_state_bytes"), std::string::npos) << none.description;
}

TEST(PhysicalMemoryBytesTest, IsPositiveOnThisMachine) { EXPECT_GT(PhysicalMemoryBytes(), 0); }

}  // namespace
}  // namespace dion
