// dion-server's flags of the differentially private mode (--dp_noise_multiplier, --dp_clip,
// --dp_delta, --dp_sampling_rate; docs/privacy.md), kept out of main.cc.
// Thread-safety: read the flags after absl::ParseCommandLine, from one thread.
#ifndef DION_SERVER_DP_FLAGS_H_
#define DION_SERVER_DP_FLAGS_H_

#include "server/dp_noise.h"

namespace dion {

// The flags' values (validated later, with the store options).
DpOptions DpOptionsFromFlags();

}  // namespace dion

#endif  // DION_SERVER_DP_FLAGS_H_
