#include "server/push_accounting.h"

#include "server/metrics.h"

namespace dion {

void PushCounts::Add(PushOutcome outcome) {
  switch (outcome) {
    case PushOutcome::kAccepted: ++accepted; return;
    case PushOutcome::kDuplicate: ++duplicate; return;
    case PushOutcome::kStale: ++stale; return;
    case PushOutcome::kRejected: ++rejected; return;
  }
}

void PushAccounting::Count(const PushSource& source, PushOutcome outcome, double loss) {
  if (metrics_ != nullptr) metrics_->RecordPush(outcome);
  MutexLock lock(&mu_);
  tally_.total.Add(outcome);
  if (source.known_parameter) tally_.parameters[source.parameter].Add(outcome);
  if (source.known_worker) {
    WorkerPushCounts& worker = tally_.workers[source.worker_id];
    worker.pushes.Add(outcome);
    if (outcome == PushOutcome::kAccepted) worker.last_loss = loss;
  }
}

PushTally PushAccounting::Tally() const {
  MutexLock lock(&mu_);
  return tally_;
}

}  // namespace dion
