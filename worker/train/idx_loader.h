// Reader for the IDX files of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/):
// an images file (magic 0x00000803: count, rows, cols, then count*rows*cols unsigned bytes)
// and a labels file (magic 0x00000801: count, then count unsigned bytes), header integers
// big-endian. Either file may be gzip-compressed; compression is recognised by the gzip
// magic bytes (zlib's transparent gzread), never by the file name.
//
// Pixels become floats in [0, 1] (byte / 255) and are then standardised as
// (x - mean) / stddev with a PixelNormalization, by default the Fashion-MNIST training-set
// statistics, so that a Kaiming-initialised MLP starts with well-scaled activations.
//
// Errors name the file: NotFound (no such file), DataLoss (truncated header or data, corrupt
// gzip stream: says how many bytes were expected and found), InvalidArgument (wrong magic,
// with the magic found and the one expected; implausible dimensions; trailing bytes; image
// and label counts that differ; a label >= num_classes).
//
// Thread-safety: the functions are stateless and safe for concurrent use.
#ifndef DION_WORKER_IDX_LOADER_H_
#define DION_WORKER_IDX_LOADER_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/train/dataset.h"

namespace dion {

// feature = (byte / 255 - mean) / stddev.
struct PixelNormalization {
  float mean = 0.0f;
  float stddev = 1.0f;
};

// Mean and standard deviation of byte / 255 over all 60000 x 784 Fashion-MNIST training
// pixels (measured by idx_loader_test's real-data test: 0.28604, 0.35302).
inline constexpr PixelNormalization kFashionMnistNormalization{0.2860f, 0.3530f};
// The same for MNIST (the widely used 0.1307, 0.3081).
inline constexpr PixelNormalization kMnistNormalization{0.1307f, 0.3081f};
// Plain [0, 1] pixels.
inline constexpr PixelNormalization kUnitIntervalPixels{0.0f, 1.0f};

struct IdxLoadOptions {
  PixelNormalization normalization = kFashionMnistNormalization;
  int num_classes = 10;  // every label must be < num_classes
};

// Where Debian's dataset-fashion-mnist package installs the four .gz files.
inline constexpr absl::string_view kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Loads one images file and its labels file: features N x (rows * cols), row-major pixels.
absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path,
                                       const std::string& labels_path,
                                       const IdxLoadOptions& options = {});

// Loads the training set (train-images-idx3-ubyte, train-labels-idx1-ubyte: 60000 samples)
// or the test set (t10k-*: 10000 samples) from `dir`, each file uncompressed or with a .gz
// suffix (the uncompressed name is tried first). NotFound names both candidates.
absl::StatusOr<Dataset> LoadFashionMnist(absl::string_view dir, bool train,
                                         const IdxLoadOptions& options = {});

}  // namespace dion

#endif  // DION_WORKER_IDX_LOADER_H_
