#include "common/contribution.h"

namespace dion {

absl::string_view PushResultName(PushResult result) {
  switch (result) {
    case PushResult::kAccepted: return "accepted";
    case PushResult::kDuplicate: return "duplicate";
    case PushResult::kStale: return "stale";
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
