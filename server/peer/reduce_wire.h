// The ShardPeer.Reduce messages (proto/dion/v1/peer.proto) as the hub's types. Unlike the
// worker-facing tensors (common/wire.h), values are not checked: a reduction carries NaN and
// Inf as they are, so that every owner sees the same sum and takes the same decision.
//
// Thread-safety: pure functions.
#ifndef DION_SERVER_PEER_REDUCE_WIRE_H_
#define DION_SERVER_PEER_REDUCE_WIRE_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/matrix.h"
#include "dion/v1/peer.pb.h"
#include "server/peer/reduce_hub.h"

namespace dion {

// A 2-D tensor {rows, cols}, each >= 1, at most 2^31 - 1 elements, 4 * rows * cols bytes.
// InvalidArgument naming `what` and the expectation otherwise.
absl::StatusOr<Matrix> ReduceTensorToMatrix(const v1::Tensor& tensor, absl::string_view what);

// The request as a part, validated (ValidateReducePart).
absl::StatusOr<ReducePart> ReducePartFromProto(const v1::ReduceRequest& request);

// The request carrying `value` as `owner`'s part of `key`.
void ReducePartToProto(const ReduceKey& key, absl::string_view tag, int32_t owner,
                       int32_t owners, ConstMatrixRef value, v1::ReduceRequest* request);

}  // namespace dion

#endif  // DION_SERVER_PEER_REDUCE_WIRE_H_
