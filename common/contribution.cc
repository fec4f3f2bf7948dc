#include "common/contribution.h"

namespace dion {

absl::string_view PushOutcomeName(PushOutcome outcome) {
  switch (outcome) {
    case PushOutcome::kAccepted: return "accepted";
    case PushOutcome::kDuplicate: return "duplicate";
    case PushOutcome::kStale: return "stale";
    case PushOutcome::kRejected: return "rejected";
  }
  return "unknown";
}

absl::string_view CloseReasonName(CloseReason reason) {
  switch (reason) {
    case CloseReason::kSamples: return "samples";
    case CloseReason::kWorkers: return "workers";
    case CloseReason::kDeadline: return "deadline";
    case CloseReason::kFull: return "full";
    case CloseReason::kFlush: return "flush";
  }
  return "unknown";
}

}  // namespace dion
