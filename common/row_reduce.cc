#include "common/row_reduce.h"

#include <algorithm>
#include <cassert>

namespace dion {

RowBlock SplitRowBlock(int64_t rows, int owners, int index) {
  assert(owners >= 1 && owners <= rows && index >= 0 && index < owners);
  const int64_t base = rows / owners, extra = rows % owners;
  RowBlock block;
  block.begin = index * base + std::min<int64_t>(index, extra);
  block.end = block.begin + base + (index < extra ? 1 : 0);
  return block;
}

Matrix CopyRowBlock(ConstMatrixRef X, RowBlock block) {
  if (X.rows() >= X.cols()) return X.middleRows(block.begin, block.size());
  return X.middleCols(block.begin, block.size());
}

}  // namespace dion
