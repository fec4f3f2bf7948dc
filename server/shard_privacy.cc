// Shard::PrivacyOf: what the differentially private mode has spent (server/dp_noise.h,
// docs/privacy.md "Accounting"), kept apart from shard.cc.
#include <vector>

#include "common/privacy/rdp_accountant.h"
#include "server/shard.h"

namespace dion {

ShardStatus::Privacy Shard::PrivacyOf(const std::vector<ParameterStatus>& parameters) const {
  ShardStatus::Privacy privacy;
  privacy.options = options_.batcher.dp;
  // Every parameter starts at version 0 and each applied batch adds one: the steps survive
  // restarts with the checkpoints.
  for (const ParameterStatus& p : parameters) privacy.steps += p.version;
  privacy.spent = EpsilonAfter(privacy.options.mechanism(), privacy.steps);
  return privacy;
}

}  // namespace dion
