#include "worker/client/gradient_accumulator.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/privacy/clip.h"

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
  if (clip_ > 0) {
    scaled_ = G;
    ClipToNorm(scaled_, clip_);  // what enters the residual is clipped (file comment)
    scaled_ *= static_cast<float>(samples);
  } else {
    scaled_ = G * static_cast<float>(samples);
  }
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
  return !in_flight_.empty() &&
         next_sequence_ - in_flight_.begin()->first >= kMaxUnacknowledgedSpan;
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
  ClipPayload(c);
  return Seal(std::move(c), pending_samples_, worker_id, current_version, now);
}

bool GradientAccumulator::HasAnythingToFlush() const {
  return pending_samples_ > 0 ||
         (compressor_.has_value() && !(compressor_->residual().array() == 0.0f).all());
}

LowRankFactors GradientAccumulator::TakeResidualBlock(int64_t max_rank) {
  Matrix E = compressor_->TakeResidual();
  const int64_t m = E.rows(), n = E.cols();
  const bool tall = n <= m;  // P holds E's columns (R = I), else R holds its rows (P = I)
  const int64_t k = tall ? n : m;
  const auto line_is_zero = [&](int64_t i) {
    return tall ? (E.col(i).array() == 0.0f).all() : (E.row(i).array() == 0.0f).all();
  };
  int64_t first = 0;
  while (first < k && line_is_zero(first)) ++first;
  if (first == k) return LowRankFactors{Matrix::Zero(m, 1), Matrix::Zero(n, 1)};  // E is zero
  const int64_t r = std::min(k - first, std::max<int64_t>(1, max_rank));
  LowRankFactors f;
  if (tall) {
    f.P = E.middleCols(first, r);
    f.R = Matrix::Zero(n, r);
    for (int64_t j = 0; j < r; ++j) f.R(first + j, j) = 1.0f;
    E.middleCols(first, r).setZero();
  } else {
    f.P = Matrix::Zero(m, r);
    for (int64_t j = 0; j < r; ++j) f.P(first + j, j) = 1.0f;
    f.R = E.middleRows(first, r).transpose();
    E.middleRows(first, r).setZero();
  }
  // The rest goes back into the (now zero) residual unchanged: E was finite, so this cannot
  // fail, and 0 + x is exact.
  if (first + r < k) (void)compressor_->Accumulate(E);
  return f;
}

const Contribution* GradientAccumulator::TakeWhole(const std::string& worker_id,
                                                   int64_t current_version, absl::Time now,
                                                   int64_t max_rank) {
  if (!compressor_.has_value()) return Take(worker_id, current_version, now);
  if (!HasAnythingToFlush() || SpanFull()) return nullptr;
  LowRankFactors f = TakeResidualBlock(max_rank);
  const int64_t samples = pending_samples_ > 0 ? pending_samples_ : 1;
  f.R *= 1.0f / static_cast<float>(samples);  // the mean over the contribution's samples
  Contribution c;
  c.payload = std::move(f);
  ClipPayload(c);
  return Seal(std::move(c), samples, worker_id, current_version, now);
}

void GradientAccumulator::ClipPayload(Contribution& c) const {
  if (clip_ <= 0) return;
  // The excess is dropped with the scaled-down payload: nothing goes back into E.
  if (c.is_low_rank()) {
    ClipToNorm(std::get<LowRankFactors>(c.payload), clip_);
  } else {
    ClipToNorm(std::get<Matrix>(c.payload), clip_);
  }
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

Matrix GradientAccumulator::Unsettled() const {
  Matrix sum = Outstanding();
  for (const auto& [sequence, sent] : in_flight_) {
    const Contribution& c = sent.contribution;
    const float samples = static_cast<float>(c.sample_count);
    if (c.is_low_rank()) {
      Gemm(Trans::kNo, Trans::kYes, samples, c.factors().P, c.factors().R, 1.0f, sum);
    } else {
      sum += c.gradient() * samples;
    }
  }
  return sum;
}

int64_t GradientAccumulator::unsettled_samples() const {
  int64_t samples = pending_samples_;
  for (const auto& [sequence, sent] : in_flight_) samples += sent.contribution.sample_count;
  return samples;
}

double GradientAccumulator::compression_ratio() const {
  if (!compressor_.has_value()) return 1.0;
  const double dense = static_cast<double>(spec_.rows()) * spec_.cols();
  return dense / (static_cast<double>(spec_.rows() + spec_.cols()) * compressor_->rank());
}

}  // namespace dion
