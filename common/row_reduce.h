// Sums of small matrices across the owners of one row-split parameter: what the shards that
// own the row blocks of one Dion matrix exchange during its step (docs/algorithm.md, "One
// matrix over many shards"). The step itself is in common/dion_rows.h; the transport between
// shards (gRPC) implements RowReducer in server/, and tests use an in-process one.
//
// Thread-safety: one RowReducer serves one owner's step of one parameter and is used from
// one thread at a time; implementations say whether distinct instances may share state.
#ifndef DION_COMMON_ROW_REDUCE_H_
#define DION_COMMON_ROW_REDUCE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/matrix.h"

namespace dion {

// The rows [begin, end) of the tall side (Dion's orientation: rows of X when rows >= cols,
// columns of X otherwise) that one owner of a split parameter holds.
struct RowBlock {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const RowBlock& other) const {
    return begin == other.begin && end == other.end;
  }
};

// Contiguous, balanced blocks of `rows` rows over `owners`: the first rows % owners blocks
// have one row more. REQUIRES 1 <= owners <= rows, 0 <= index < owners.
RowBlock SplitRowBlock(int64_t rows, int owners, int index);

// The rows `block` of the tall side of the whole matrix X, as a matrix of their own: X's rows
// [begin, end) when X.rows() >= X.cols(), else X's columns [begin, end). REQUIRES: the block
// lies within the tall side.
Matrix CopyRowBlock(ConstMatrixRef X, RowBlock block);

class RowReducer {
 public:
  virtual ~RowReducer() = default;

  // Number of owners of the parameter (>= 1) and this owner's index in row order.
  virtual int owners() const = 0;
  virtual int index() const = 0;

  // Replaces `part` by the sum over every owner of its `part`. Every owner of one step calls
  // AllReduce the same number of times, in the same order, with the same shapes; `tag` names
  // the call ("gram", "sketch", "R") for metrics and messages. Every owner receives the same
  // bits: the parts are added in owner order, in double precision, and rounded to float once.
  // An error (a peer unreachable, a deadline passed, shapes that disagree) means the step
  // must be abandoned by every owner; `part` is unspecified then.
  virtual absl::Status AllReduce(absl::string_view tag, MatrixRef part) = 0;
};

}  // namespace dion

#endif  // DION_COMMON_ROW_REDUCE_H_
