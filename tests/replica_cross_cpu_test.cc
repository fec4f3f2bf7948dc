// A replica follows a shard that runs another OpenBLAS kernel (another CPU model, as far as
// OpenBLAS can tell): the shard side and the replica side of replica_cross_cpu_probe run as
// separate processes with different OPENBLAS_CORETYPE values, and every low-rank version must
// apply with a matching checksum, with no full value after the first.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

#ifndef DION_PROBE_BINARY
#error "DION_PROBE_BINARY must name the built replica_cross_cpu_probe executable"
#endif

namespace {

constexpr int kVersions = 200;
constexpr int kParameters = 2;  // the probe's "tall" and "wide"

// Runs the probe with OPENBLAS_CORETYPE=core_type; returns its stdout (empty on failure).
std::string RunProbe(const std::string& core_type, const std::string& args) {
  const std::string command =
      absl::StrCat("OPENBLAS_CORETYPE=", core_type, " '", DION_PROBE_BINARY, "' ", args);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  std::string out;
  char buffer[256];
  while (fgets(buffer, sizeof buffer, pipe) != nullptr) out += buffer;
  return pclose(pipe) == 0 ? out : "";
}

// The value after "key=" in the probe's output.
std::string Field(const std::string& out, const std::string& key) {
  for (absl::string_view token : absl::StrSplit(out, absl::ByAnyChar(" \n"))) {
    if (absl::StartsWith(token, key + "=")) return std::string(token.substr(key.size() + 1));
  }
  return "";
}

void ExpectReplicaFollows(const std::string& shard_core, const std::string& replica_core) {
  SCOPED_TRACE(absl::StrCat("shard ", shard_core, ", replica ", replica_core));
  const std::string stream =
      absl::StrCat(::testing::TempDir(), "/replica_cross_cpu_", shard_core, ".bin");
  const std::string shard = RunProbe(shard_core, absl::StrCat("shard '", stream, "' ", kVersions));
  ASSERT_FALSE(shard.empty()) << "the shard side failed";
  const std::string replica = RunProbe(replica_core, absl::StrCat("replica '", stream, "'"));
  std::remove(stream.c_str());
  ASSERT_FALSE(replica.empty()) << "the replica side failed";
  if (Field(shard, "sgemm") == Field(replica, "sgemm")) {
    GTEST_SKIP() << "OpenBLAS computes the same sgemm bits under " << shard_core << " and "
                 << replica_core << " (a build without DYNAMIC_ARCH ignores OPENBLAS_CORETYPE)";
  }
  EXPECT_EQ(Field(replica, "applied"), std::to_string(kVersions * kParameters)) << replica;
  EXPECT_EQ(Field(replica, "full"), std::to_string(kParameters)) << "only the initial values";
  EXPECT_EQ(Field(replica, "mismatched"), "0");
  EXPECT_EQ(Field(replica, "other"), "0");
}

TEST(ReplicaCrossCpu, FollowsASandyBridgeShardOnHaswellFor200Versions) {
  ExpectReplicaFollows("SandyBridge", "Haswell");
}

TEST(ReplicaCrossCpu, FollowsAHaswellShardOnPrescottFor200Versions) {
  ExpectReplicaFollows("Haswell", "Prescott");
}

}  // namespace
