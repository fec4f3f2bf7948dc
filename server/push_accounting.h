// Counts how pushes ended, in total, per owned parameter and per registered worker, and
// reports each outcome to the shard's metrics. Only names the caller says are known get their
// own entry, so bad input cannot grow the tables.
//
// Thread-safety: safe for concurrent use.
#ifndef DION_SERVER_PUSH_ACCOUNTING_H_
#define DION_SERVER_PUSH_ACCOUNTING_H_

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "common/contribution.h"
#include "common/mutex.h"

namespace dion {

class ShardMetrics;

struct PushCounts {
  int64_t accepted = 0;
  int64_t duplicate = 0;
  int64_t stale = 0;
  int64_t rejected = 0;

  void Add(PushOutcome outcome);
};

// The counts of one worker, and the training loss of its latest accepted contribution.
struct WorkerPushCounts {
  PushCounts pushes;
  double last_loss = 0.0;
};

// Everything counted so far.
struct PushTally {
  PushCounts total;  // every push, including those refused before a lookup
  absl::flat_hash_map<std::string, PushCounts> parameters;
  absl::flat_hash_map<std::string, WorkerPushCounts> workers;
};

// Who pushed what: `known_*` say whether the shard knows the name (its own entry then).
struct PushSource {
  absl::string_view worker_id;
  bool known_worker = false;
  absl::string_view parameter;
  bool known_parameter = false;
};

class PushAccounting {
 public:
  // `metrics` may be null and must otherwise outlive this object.
  explicit PushAccounting(ShardMetrics* metrics) : metrics_(metrics) {}
  PushAccounting(const PushAccounting&) = delete;
  PushAccounting& operator=(const PushAccounting&) = delete;

  // Counts one push. `loss` becomes the worker's last loss when the push was accepted.
  void Count(const PushSource& source, PushOutcome outcome, double loss) ABSL_LOCKS_EXCLUDED(mu_);

  PushTally Tally() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  ShardMetrics* const metrics_;
  mutable Mutex mu_;
  PushTally tally_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dion

#endif  // DION_SERVER_PUSH_ACCOUNTING_H_
