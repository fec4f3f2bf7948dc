#include "common/wire.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dion {
namespace {

static_assert(std::endian::native == std::endian::little,
              "tensors travel as little-endian float32; add a byte swap for this host");

constexpr int64_t kMaxElements = 2147483647;  // 2^31 - 1, as ValidateParamSpec

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status CheckFinite(const Matrix& M, absl::string_view what) {
  if (M.allFinite()) return absl::OkStatus();
  for (int64_t i = 0; i < M.rows(); ++i) {
    for (int64_t j = 0; j < M.cols(); ++j) {
      if (!std::isfinite(M(i, j))) {
        return NonFiniteError(absl::StrCat(what, ": element (", i, ", ", j, ") is ", M(i, j),
                                           "; NaN and Inf are refused"));
      }
    }
  }
  return absl::OkStatus();
}

// The tensor rule of the file comment; `expected_shape` (unless empty) must match exactly, and
// the values are checked for NaN and Inf only with PayloadValues::kCheck.
absl::StatusOr<Matrix> DecodeTensor(const v1::Tensor& tensor,
                                    absl::Span<const int64_t> expected_shape,
                                    absl::string_view what, PayloadValues values) {
  const auto& shape = tensor.shape();
  if (!expected_shape.empty() &&
      !std::equal(shape.begin(), shape.end(), expected_shape.begin(), expected_shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", ShapeString(shape),
                                                   ", expected ", ShapeString(expected_shape)));
  }
  if (shape.empty() || shape.size() > 2) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", ShapeString(shape),
                                                   " must have 1 or 2 dimensions"));
  }
  int64_t elements = 1;
  for (int64_t d : shape) {
    if (d < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shape ", ShapeString(shape), " has a dimension < 1"));
    }
    if (d > kMaxElements / elements) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": shape ", ShapeString(shape), " has more than 2^31 - 1 elements"));
    }
    elements *= d;
  }
  const int64_t expected_bytes = 4 * elements;
  if (static_cast<int64_t>(tensor.data().size()) != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", tensor.data().size(), " bytes of data for shape ", ShapeString(shape),
        ", expected ", expected_bytes, " (float32)"));
  }
  const int64_t rows = shape.size() == 2 ? shape[0] : 1;
  const int64_t cols = shape[shape.size() - 1];
  Matrix M(rows, cols);
  std::memcpy(M.data(), tensor.data().data(), expected_bytes);
  if (values == PayloadValues::kCheck) {
    if (absl::Status s = CheckFinite(M, what); !s.ok()) return s;
  }
  return M;
}

}  // namespace

absl::StatusOr<Matrix> TensorToMatrix(const v1::Tensor& tensor, absl::string_view what) {
  return DecodeTensor(tensor, {}, what, PayloadValues::kCheck);
}

absl::StatusOr<Matrix> TensorToMatrix(const v1::Tensor& tensor,
                                      absl::Span<const int64_t> expected_shape,
                                      absl::string_view what) {
  return DecodeTensor(tensor, expected_shape, what, PayloadValues::kCheck);
}

void MatrixToTensor(ConstMatrixRef M, v1::Tensor* tensor) {
  const int64_t shape[2] = {M.rows(), M.cols()};
  MatrixToTensor(M, shape, tensor);
}

void MatrixToTensor(ConstMatrixRef M, absl::Span<const int64_t> shape, v1::Tensor* tensor) {
  tensor->clear_shape();
  for (int64_t d : shape) tensor->add_shape(d);
  std::string* data = tensor->mutable_data();
  if (M.size() == 0) {
    data->clear();
  } else if (M.outerStride() == M.cols()) {
    // One copy; resize-then-memcpy would write every byte twice (zero fill first).
    data->assign(reinterpret_cast<const char*>(M.data()), sizeof(float) * M.size());
  } else {
    data->resize(sizeof(float) * M.size());
    const size_t row_bytes = sizeof(float) * M.cols();
    for (int64_t i = 0; i < M.rows(); ++i) {
      std::memcpy(data->data() + i * row_bytes, M.row(i).data(), row_bytes);
    }
  }
}

