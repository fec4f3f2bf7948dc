#ifndef DION_SERVER_LR_SCHEDULE_H_
#define DION_SERVER_LR_SCHEDULE_H_

// The learning-rate schedule a shard applies to every parameter it owns: constant, then a
// linear cooldown over the end of the run, measured in samples applied to the parameter.
//
//   scale(s) = 1                                        s <  start = (1 - cooldown) * total
//            = 1 - (1 - final_scale) (s - start) / (total - start)      start <= s < total
//            = final_scale                              s >= total
//
// where s counts the samples of the batches this parameter applied before the step. Every
// configured learning rate of the parameter (Dion, AdamW, Lion, Muon) is multiplied by
// scale(s) for that step; so is the decoupled weight decay, which the optimizers apply as
// lr * weight_decay. The end of a run anneals away the noise that constant-lr steps (and the
// stale gradients of asynchronous workers) leave in the weights (docs/algorithm.md).
//
// Plain value types and pure functions: thread-safe.

#include <cstdint>

#include "absl/status/status.h"

namespace dion {

struct LrSchedule {
  int64_t total_samples = 0;       // samples each parameter sees over the run; 0: constant lr
  double cooldown_fraction = 0.2;  // the last fraction of total_samples, in [0, 1]
  double final_scale = 0.1;        // the multiplier reached at total_samples, in [0, 1]
};

// InvalidArgument naming the field.
absl::Status ValidateLrSchedule(const LrSchedule& schedule);

// scale(samples_applied) above; 1 when total_samples is 0 or cooldown_fraction is 0 and the
// run has not reached total_samples.
double LrScale(const LrSchedule& schedule, int64_t samples_applied);

}  // namespace dion

#endif  // DION_SERVER_LR_SCHEDULE_H_
