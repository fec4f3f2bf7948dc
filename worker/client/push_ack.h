// How the client settles a shard's answer to a push (docs/protocol.md, Push): which answers
// are applied, restored into the residual, dropped as stale or fatal, and how they count in
// ClientStats. Private to worker/client/ (client.cc's push path).
//
// Thread-safety: pure functions.
#ifndef DION_WORKER_PUSH_ACK_H_
#define DION_WORKER_PUSH_ACK_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "dion/v1/dion.pb.h"
#include "worker/client/client.h"
#include "worker/client/gradient_accumulator.h"
#include "worker/client/worker_metrics.h"

namespace dion {

// How an acknowledgement settles its contribution: released (applied, or applied before),
// restored into the residual (certainly not applied), dropped as stale, or released with its
// fate unknown (a fatal error).
struct AckOutcome {
  WorkerPushResult result = WorkerPushResult::kAccepted;
  AckAction action = AckAction::kRelease;
  bool unknown = false;  // dropped without knowing whether it was applied
  bool resync = false;   // the shard is behind the base version: pull the parameter
  absl::Status fatal;    // the client cannot go on
};

// How shard `shard`'s answer `ack` settles its contribution (AckOutcome).
AckOutcome Classify(int shard, const v1::PushAck& ack, const std::string& worker_id);

// The PushFate ClientOptions::on_acknowledged reports for `action`.
PushFate FateOf(AckAction action);

// Adds one acknowledgement of a contribution of `samples` samples to `stats`.
void CountAck(const AckOutcome& outcome, const v1::PushAck& ack, int64_t samples,
              ClientStats& stats);

}  // namespace dion

#endif  // DION_WORKER_PUSH_ACK_H_
