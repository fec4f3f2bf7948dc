// Client: Flush (everything accumulated, and waiting for the acknowledgements) and what it
// leaves outstanding. The rest of the push path is in client.cc.
#include "worker/client/client.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "worker/client/client_parameter.h"

namespace dion {

absl::Status Client::Flush(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const uint64_t seen = ChangeCount();
    if (absl::Status s = Usable(); !s.ok()) return s;
    int outstanding = 0;
    for (auto& p : parameters_) {
      MutexLock lock(&p->accumulator_mu);
      MaybeSend(*p);
      outstanding += p->accumulator.in_flight() + (p->accumulator.pending_samples() > 0);
    }
    if (outstanding == 0) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          outstanding, " pushes (or pending accumulations) still unacknowledged after ",
          absl::FormatDuration(timeout)));
    }
    // Acknowledgements and failures wake this up; the cap is a safety net, so that a change
    // nothing announces can delay the flush by at most 50 ms.
    WaitForChange(seen, std::min(deadline, absl::Now() + absl::Milliseconds(50)));
  }
}

Matrix Client::Outstanding(int index) const {
  const Parameter& p = *parameters_.at(index);
  MutexLock lock(&p.accumulator_mu);
  return p.accumulator.Outstanding();
}

}  // namespace dion
