// An in-memory labelled classification data set: one float feature row per sample and an
// integer class label per sample. The IDX loader, the synthetic teacher task and the
// partitioner all speak this type; the MLP reads batches of its rows.
//
// Thread-safety: a plain value type. Concurrent reads of one Dataset are safe; the helpers
// below only read `data` and write their own outputs.
#ifndef DION_WORKER_DATASET_H_
#define DION_WORKER_DATASET_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/matrix.h"

namespace dion {

struct Dataset {
  Matrix features;          // N x d, row i is sample i
  std::vector<int> labels;  // N labels, each in [0, num_classes)
  int num_classes = 0;

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t dim() const { return features.cols(); }
};

// OK when features has one row per label and every label lies in [0, num_classes).
inline absl::Status ValidateDataset(const Dataset& data) {
  if (data.features.rows() != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat("dataset has ", data.features.rows(),
                                                   " feature rows but ", data.size(),
                                                   " labels: expected one label per row"));
  }
  if (data.num_classes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset num_classes = ", data.num_classes, ": expected >= 1"));
  }
  for (int64_t i = 0; i < data.size(); ++i) {
    if (data.labels[i] < 0 || data.labels[i] >= data.num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("dataset label[", i, "] = ", data.labels[i],
                                                     ": expected 0 <= label < ",
                                                     data.num_classes));
    }
  }
  return absl::OkStatus();
}

// Copies the samples `indices` (each in [0, data.size())) into X (|indices| x d) and
// `labels`, resizing them only when the batch size changes, so a training loop with a fixed
// batch size gathers without allocating. REQUIRES: every index in range.
inline void GatherBatch(const Dataset& data, absl::Span<const int64_t> indices, Matrix* X,
                        std::vector<int>* labels) {
  const auto n = static_cast<Eigen::Index>(indices.size());
  if (X->rows() != n || X->cols() != data.dim()) X->resize(n, data.dim());
  labels->resize(indices.size());
  for (Eigen::Index i = 0; i < n; ++i) {
    X->row(i) = data.features.row(indices[i]);
    (*labels)[i] = data.labels[indices[i]];
  }
}

// The data set restricted to `indices`, in that order (e.g. one worker's partition).
// REQUIRES: every index in [0, data.size()).
inline Dataset Subset(const Dataset& data, absl::Span<const int64_t> indices) {
  Dataset subset;
  subset.num_classes = data.num_classes;
  GatherBatch(data, indices, &subset.features, &subset.labels);
  return subset;
}

}  // namespace dion

#endif  // DION_WORKER_DATASET_H_
