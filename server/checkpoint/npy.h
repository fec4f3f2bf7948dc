// Reading and writing numpy .npy files: the on-disk form of every checkpointed tensor, so
// that `numpy.load` reads a checkpoint without any dion-ps code.
//
// Supported: format version 1.0 for writing (1.0, 2.0 and 3.0 for reading, which differ only
// in the header-length field), little-endian '<f4', '<f8' and '<i8', C order, 1-D and 2-D
// shapes (any dimension may be 0). Headers are written byte for byte as numpy 1.24's
// `np.save` writes them, padded so the data starts at a multiple of 64 bytes.
//
// Every error names the file (or the `source` label of an in-memory buffer) and what was
// expected, e.g. "/ckpt/w.npy: truncated: expected 4096 data bytes, found 100". Malformed or
// truncated files are DATA_LOSS; well-formed files this reader does not support (big-endian,
// another dtype, fortran_order True, 0-D or 3-D) are INVALID_ARGUMENT; an unopenable file
// is NOT_FOUND or the errno's code.
//
// Thread-safety: free functions on caller-owned values; safe to call concurrently on
// different files.
#ifndef DION_SERVER_CHECKPOINT_NPY_H_
#define DION_SERVER_CHECKPOINT_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/matrix.h"

namespace dion {

enum class NpyDtype {
  kFloat32,  // '<f4'
  kFloat64,  // '<f8'
  kInt64,    // '<i8'
};

// "<f4", "<f8", "<i8".
absl::string_view NpyDescr(NpyDtype dtype);
// Bytes per element: 4 or 8.
int NpyItemSize(NpyDtype dtype);

// A decoded array. Exactly one of f32 / f64 / i64 holds the elements: the one matching dtype.
// A 1-D shape {n} is held as a 1 x n matrix, a 2-D shape {rows, cols} as rows x cols.
struct NpyArray {
  NpyDtype dtype = NpyDtype::kFloat32;
  std::vector<int64_t> shape;  // 1-D {n} or 2-D {rows, cols}
  Matrix f32;                  // dtype == kFloat32
  MatrixD f64;                 // dtype == kFloat64
  std::vector<int64_t> i64;    // dtype == kInt64, row-major, rows() * cols() elements

  int64_t rows() const { return shape.size() == 2 ? shape[0] : 1; }
  int64_t cols() const { return shape.empty() ? 0 : shape.back(); }
  int64_t num_elements() const { return rows() * cols(); }
};

// The complete header (magic, version 1.0, length, dict, padding, '\n') for an array of this
// dtype and shape; its size is a multiple of 64. INVALID_ARGUMENT unless the shape is 1-D or
// 2-D with non-negative dimensions whose byte size fits in int64.
absl::StatusOr<std::string> EncodeNpyHeader(NpyDtype dtype, absl::Span<const int64_t> shape);

// Header followed by `data`, which must hold exactly the shape's byte size of little-endian,
// row-major elements.
absl::StatusOr<std::string> EncodeNpy(NpyDtype dtype, absl::Span<const int64_t> shape,
                                      absl::string_view data);

// The raw element bytes of a matrix / vector, for EncodeNpy or streaming writers. The view
// aliases the argument and lives as long as it does.
absl::string_view RawBytes(const Matrix& m);
absl::string_view RawBytes(const MatrixD& m);
absl::string_view RawBytes(absl::Span<const int64_t> values);

// The .npy shape of a matrix: {rows, cols}, or {cols} if one_dimensional (which requires
// m.rows() == 1: 1-D parameters are 1 x n matrices throughout dion-ps).
absl::StatusOr<std::vector<int64_t>> NpyShapeOf(int64_t rows, int64_t cols, bool one_dimensional);

// Writes a whole file (not fsynced: checkpoints go through CheckpointWriter, which is durable).
absl::Status WriteNpy(const std::string& path, const Matrix& m, bool one_dimensional = false);
absl::Status WriteNpyFloat64(const std::string& path, const MatrixD& m,
                             bool one_dimensional = false);
absl::Status WriteNpyInt64(const std::string& path, absl::Span<const int64_t> values);

// Parses an in-memory .npy image. `source` names it in error messages.
absl::StatusOr<NpyArray> DecodeNpy(absl::string_view bytes, absl::string_view source = "<memory>");

// Reads and validates a .npy file (magic, version, header dict, file size against shape).
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// Reads a float32 array as a matrix (1-D as 1 x n). A float64 array is narrowed to float32
// only if allow_float64; otherwise, like an int64 array, it is INVALID_ARGUMENT.
absl::StatusOr<Matrix> ReadNpyMatrix(const std::string& path, bool allow_float64 = false);

}  // namespace dion

#endif  // DION_SERVER_CHECKPOINT_NPY_H_
