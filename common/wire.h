// Conversion between the wire messages (proto/dion/v1/dion.proto) and the types shared by the
// server and the worker. This is where protobuf meets Eigen: everything behind it works on
// dion::Matrix, ParamSpec and the structs of common/. (server/wire.h adds the server-only
// conversion of a parameter snapshot with its optimizer state.)
//
// Tensor rule: shape {n} or {rows, cols}, every dimension >= 1, at most 2^31 - 1 elements,
// data = 4 * elements bytes of little-endian float32 in row-major order, every value finite.
// A 1-D tensor {n} becomes a 1 x n matrix. Errors are InvalidArgument naming the tensor
// (`what`) and what was expected.
//
// Thread-safety: pure functions.
#ifndef DION_COMMON_WIRE_H_
#define DION_COMMON_WIRE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/matrix.h"
#include "common/param_spec.h"
#include "dion/v1/dion.pb.h"
#include "common/contribution.h"
#include "common/layout.h"
#include "common/model_table.h"
#include "common/version_update.h"

namespace dion {

// Tensors. Entries must be finite: a NaN or Inf (or a contribution's non-finite loss) is a
// NonFiniteError (common/contribution.h), so a shard can count non-finite pushes apart.
absl::StatusOr<Matrix> TensorToMatrix(const v1::Tensor& tensor, absl::string_view what);
// The same, and the tensor's shape must equal `expected_shape` exactly.
absl::StatusOr<Matrix> TensorToMatrix(const v1::Tensor& tensor,
                                      absl::Span<const int64_t> expected_shape,
                                      absl::string_view what);
// Writes M with shape {rows, cols}.
void MatrixToTensor(ConstMatrixRef M, v1::Tensor* tensor);
// Writes M with the given shape. REQUIRES: the product of `shape` equals M.size().
void MatrixToTensor(ConstMatrixRef M, absl::Span<const int64_t> shape, v1::Tensor* tensor);

// Enumerations. Unspecified or unknown values are InvalidArgument.
absl::StatusOr<OptimizerKind> OptimizerKindFromProto(v1::OptimizerKind kind);
v1::OptimizerKind OptimizerKindToProto(OptimizerKind kind);

// The parameter table. Unset optional hyper-parameters take the defaults of common/; the
// hyper-parameter message must match the optimizer; an initial value must have the parameter's
// shape; the result passes ValidateParamSpec.
absl::StatusOr<ParameterDefinition> ParameterFromProto(const v1::ParameterSpec& proto);
// Every hyper-parameter field of the spec's optimizer set explicitly; the init spec, no value.
void ParameterToProto(const ParamSpec& spec, v1::ParameterSpec* proto);
// The whole table, validated with ValidateModelTable.
absl::StatusOr<ModelTable> ModelTableFromProto(const v1::RegisterModelRequest& request);
// Sets the table's name and appends its specs and explicit initial values to `request`'s
// parameters (empty in every caller); leaves worker_id as it is.
void ModelTableToProto(const ModelTable& table, v1::RegisterModelRequest* request);
void LayoutToProto(const Layout& layout, v1::Layout* proto);

// Whether decoding a contribution checks its tensors' values for NaN and Inf. A shard decodes
// with kLeaveToValidation: its validation (common/contribution.h) scans the values once.
enum class PayloadValues { kCheck, kLeaveToValidation };

// A pushed contribution. Checks what the message alone can tell: tensors well formed (and
// finite with kCheck), factors 2-D with equally many columns, a payload present, loss finite.
// When `spec` is given, a dense gradient must have exactly spec->shape (so {1, n} is not
// accepted for a 1-D {n} parameter); everything else about the spec is validation's to check.
absl::StatusOr<Contribution> ContributionFromProto(const v1::Contribution& proto,
                                                   const ParamSpec* spec = nullptr,
                                                   PayloadValues values = PayloadValues::kCheck);
// For clients and tests. A dense gradient is written with shape {rows, cols}, or with
// `gradient_shape` when it is not empty.
void ContributionToProto(const Contribution& contribution, v1::Contribution* proto,
                         absl::Span<const int64_t> gradient_shape = {});

// Versions and values. A full value is written with `shape` (the parameter's shape).
void VersionUpdateToProto(const VersionUpdate& update, absl::Span<const int64_t> shape,
                          v1::VersionUpdate* proto);
absl::StatusOr<VersionUpdate> VersionUpdateFromProto(const v1::VersionUpdate& proto);

}  // namespace dion

#endif  // DION_COMMON_WIRE_H_
