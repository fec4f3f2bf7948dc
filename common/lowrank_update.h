// The rank-r weight update X = decay X - scale A B^T, computed by one kernel of the project's
// own whose result is the same bits on every CPU, so that a worker's replica reproduces its
// shard's weights exactly whatever the two machines' CPU models (docs/protocol.md,
// "Broadcasts and checksums").
//
// Definition (every conforming build computes exactly this, in IEEE float32 with round to
// nearest): for each element,
//   s = +0; for k = 0, 1, ..., r - 1: s = s + A(i, k) * B(j, k)   (product rounded, then sum)
//   X(i, j) = decay * X(i, j) - scale * s                          (each operation rounded)
// The summation order is fixed and no operation is fused: common/CMakeLists.txt compiles the
// kernel with -ffp-contract=off, and nothing dispatches on the CPU at run time. Vector width
// does not matter: each vector lane carries one element's sequence of operations. A BLAS sgemm
// gives no such promise (OpenBLAS picks its kernel, blocking and FMA use by CPU model).
//
// Thread-safety: a pure function of its arguments; calls on distinct X may run concurrently.
#ifndef DION_COMMON_LOWRANK_UPDATE_H_
#define DION_COMMON_LOWRANK_UPDATE_H_

#include "common/matrix.h"

namespace dion {

// X = decay X - scale A B^T with X m x n, A m x r, B n x r (all row-major). Allocates a
// packed copy of B (at most n x r floats). A large update runs on up to `threads` threads (the caller
// and threads it starts and joins), which share out groups of X's columns as they go; the
// bits are the definition's whatever the thread count. REQUIRES: the shapes agree (checked by
// assertion only); X does not alias A or B; threads >= 1.
void LowRankUpdate(MatrixRef X, float decay, float scale, ConstMatrixRef A, ConstMatrixRef B,
                   int threads = 1);

}  // namespace dion

#endif  // DION_COMMON_LOWRANK_UPDATE_H_