absl::StatusOr<Contribution> ContributionFromProto(const v1::Contribution& proto,
                                                   const ParamSpec* spec, PayloadValues values) {
  const std::string where =
      absl::StrCat("contribution ", proto.sequence(), " of worker '", proto.worker_id(),
                   "' to '", proto.parameter(), "'");
  Contribution c;
  c.worker_id = proto.worker_id();
  c.sequence = proto.sequence();
  c.parameter = proto.parameter();
  c.base_version = proto.base_version();
  c.sample_count = proto.sample_count();
  c.loss = proto.loss();
  if (!std::isfinite(c.loss)) {
    return NonFiniteError(absl::StrCat(where, ": loss ", c.loss, " is not finite"));
  }
  switch (proto.payload_case()) {
    case v1::Contribution::kFactors: {
      absl::StatusOr<Matrix> P =
          DecodeTensor(proto.factors().p(), {}, absl::StrCat(where, ", P"), values);
      if (!P.ok()) return P.status();
      absl::StatusOr<Matrix> R =
          DecodeTensor(proto.factors().r(), {}, absl::StrCat(where, ", R"), values);
      if (!R.ok()) return R.status();
      if (proto.factors().p().shape_size() != 2 || proto.factors().r().shape_size() != 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": P and R must be 2-D (m x r and n x r)"));
      }
      if (P->cols() != R->cols()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": P has ", P->cols(), " columns but R has ", R->cols(),
            "; both must have rank r"));
      }
      c.payload = LowRankFactors{*std::move(P), *std::move(R)};
      break;
    }
    case v1::Contribution::kGradient: {
      absl::StatusOr<Matrix> G =
          DecodeTensor(proto.gradient(), spec != nullptr ? spec->shape : std::vector<int64_t>{},
                       absl::StrCat(where, ", gradient"), values);
      if (!G.ok()) return G.status();
      c.payload = *std::move(G);
      break;
    }
    case v1::Contribution::PAYLOAD_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": carries neither low-rank factors nor a gradient"));
  }
  return c;
}

void ContributionToProto(const Contribution& contribution, v1::Contribution* proto,
                         absl::Span<const int64_t> gradient_shape) {
  proto->Clear();
  proto->set_worker_id(contribution.worker_id);
  proto->set_sequence(contribution.sequence);
  proto->set_parameter(contribution.parameter);
  proto->set_base_version(contribution.base_version);
  proto->set_sample_count(contribution.sample_count);
  proto->set_loss(contribution.loss);
  if (contribution.is_low_rank()) {
    MatrixToTensor(contribution.factors().P, proto->mutable_factors()->mutable_p());
    MatrixToTensor(contribution.factors().R, proto->mutable_factors()->mutable_r());
  } else if (gradient_shape.empty()) {
    MatrixToTensor(contribution.gradient(), proto->mutable_gradient());
  } else {
    MatrixToTensor(contribution.gradient(), gradient_shape, proto->mutable_gradient());
  }
}

void VersionUpdateToProto(const VersionUpdate& update, absl::Span<const int64_t> shape,
                          v1::VersionUpdate* proto) {
  proto->Clear();
  proto->set_parameter(update.parameter);
  proto->set_version(update.version);
  proto->set_checksum(update.checksum);
  if (const LowRankStep* step = std::get_if<LowRankStep>(&update.content)) {
    v1::LowRankStep* s = proto->mutable_low_rank_step();
    s->set_decay(step->decay);
    s->set_scale(step->scale);
    MatrixToTensor(step->P, s->mutable_p());
    MatrixToTensor(step->Q, s->mutable_q());
    s->set_transposed(step->transposed);
  } else if (update.rows.size() > 0) {  // a block of a split parameter: its own shape
    MatrixToTensor(std::get<Matrix>(update.content), proto->mutable_value());
  } else {
    MatrixToTensor(std::get<Matrix>(update.content), shape, proto->mutable_value());
  }
  if (update.rows.size() > 0) {
    proto->set_row_begin(update.rows.begin);
    proto->set_row_end(update.rows.end);
  }
}

absl::StatusOr<VersionUpdate> VersionUpdateFromProto(const v1::VersionUpdate& proto) {
  const std::string where =
      absl::StrCat("version ", proto.version(), " of '", proto.parameter(), "'");
  VersionUpdate update;
  update.parameter = proto.parameter();
  update.version = proto.version();
  update.checksum = proto.checksum();
  if (proto.row_begin() != 0 || proto.row_end() != 0) {
    if (proto.row_begin() < 0 || proto.row_end() <= proto.row_begin()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": rows [", proto.row_begin(), ", ",
                                                     proto.row_end(),
                                                     ") is not a non-empty range"));
    }
    update.rows = RowBlock{proto.row_begin(), proto.row_end()};
  }
  switch (proto.content_case()) {
    case v1::VersionUpdate::kLowRankStep: {
      const v1::LowRankStep& s = proto.low_rank_step();
      absl::StatusOr<Matrix> P = TensorToMatrix(s.p(), absl::StrCat(where, ", P"));
      if (!P.ok()) return P.status();
      absl::StatusOr<Matrix> Q = TensorToMatrix(s.q(), absl::StrCat(where, ", Q"));
      if (!Q.ok()) return Q.status();
      if (P->cols() != Q->cols()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": P has ", P->cols(), " columns but Q has ", Q->cols()));
      }
      if (!std::isfinite(s.decay()) || !std::isfinite(s.scale())) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": decay or scale not finite"));
      }
      update.content = LowRankStep{s.decay(), s.scale(), *std::move(P), *std::move(Q),
                                   s.transposed()};
      break;
    }
    case v1::VersionUpdate::kValue: {
      absl::StatusOr<Matrix> value = TensorToMatrix(proto.value(), absl::StrCat(where, ", value"));
      if (!value.ok()) return value.status();
      update.content = *std::move(value);
      break;
    }
    case v1::VersionUpdate::CONTENT_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": carries neither a low-rank step nor a value"));
  }
  return update;
}

}  // namespace dion
