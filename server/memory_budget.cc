#include "server/memory_budget.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace dion {
namespace {

// A cgroup limit at or above this (4 EiB) is "no limit", whatever the physical memory.
constexpr int64_t kNoLimitAbove = int64_t{1} << 62;

// The limit a cgroup file states, or nullopt for "max", a missing file, or text that is not a
// positive number.
std::optional<int64_t> ReadCgroupLimit(const std::string& path) {
  std::ifstream file(path);
  if (!file) return std::nullopt;
  std::stringstream text;
  text << file.rdbuf();
  const std::string value(absl::StripAsciiWhitespace(text.str()));
  int64_t bytes = 0;
  if (!absl::SimpleAtoi(value, &bytes) || bytes <= 0) return std::nullopt;
  return bytes;
}

}  // namespace

int64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<int64_t>(pages) * page_size;
}

MemoryLimit DetectMemoryLimit(const MemoryLimitSources& sources) {
  const MemoryLimit physical{std::max<int64_t>(sources.physical_bytes, 0), "physical memory"};
  const auto below_physical = [&](int64_t bytes) {
    // cgroup v1 states "no limit" as a huge page-aligned number (2^63 - 4096).
    if (bytes >= kNoLimitAbove) return false;
    return physical.bytes <= 0 || bytes < physical.bytes;
  };
  if (std::optional<int64_t> v2 = ReadCgroupLimit(sources.cgroup_v2_memory_max)) {
    if (below_physical(*v2)) return {*v2, "cgroup v2 memory.max"};
    return physical;
  }
  if (std::optional<int64_t> v1 = ReadCgroupLimit(sources.cgroup_v1_limit_in_bytes)) {
    if (below_physical(*v1)) return {*v1, "cgroup v1 memory.limit_in_bytes"};
  }
  return physical;
}

int64_t DefaultMaxStateBytes(const MemoryLimit& limit) {
  if (limit.bytes <= 0) return 0;
  return std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(limit.bytes) *
                                                   kStateFractionOfMemory));
}

StateBudget ResolveStateBudget(int64_t flag_value, const MemoryLimitSources& sources) {
  if (flag_value != 0) {
    return {flag_value, absl::StrCat("state budget ", flag_value, " bytes (--max_state_bytes)")};
  }
  const MemoryLimit limit = DetectMemoryLimit(sources);
  const int64_t bytes = DefaultMaxStateBytes(limit);
  if (bytes == 0) {
    return {kNoStateBudget,
            "no state budget: the memory limit is unknown; set --max_state_bytes"};
  }
  return {bytes, absl::StrCat("state budget ", bytes, " bytes (", kStateFractionOfMemory,
                              " of ", limit.bytes, " bytes of ", limit.source, ")")};
}

}  // namespace dion
