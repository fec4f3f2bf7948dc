#include "server/peer/reduce_wire.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/wire.h"

namespace dion {

absl::StatusOr<Matrix> ReduceTensorToMatrix(const v1::Tensor& tensor, absl::string_view what) {
  if (tensor.shape_size() != 2 || tensor.shape(0) < 1 || tensor.shape(1) < 1) {
    std::string shape;
    for (int64_t d : tensor.shape()) absl::StrAppend(&shape, shape.empty() ? "" : ", ", d);
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must be a 2-D tensor with dimensions >= 1, got shape {", shape, "}"));
  }
  const int64_t rows = tensor.shape(0);
  const int64_t cols = tensor.shape(1);
  if (rows > ((int64_t{1} << 31) - 1) / cols) {
    return absl::InvalidArgumentError(absl::StrCat(what, " of ", rows, " x ", cols,
                                                   " holds more than 2^31 - 1 elements"));
  }
  const int64_t bytes = rows * cols * int64_t{sizeof(float)};
  if (static_cast<int64_t>(tensor.data().size()) != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " of ", rows, " x ", cols, " needs ",
                                                   bytes, " bytes of data, got ",
                                                   tensor.data().size()));
  }
  Matrix m(rows, cols);
  std::memcpy(m.data(), tensor.data().data(), bytes);
  return m;
}

absl::StatusOr<ReducePart> ReducePartFromProto(const v1::ReduceRequest& request) {
  ReducePart part;
  part.key.parameter = request.parameter();
  part.key.step = request.step();
  part.key.round = request.round();
  part.key.attempt = request.attempt();
  part.tag = request.tag();
  part.owner = request.owner();
  part.owners = request.owners();
  absl::StatusOr<Matrix> value = ReduceTensorToMatrix(request.part(), "the part");
  if (!value.ok()) return value.status();
  part.value = *std::move(value);
  if (absl::Status s = ValidateReducePart(part); !s.ok()) return s;
  return part;
}

void ReducePartToProto(const ReduceKey& key, absl::string_view tag, int32_t owner,
                       int32_t owners, ConstMatrixRef value, v1::ReduceRequest* request) {
  request->set_parameter(key.parameter);
  request->set_step(key.step);
  request->set_round(key.round);
  request->set_attempt(key.attempt);
  request->set_tag(std::string(tag));
  request->set_owner(owner);
  request->set_owners(owners);
  MatrixToTensor(value, request->mutable_part());
}

}  // namespace dion
