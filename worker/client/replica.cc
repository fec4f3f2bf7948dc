#include "worker/client/replica.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/dion.h"

namespace dion {

absl::string_view ReplicaEventName(ReplicaEvent event) {
  switch (event) {
    case ReplicaEvent::kApplied: return "applied";
    case ReplicaEvent::kReplaced: return "replaced";
    case ReplicaEvent::kWentBack: return "went_back";
    case ReplicaEvent::kIgnored: return "ignored";
    case ReplicaEvent::kGap: return "gap";
    case ReplicaEvent::kChecksumMismatch: return "checksum_mismatch";
  }
  return "unknown";
}

Replica::Replica(ParamSpec spec, bool track_last_step)
    : spec_(std::move(spec)),
      X_(Matrix::Zero(spec_.rows(), spec_.cols())),
      track_last_step_(track_last_step) {
  if (track_last_step_) last_step_ = Matrix::Zero(spec_.rows(), spec_.cols());
}

void Replica::Extrapolate(double steps, Matrix* out) const {
  if (steps == 0 || !track_last_step_) {
    *out = X_;
    return;
  }
  *out = X_ + static_cast<float>(steps) * last_step_;
}

void Replica::Extrapolate(double steps, MatrixRef out) const {
  if (steps == 0 || !track_last_step_) {
    out = X_;
    return;
  }
  out = X_ + static_cast<float>(steps) * last_step_;
}

absl::Status Replica::Set(int64_t version, const Matrix& X, uint64_t checksum) {
  if (X.rows() != X_.rows() || X.cols() != X_.cols()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "value for '", spec_.name, "' is ", X.rows(), " x ", X.cols(), ", expected ",
        X_.rows(), " x ", X_.cols()));
  }
  if (WeightsChecksum(X) != checksum) {
    return absl::DataLossError(absl::StrCat("value for '", spec_.name, "' at version ", version,
                                            " does not match its checksum"));
  }
  if (track_last_step_) {
    if (in_sync() && version == version_ + 1) {  // a copy out of sync gives no usable step
      last_step_ = X - X_;
    } else {
      last_step_.setZero();
    }
  }
  X_ = X;
  version_ = version;
  in_sync_ = true;
  ++changes_;
  return absl::OkStatus();
}

absl::StatusOr<ReplicaEvent> Replica::Apply(const VersionUpdate& update, bool verify_checksum) {
  if (update.parameter != spec_.name) {
    return absl::InvalidArgumentError(absl::StrCat("update for '", update.parameter,
                                                   "' applied to the replica of '", spec_.name,
                                                   "'"));
  }
  if (!update.is_low_rank()) {
    const Matrix& value = std::get<Matrix>(update.content);
    const int64_t before = version_;
    if (absl::Status s = Set(update.version, value, update.checksum); !s.ok()) {
      if (s.code() == absl::StatusCode::kDataLoss) return ReplicaEvent::kChecksumMismatch;
      return s;
    }
    return update.version < before ? ReplicaEvent::kWentBack : ReplicaEvent::kReplaced;
  }
  if (update.version <= version_) return ReplicaEvent::kIgnored;
  if (update.version != version_ + 1 || !has_value()) return ReplicaEvent::kGap;
  const LowRankStep& step = std::get<LowRankStep>(update.content);
  // The step is in the algorithm's orientation: P tall, Q short; transposed means X^T.
  const int64_t tall = step.transposed ? X_.cols() : X_.rows();
  const int64_t short_side = step.transposed ? X_.rows() : X_.cols();
  if (step.P.rows() != tall || step.Q.rows() != short_side || step.P.cols() != step.Q.cols()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "low-rank step for '", spec_.name, "' has P ", step.P.rows(), " x ", step.P.cols(),
        " and Q ", step.Q.rows(), " x ", step.Q.cols(), "; expected ", tall, " x r and ",
        short_side, " x r"));
  }
  if (track_last_step_) last_step_ = X_;
  ApplyLowRankUpdate(X_, step.decay, step.scale, step.P, step.Q, step.transposed);
  if (track_last_step_) last_step_ = X_ - last_step_;
  version_ = update.version;
  ++changes_;
  if (verify_checksum && WeightsChecksum(X_) != update.checksum) in_sync_ = false;
  return in_sync_ ? ReplicaEvent::kApplied : ReplicaEvent::kChecksumMismatch;
}

}  // namespace dion
