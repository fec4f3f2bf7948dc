// How much memory a shard may give to parameter state (X and optimizer state): the default of
// dion-server's --max_state_bytes (docs/server.md, "Memory").
//
// The memory limit is the container's cgroup limit when there is one (v2 memory.max, else v1
// memory.limit_in_bytes; "max", a missing or unreadable file, or a value at or above physical
// memory means none), else physical memory. The budget is kStateFractionOfMemory of it: the
// rest is for batches waiting for a step, step temporaries, broadcasts, Pull copies of one
// parameter at a time, gRPC, and while a checkpoint is written the copies of the parameters
// that step meanwhile (up to the whole state; server/snapshot_slot.h).
//
// Thread-safety: free functions without shared state.
#ifndef DION_SERVER_MEMORY_BUDGET_H_
#define DION_SERVER_MEMORY_BUDGET_H_

#include <cstdint>
#include <string>

#include "server/parameter_store.h"

namespace dion {

// The fraction of the memory limit the default state budget takes.
inline constexpr double kStateFractionOfMemory = 0.5;

// Where the limit is read from; tests point these at files of their own.
struct MemoryLimitSources {
  std::string cgroup_v2_memory_max = "/sys/fs/cgroup/memory.max";
  std::string cgroup_v1_limit_in_bytes = "/sys/fs/cgroup/memory/memory.limit_in_bytes";
  int64_t physical_bytes = 0;  // physical memory; PhysicalMemoryBytes() in production
};

struct MemoryLimit {
  int64_t bytes = 0;
  // "cgroup v2 memory.max", "cgroup v1 memory.limit_in_bytes" or "physical memory"
  std::string source;
};

// Physical memory of this machine (sysconf), 0 when unknown.
int64_t PhysicalMemoryBytes();

// The limit by the rule of the file comment. With no cgroup limit and physical_bytes <= 0 the
// result has bytes 0 (unknown).
MemoryLimit DetectMemoryLimit(const MemoryLimitSources& sources);

// kStateFractionOfMemory of `limit`, at least 1 byte; 0 when the limit is unknown.
int64_t DefaultMaxStateBytes(const MemoryLimit& limit);

// The budget dion-server runs with and a line for its log saying where it came from.
struct StateBudget {
  int64_t bytes = 0;
  std::string description;
};

// --max_state_bytes: a positive value as given; 0 the default of `sources`' limit, or no budget
// (kNoStateBudget) when that is unknown; a negative value as given, for validation to refuse.
StateBudget ResolveStateBudget(int64_t flag_value, const MemoryLimitSources& sources);

}  // namespace dion

#endif  // DION_SERVER_MEMORY_BUDGET_H_
