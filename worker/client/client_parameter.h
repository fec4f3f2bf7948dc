// Client::Parameter, the per-parameter state of a Client, shared by the files that implement
// Client (client.cc: connection and the push path; client_replica.cc: the replicas and the
// waits on them). Private to worker/: not part of the client library's interface.
#ifndef DION_WORKER_CLIENT_PARAMETER_H_
#define DION_WORKER_CLIENT_PARAMETER_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "common/mutex.h"
#include "common/param_spec.h"
#include "worker/client/client.h"
#include "worker/client/gradient_accumulator.h"
#include "worker/client/replica.h"

namespace dion {

struct Client::Parameter {
  Parameter(const ParamSpec& spec, int index, int shard, int rank, uint64_t seed,
            uint64_t first_sequence, bool track_last_step)
      : index(index),
        shard(shard),
        replica(spec, track_last_step),
        accumulator(spec, rank, seed, first_sequence) {}
  const int index;
  const int shard;
  mutable Mutex replica_mu;  // lock order: accumulator_mu before replica_mu
  Replica replica ABSL_GUARDED_BY(replica_mu);
  mutable Mutex accumulator_mu;
  GradientAccumulator accumulator ABSL_GUARDED_BY(accumulator_mu);
  // For each in-flight sequence, the Push stream generation of the link it was last queued
  // in: a re-opened stream re-sends only what was not queued in it already.
  absl::flat_hash_map<uint64_t, uint64_t> queued_in ABSL_GUARDED_BY(accumulator_mu);
};

}  // namespace dion

#endif  // DION_WORKER_CLIENT_PARAMETER_H_
