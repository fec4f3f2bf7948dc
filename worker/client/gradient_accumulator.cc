#include "worker/client/gradient_accumulator.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/blas.h"

namespace dion {

GradientAccumulator::GradientAccumulator(ParamSpec spec, int compression_rank, uint64_t seed,
                                         uint64_t first_sequence)
    : spec_(std::move(spec)),
      scaled_(spec_.rows(), spec_.cols()),
      next_sequence_(first_sequence) {
  if (spec_.optimizer == OptimizerKind::kDion) {
    compressor_.emplace(spec_.rows(), spec_.cols(), compression_rank, seed);
  } else {
    dense_sum_ = Matrix::Zero(spec_.rows(), spec_.cols());
  }
}

absl::Status GradientAccumulator::Accumulate(ConstMatrixRef G, int64_t samples, double loss,
                                             int64_t base_version) {
  if (G.rows() != spec_.rows() || G.cols() != spec_.cols()) {
    return absl::InvalidArgumentError(absl::StrCat("gradient of '", spec_.name, "' is ",
                                                   G.rows(), " x ", G.cols(), ", expected ",
                                                   spec_.rows(), " x ", spec_.cols()));
  }
  if (samples <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient of '", spec_.name, "': samples must be > 0, got ", samples));
  }
  if (!AllFinite(G)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient of '", spec_.name, "' contains NaN or Inf"));
  }
  scaled_ = G * static_cast<float>(samples);
  if (compressor_.has_value()) {
    if (absl::Status s = compressor_->Accumulate(scaled_); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("'", spec_.name, "': ", s.message()));
    }
  } else {
    dense_sum_ += scaled_;
  }
  ++pending_steps_;
  pending_samples_ += samples;
  pending_loss_sum_ += loss * static_cast<double>(samples);
  pending_loss_samples_ += samples;
  pending_base_version_ = pending_base_version_ < 0 ? base_version
                                                    : std::min(pending_base_version_, base_version);
  return absl::OkStatus();
}

bool GradientAccumulator::SpanFull() const {
  return !in_flight_.empty() && next_sequence_ - in_flight_.begin()->first >= kMaxUnacknowledgedSpan;
}

const Contribution* GradientAccumulator::Take(const std::string& worker_id,
                                              int64_t current_version, absl::Time now) {
  if (pending_samples_ <= 0 || SpanFull()) return nullptr;
  const float inverse_samples = 1.0f / static_cast<float>(pending_samples_);
  Contribution c;
  if (compressor_.has_value()) {
    LowRankFactors f = compressor_->Compress();
    if ((f.R.array() == 0.0f).all()) {
      // Nothing captured: the smallest valid payload, zero, so the samples still count.
      f = LowRankFactors{Matrix::Zero(spec_.rows(), 1), Matrix::Zero(spec_.cols(), 1)};
    }
    f.R *= inverse_samples;  // the mean over the contribution's samples
    c.payload = std::move(f);
  } else {
    c.payload = Matrix(dense_sum_ * inverse_samples);
    dense_sum_.setZero();
  }
  return Seal(std::move(c), pending_samples_, worker_id, current_version, now);
}

const Contribution* GradientAccumulator::Seal(Contribution c, int64_t samples,
                                              const std::string& worker_id,
                                              int64_t current_version, absl::Time now) {
  c.worker_id = worker_id;
  c.sequence = next_sequence_++;
  c.parameter = spec_.name;
  // Restored contributions keep their age; a base above the replica's version belongs to a
  // history the shard went back from (see Take).
  c.base_version = pending_base_version_ >= 0 ? std::min(pending_base_version_, current_version)
                                              : current_version;
  c.sample_count = samples;
  c.loss = pending_loss_samples_ > 0
               ? pending_loss_sum_ / static_cast<double>(pending_loss_samples_)
               : 0.0;
  pending_steps_ = 0;
  pending_samples_ = 0;
  pending_loss_sum_ = 0.0;
  pending_loss_samples_ = 0;
  pending_base_version_ = -1;
  const uint64_t sequence = c.sequence;
  return &in_flight_.emplace(sequence, Sent{std::move(c), now}).first->second.contribution;
}

absl::Status GradientAccumulator::PutBack(const Contribution& c) {
  const float samples = static_cast<float>(c.sample_count);
  if (compressor_.has_value()) {
    LowRankFactors f{c.factors().P, c.factors().R * samples};
    if (absl::Status s = compressor_->Restore(f); !s.ok()) return s;
  } else {
    dense_sum_ += c.gradient() * samples;
  }
  pending_samples_ += c.sample_count;
  // It keeps its age: the next contribution is as old as the oldest thing it carries.
  pending_base_version_ = pending_base_version_ < 0
                              ? c.base_version
                              : std::min(pending_base_version_, c.base_version);
  return absl::OkStatus();
}

absl::StatusOr<GradientAccumulator::Acknowledged> GradientAccumulator::Acknowledge(
    uint64_t sequence, AckAction action) {
  auto it = in_flight_.find(sequence);
  if (it == in_flight_.end()) {
    return absl::NotFoundError(absl::StrCat("'", spec_.name, "': sequence ", sequence,
                                            " is not in flight"));
  }
  if (action == AckAction::kRestore) {
    if (absl::Status s = PutBack(it->second.contribution); !s.ok()) {
      in_flight_.erase(it);  // settled (lost, and the caller says so): never answered twice
      return s;
    }
  }
  Acknowledged done{std::move(it->second.contribution), it->second.taken};
  in_flight_.erase(it);
  return done;
}

std::vector<const Contribution*> GradientAccumulator::InFlight() const {
  std::vector<const Contribution*> out;
  out.reserve(in_flight_.size());
  for (const auto& [sequence, sent] : in_flight_) out.push_back(&sent.contribution);
  return out;
}

Matrix GradientAccumulator::Outstanding() const {
  return compressor_.has_value() ? compressor_->residual() : dense_sum_;
}

double GradientAccumulator::compression_ratio() const {
  if (!compressor_.has_value()) return 1.0;
  const double dense = static_cast<double>(spec_.rows()) * spec_.cols();
  return dense / (static_cast<double>(spec_.rows() + spec_.cols()) * compressor_->rank());
}

}  // namespace dion
