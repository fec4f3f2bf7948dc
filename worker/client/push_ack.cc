#include "worker/client/push_ack.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace dion {

namespace {

absl::StatusCode StatusCodeOf(int32_t code) {
  return code >= 1 && code <= 16 ? static_cast<absl::StatusCode>(code)
                                 : absl::StatusCode::kUnknown;
}

// A rejected push that was certainly not applied and may succeed later: restore it.
bool RefusedNotApplied(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOutOfRange:          // base version ahead of a restarted shard
    case absl::StatusCode::kFailedPrecondition:  // shard restarted without the model yet
    case absl::StatusCode::kUnavailable:         // shard shutting down
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kResourceExhausted:   // e.g. a follower's stage full: nothing kept
      return true;
    default:
      return false;
  }
}

}  // namespace

AckOutcome Classify(int shard, const v1::PushAck& ack, const std::string& worker_id) {
  AckOutcome out;
  switch (ack.result()) {
    case v1::PUSH_RESULT_ACCEPTED: break;
    case v1::PUSH_RESULT_DUPLICATE: out.result = WorkerPushResult::kDuplicate; break;
    case v1::PUSH_RESULT_STALE:
      // Re-sent with its true base it would be refused again: dropped (docs/protocol.md, Push).
      out.result = WorkerPushResult::kStale;
      out.action = AckAction::kDropStale;
      break;
    case v1::PUSH_RESULT_REJECTED: {
      out.result = WorkerPushResult::kRejected;
      const absl::StatusCode code = StatusCodeOf(ack.status_code());
      if (code == absl::StatusCode::kDataLoss) {
        // Older than the shard's dedup window: not applied now, maybe applied before. Restoring
        // could apply it twice, so it is dropped, and the run stops: this client keeps fewer
        // than kMaxUnacknowledgedSpan sequences open, so another process uses this worker id
        // or sequence numbers were reused (first_sequence).
        out.unknown = true;
        out.fatal = absl::DataLossError(absl::StrCat(
            "shard ", shard, " cannot tell whether contribution ", ack.sequence(), " to '",
            ack.parameter(), "' was applied (", ack.message(), "); it was dropped. Is worker id '",
            worker_id, "' used by two processes, or were sequence numbers reused?"));
        break;
      }
      out.action = AckAction::kRestore;  // either way: nothing is lost, even on a fatal error
      out.resync = code == absl::StatusCode::kOutOfRange;
      if (!RefusedNotApplied(code)) {
        out.fatal = absl::Status(code, absl::StrCat("shard ", shard,
                                                    " rejected a contribution to '",
                                                    ack.parameter(), "': ", ack.message()));
      }
      break;
    }
    default:
      out.result = WorkerPushResult::kRejected;
      out.unknown = true;
      out.fatal = absl::DataLossError(absl::StrCat(
          "shard ", shard, " answered contribution ", ack.sequence(), " to '", ack.parameter(),
          "' with unknown result ", static_cast<int>(ack.result()), "; it was dropped"));
  }
  return out;
}

PushFate FateOf(AckAction action) {
  switch (action) {
    case AckAction::kRestore: return PushFate::kRestored;
    case AckAction::kDropStale: return PushFate::kDroppedStale;
    case AckAction::kRelease: break;
  }
  return PushFate::kApplied;
}

void CountAck(const AckOutcome& outcome, const v1::PushAck& ack, int64_t samples,
              ClientStats& stats) {
  if (outcome.result == WorkerPushResult::kAccepted) {
    ++stats.accepted;
    const int64_t tau = std::max<int64_t>(0, ack.staleness());
    ++stats.staleness[std::min<int64_t>(tau, ClientStats::kStalenessBins - 1)];
    stats.staleness_sum += tau;
  }
  if (outcome.result == WorkerPushResult::kDuplicate) ++stats.duplicates;
  if (outcome.action == AckAction::kRestore) ++stats.refused;
  if (outcome.action == AckAction::kDropStale) {
    ++stats.stale_dropped;
    stats.stale_dropped_samples += samples;
  }
}

}  // namespace dion
