// Dense matrix types shared by every component of dion-ps.
//
// All matrices are row-major, like numpy arrays, .npy files and the wire format: element
// (i, j) of an m x n matrix sits at data[i * n + j]. Float32 is the storage and compute type;
// double is used only by tests and by numerically sensitive diagnostics.
//
// Thread-safety: these are plain value types; the usual rules for Eigen objects apply.
#ifndef DION_COMMON_MATRIX_H_
#define DION_COMMON_MATRIX_H_

#include <Eigen/Core>

namespace dion {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXf;

// Mutable and read-only views of a row-major float matrix (contiguous rows, any row stride).
using MatrixRef = Eigen::Ref<Matrix>;
using ConstMatrixRef = Eigen::Ref<const Matrix>;

// True when every entry is finite. NaN * 0 and Inf * 0 are NaN, so one vectorised sum
// answers; Eigen's allFinite() is ~80x slower on a 4096 x 1024 matrix (ortho_bench notes).
inline bool AllFinite(ConstMatrixRef A) { return (A.array() * 0.0f).sum() == 0.0f; }

}  // namespace dion

#endif  // DION_COMMON_MATRIX_H_
