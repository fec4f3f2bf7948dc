#include "worker/client/replica.h"

#include <algorithm>
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

Replica::Replica(ParamSpec spec, bool track_last_step, std::vector<RowBlock> blocks)
    : spec_(std::move(spec)),
      X_(Matrix::Zero(spec_.rows(), spec_.cols())),
      track_last_step_(track_last_step),
      split_(!blocks.empty()),
      wide_(spec_.rows() < spec_.cols()) {
  if (track_last_step_) last_step_ = Matrix::Zero(spec_.rows(), spec_.cols());
  if (blocks.empty()) blocks.push_back(RowBlock{});
  for (const RowBlock& rows : blocks) blocks_.push_back(Block{rows});
}

int64_t Replica::version() const {
  int64_t least = blocks_.front().version;
  for (const Block& b : blocks_) least = std::min(least, b.version);
  return least;
}

bool Replica::in_sync() const {
  for (const Block& b : blocks_) {
    if (b.version < 0 || !b.in_sync) return false;
  }
  return true;
}

int64_t Replica::block_version(RowBlock rows) const {
  const Block* b = Find(rows);
  return b != nullptr ? b->version : -1;
}

bool Replica::block_in_sync(RowBlock rows) const {
  const Block* b = Find(rows);
  return b != nullptr && b->version >= 0 && b->in_sync;
}

Replica::Block* Replica::Find(RowBlock rows) {
  for (Block& b : blocks_) {
    if (b.rows == rows) return &b;
  }
  return nullptr;
}

const Replica::Block* Replica::Find(RowBlock rows) const {
  return const_cast<Replica*>(this)->Find(rows);
}

MatrixRef Replica::View(Matrix& X, const Block& block) const {
  if (!split_) return X;
  const RowBlock& r = block.rows;
  if (wide_) return X.middleCols(r.begin, r.size());
  return X.middleRows(r.begin, r.size());
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
  if (split_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", spec_.name, "' is split over ", blocks_.size(), " shards: set its blocks"));
  }
  return SetIn(blocks_.front(), version, X, checksum);
}

absl::Status Replica::SetBlock(RowBlock rows, int64_t version, const Matrix& value,
                               uint64_t checksum) {
  Block* block = split_ ? Find(rows) : nullptr;
  if (block == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("rows [", rows.begin, ", ", rows.end,
                                                   ") are not a block of '", spec_.name, "'"));
  }
  return SetIn(*block, version, value, checksum);
}

absl::Status Replica::SetIn(Block& block, int64_t version, const Matrix& value,
                            uint64_t checksum) {
  MatrixRef X = View(X_, block);
  if (value.rows() != X.rows() || value.cols() != X.cols()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "value for '", spec_.name, "'", split_ ? " (a block)" : "", " is ", value.rows(), " x ",
        value.cols(), ", expected ", X.rows(), " x ", X.cols()));
  }
  if (WeightsChecksum(value) != checksum) {
    return absl::DataLossError(absl::StrCat("value for '", spec_.name, "' at version ", version,
                                            " does not match its checksum"));
  }
  if (track_last_step_) {
    MatrixRef last = View(last_step_, block);
    // A value d versions ahead of an in-sync copy (a shard sends one in place of several steps
    // to a subscriber that lags, docs/server.md "Conflation") gives the mean step over them; a
    // copy out of sync, or a value that goes back, gives no usable step.
    if (block.version >= 0 && block.in_sync && version > block.version) {
      last = (value - X) / static_cast<float>(version - block.version);
    } else {
      last.setZero();
    }
  }
  X = value;
  block.version = version;
  block.in_sync = true;
  ++changes_;
  return absl::OkStatus();
}

absl::StatusOr<ReplicaEvent> Replica::Apply(const VersionUpdate& update, bool verify_checksum) {
  if (update.parameter != spec_.name) {
    return absl::InvalidArgumentError(absl::StrCat("update for '", update.parameter,
                                                   "' applied to the replica of '", spec_.name,
                                                   "'"));
  }
  Block* block = Find(update.rows);
  if (block == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "update for '", spec_.name, "' covers rows [", update.rows.begin, ", ", update.rows.end,
        "), which are not ", split_ ? "a block of it" : "all of it (it is not split)"));
  }
  if (!update.is_low_rank()) {
    const Matrix& value = std::get<Matrix>(update.content);
    const int64_t before = block->version;
    if (absl::Status s = SetIn(*block, update.version, value, update.checksum); !s.ok()) {
      if (s.code() == absl::StatusCode::kDataLoss) return ReplicaEvent::kChecksumMismatch;
      return s;
    }
    return update.version < before ? ReplicaEvent::kWentBack : ReplicaEvent::kReplaced;
  }
  return ApplyStep(*block, update, verify_checksum);
}

absl::StatusOr<ReplicaEvent> Replica::ApplyStep(Block& block, const VersionUpdate& update,
                                                bool verify_checksum) {
  if (update.version <= block.version) return ReplicaEvent::kIgnored;
  if (update.version != block.version + 1 || block.version < 0) return ReplicaEvent::kGap;
  const LowRankStep& step = std::get<LowRankStep>(update.content);
  MatrixRef X = View(X_, block);
  // The step is in the algorithm's orientation: P tall, Q short; transposed means X^T.
  const int64_t tall = step.transposed ? X.cols() : X.rows();
  const int64_t short_side = step.transposed ? X.rows() : X.cols();
  if (step.P.rows() != tall || step.Q.rows() != short_side || step.P.cols() != step.Q.cols() ||
      (split_ && step.transposed != wide_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "low-rank step for '", spec_.name, "' has P ", step.P.rows(), " x ", step.P.cols(),
        " and Q ", step.Q.rows(), " x ", step.Q.cols(), step.transposed ? " (transposed)" : "",
        "; expected ", tall, " x r and ", short_side, " x r"));
  }
  if (track_last_step_) View(last_step_, block) = X;
  ApplyLowRankUpdate(X, step.decay, step.scale, step.P, step.Q, step.transposed);
  if (track_last_step_) {
    MatrixRef last = View(last_step_, block);
    last = X - last;
  }
  block.version = update.version;
  ++changes_;
  if (verify_checksum && WeightsChecksum(X) != update.checksum) block.in_sync = false;
  return block.in_sync ? ReplicaEvent::kApplied : ReplicaEvent::kChecksumMismatch;
}

}  // namespace dion
