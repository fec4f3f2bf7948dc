// Client::Parameter, the per-parameter state of a Client, shared by the files that implement
// Client (client.cc: connection and the push path; client_replica.cc: the replicas and the
// waits on them). Private to worker/: not part of the client library's interface.
#ifndef DION_WORKER_CLIENT_PARAMETER_H_
#define DION_WORKER_CLIENT_PARAMETER_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "common/layout.h"
#include "common/mutex.h"
#include "common/param_spec.h"
#include "worker/client/client.h"
#include "worker/client/gradient_accumulator.h"
#include "worker/client/replica.h"
#include "worker/client/split_push.h"

namespace dion {

struct Client::Parameter {
  Parameter(const ParamSpec& spec, int index, const Placement& placement, int rank,
            uint64_t seed, uint64_t first_sequence, bool track_last_step)
      : index(index),
        shard(placement.shard),
        owners(placement.split),
        replica(spec, track_last_step, BlocksOf(placement)),
        accumulator(spec, rank, seed, first_sequence) {
    if (placement.is_split()) split.emplace(placement.split);
  }
  static std::vector<RowBlock> BlocksOf(const Placement& placement) {
    std::vector<RowBlock> blocks;
    for (const RowOwner& owner : placement.split) blocks.push_back(owner.rows);
    return blocks;
  }
  bool is_split() const { return !owners.empty(); }
  // Whether `s` holds the whole parameter or a block of it.
  bool HeldBy(int s) const { return BlockOf(s) != nullptr; }
  // The rows `s` holds: {0, 0} for the whole parameter's owner; null when it holds nothing.
  const RowBlock* BlockOf(int s) const {
    static constexpr RowBlock kWhole{};
    if (!is_split()) return s == shard ? &kWhole : nullptr;
    for (const RowOwner& owner : owners) {
      if (owner.shard == s) return &owner.rows;
    }
    return nullptr;
  }

  const int index;
  const int shard;  // the owner; of a split parameter, the leader (owner of the first rows)
  const std::vector<RowOwner> owners;  // empty unless split; in row order
  mutable Mutex replica_mu;  // lock order: accumulator_mu before replica_mu
  Replica replica ABSL_GUARDED_BY(replica_mu);
  mutable Mutex accumulator_mu;
  GradientAccumulator accumulator ABSL_GUARDED_BY(accumulator_mu);
  // For each in-flight sequence, the Push stream generation of the link it was last queued
  // in: a re-opened stream re-sends only what was not queued in it already.
  // A whole parameter's only.
  absl::flat_hash_map<uint64_t, uint64_t> queued_in ABSL_GUARDED_BY(accumulator_mu);
  // A split parameter's commits in flight (the follower-first order of split_push.h).
  std::optional<SplitPushes> split ABSL_GUARDED_BY(accumulator_mu);
};

}  // namespace dion

#endif  // DION_WORKER_CLIENT_PARAMETER_H_
