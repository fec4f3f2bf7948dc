#include "server/dp_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(double, dp_noise_multiplier, 0.0,
          "differential privacy (docs/privacy.md): add Gaussian noise of standard deviation "
          "sigma * C * W to every batch's aggregate before the optimizer step, sigma being this "
          "value, C --dp_clip and W (<= 1) the largest total weight one worker has in the batch; "
          "needs workers started with the same --dp_clip. 0: off");
ABSL_FLAG(double, dp_clip, 0.0,
          "differential privacy: the clip norm C the workers apply (their --dp_clip); scales the "
          "noise, and a contribution of larger Frobenius norm is refused (INVALID_ARGUMENT). "
          "Required when --dp_noise_multiplier > 0");
ABSL_FLAG(double, dp_delta, 1e-5,
          "differential privacy: the delta of the (epsilon, delta) the accountant reports in "
          "Status and as dion_dp_epsilon");
ABSL_FLAG(double, dp_sampling_rate, 1.0,
          "differential privacy: the accountant's sampling rate q in (0, 1], the probability "
          "that a given worker takes part in a given batch. 1 (no amplification) is the safe "
          "choice unless workers are sampled at random, independently of their data");

namespace dion {

DpOptions DpOptionsFromFlags() {
  DpOptions options;
  options.noise_multiplier = absl::GetFlag(FLAGS_dp_noise_multiplier);
  options.clip = absl::GetFlag(FLAGS_dp_clip);
  options.delta = absl::GetFlag(FLAGS_dp_delta);
  options.sampling_rate = absl::GetFlag(FLAGS_dp_sampling_rate);
  return options;
}

}  // namespace dion
