// Client: Flush and FlushAll (everything accumulated, with or without the residuals, and
// waiting for the acknowledgements) and what they leave unsettled. The rest of the push path is
// in client.cc.
#include "worker/client/client.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "worker/client/client_parameter.h"

namespace dion {

absl::Status Client::Flush(absl::Duration timeout) {
  int64_t residual_only_pushes = 0;
  return FlushUntilSettled(timeout, /*whole=*/false, &residual_only_pushes);
}

absl::Status Client::FlushAll(absl::Duration timeout, FlushReport* report) {
  FlushReport local;
  FlushReport& r = report != nullptr ? *report : local;
  r = FlushReport{};
  const ClientStats before = stats();
  double residual_squared = 0;
  for (const auto& p : parameters_) {
    if (specs_[p->index].optimizer != OptimizerKind::kDion) continue;
    MutexLock lock(&p->accumulator_mu);
    const double squared = p->accumulator.Outstanding().cast<double>().squaredNorm();
    r.residuals += squared > 0;
    residual_squared += squared;
  }
  r.residual_norm = std::sqrt(residual_squared);
  const absl::Status status =
      FlushUntilSettled(timeout, /*whole=*/true, &r.residual_only_pushes);
  const ClientStats after = stats();
  r.pushes = after.pushes - before.pushes;
  r.stale_dropped_samples = after.stale_dropped_samples - before.stale_dropped_samples;
  CountUnsettled(r);
  return status;
}

absl::Status Client::FlushUntilSettled(absl::Duration timeout, bool whole,
                                       int64_t* residual_only_pushes) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const uint64_t seen = ChangeCount();
    if (absl::Status s = Usable(); !s.ok()) return s;
    int outstanding = 0;
    for (auto& p : parameters_) {
      MutexLock lock(&p->accumulator_mu);
      GradientAccumulator& acc = p->accumulator;
      const bool residual_only = acc.pending_samples() == 0;
      if (MaybeSend(*p, whole) && residual_only) ++*residual_only_pushes;
      outstanding += acc.in_flight() +
                     (whole ? acc.HasAnythingToFlush() : acc.pending_samples() > 0);
    }
    if (outstanding == 0) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          outstanding, " pushes (or pending accumulations", whole ? " and residuals" : "",
          ") still unacknowledged after ", absl::FormatDuration(timeout)));
    }
    // Acknowledgements and failures wake this up; the cap is a safety net, so that a change
    // nothing announces can delay the flush by at most 50 ms.
    WaitForChange(seen, std::min(deadline, absl::Now() + absl::Milliseconds(50)));
  }
}

void Client::CountUnsettled(FlushReport& report) const {
  double squared = 0;
  for (const auto& p : parameters_) {
    MutexLock lock(&p->accumulator_mu);
    report.unacknowledged += p->accumulator.in_flight();
    report.unsettled_samples += p->accumulator.unsettled_samples();
    squared += p->accumulator.Unsettled().cast<double>().squaredNorm();
  }
  report.unsettled_norm = std::sqrt(squared);
}

Matrix Client::Outstanding(int index) const {
  const Parameter& p = *parameters_.at(index);
  MutexLock lock(&p.accumulator_mu);
  return p.accumulator.Outstanding();
}

}  // namespace dion
