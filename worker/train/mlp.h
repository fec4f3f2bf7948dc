// A multilayer-perceptron classifier: layers of sizes d_0 (input) -> d_1 -> ... -> d_L
// (classes), ReLU between layers, softmax cross-entropy loss averaged over the batch.
//
// The model owns no weights. Its parameter table (ParameterTable) is what the servers store;
// the worker's client library owns the replica and passes the current weights to
// LossAndGradients / Evaluate in table order:
//   fc1.weight {d_1, d_0}, fc1.bias {d_1}, fc2.weight {d_2, d_1}, fc2.bias {d_2}, ...
// Each weight is an out x in Matrix, each bias a 1 x out Matrix, and a layer computes
// Z = A W^T + b on a batch A with one sample per row.
//
// Optimizers (docs/algorithm.md, "Other optimizers on the same server"): hidden weights use
// Dion; biases and the output head use AdamW, since Dion on the head "runs without error but
// performs poorly". For comparisons the hidden weights can use AdamW, Lion or Muon instead,
// and the biases and the head Lion.
//
// Thread-safety: the functions are stateless apart from their workspace and gradient
// outputs; concurrent calls are safe if each uses its own workspace and grads (the
// parameters are only read).
#ifndef DION_WORKER_MLP_H_
#define DION_WORKER_MLP_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dion.h"
#include "common/elementwise_optimizers.h"
#include "common/matrix.h"
#include "common/muon.h"
#include "common/param_spec.h"
#include "worker/train/dataset.h"

namespace dion {

struct MlpOptions {
  // Input dimension, hidden widths, number of classes (at least 2 entries, each >= 1).
  std::vector<int> layer_sizes = {784, 256, 128, 10};
  // Hyper-parameters of the hidden weights; dion.rank_fraction sets their rank, which is
  // DionRank(out, in, rank_fraction, rank_multiple_of) = ceil(fraction * min(out, in)),
  // at least 1, as ParamSpec::rank() computes it everywhere else.
  DionConfig dion;
  // Hyper-parameters of the biases and the output weight.
  AdamWConfig adamw;
  // Optimizer of the hidden weights: Dion, AdamW, Lion or Muon.
  OptimizerKind hidden_optimizer = OptimizerKind::kDion;
  // Optimizer of the biases and the output weight: AdamW or Lion.
  OptimizerKind other_optimizer = OptimizerKind::kAdamW;
  LionConfig lion;  // of every parameter whose optimizer is Lion
  MuonConfig muon;  // of the hidden weights when they use Muon
  // Parameter i (table order, from 0) is initialised from seed MixSeed(seed, i): weights
  // Kaiming N(0, 2 / fan_in), biases zero.
  uint64_t seed = 0;
};

// InvalidArgument naming the field if the layer sizes, an optimizer choice or the config of
// an optimizer in use is bad.
absl::Status ValidateMlpOptions(const MlpOptions& options);

// The parameter table, in the order LossAndGradients expects; every spec passes
// ValidateParamSpec.
absl::StatusOr<std::vector<ParamSpec>> ParameterTable(const MlpOptions& options);

// Splits every 2-D Dion matrix of `table` with at least `threshold` elements by rows of its
// tall side over the shards (docs/worker.md, "Split parameters"): split_owners = num_shards,
// at most the tall side's length (dion-worker --split_threshold, default
// defaults::kSplitThreshold). threshold 0 or a single shard: nothing is split.
void SplitLargeMatrices(int64_t threshold, int num_shards, std::vector<ParamSpec>& table);

// InitialValue of every spec, in table order (a fresh replica, as the servers start).
std::vector<Matrix> InitialParameters(absl::Span<const ParamSpec> table);

// Views of a replica in table order, for the Span arguments below.
template <typename Scalar>
std::vector<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>*>
ParameterViews(
    const std::vector<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>&
        params) {
  std::vector<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>*> views;
  for (const auto& p : params) views.push_back(&p);
  return views;
}

// Scratch buffers reused across calls so that a training step with a fixed batch size
// allocates nothing after the first. One per thread; contents are meaningless between calls.
template <typename Scalar>
struct MlpWorkspaceT {
  using MatrixT = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::vector<MatrixT> A;  // A[i]: layer i's output (after ReLU except for the logits)
  std::vector<MatrixT> D;  // D[i]: d loss / d Z_i, Z_i the pre-activation of layer i
};
using MlpWorkspace = MlpWorkspaceT<float>;
using MlpWorkspaceD = MlpWorkspaceT<double>;

// Mean softmax cross-entropy of the batch X (B x d_0, one sample per row, B >= 1) with
// `labels` (B entries in [0, d_L)), and, unless grads is null, its gradient with respect to
// every parameter: (*grads)[k] gets params[k]'s shape (resized only if it differs).
// InvalidArgument (nothing written) if the shapes do not chain, X's width or the label
// count is wrong, or a label is out of range. GEMMs go through common/blas.h.
absl::StatusOr<float> LossAndGradients(absl::Span<const Matrix* const> params, ConstMatrixRef X,
                                       absl::Span<const int> labels, std::vector<Matrix>* grads,
                                       MlpWorkspace* ws);
// The same in double precision (Eigen products), for gradient checks and references.
absl::StatusOr<double> LossAndGradients(absl::Span<const MatrixD* const> params,
                                        Eigen::Ref<const MatrixD> X, absl::Span<const int> labels,
                                        std::vector<MatrixD>* grads, MlpWorkspaceD* ws);

struct Evaluation {
  double loss = 0;       // mean cross-entropy over the data set
  double accuracy = 0;   // fraction of samples whose argmax logit is the label
  int64_t samples = 0;
};

// Loss and accuracy of the model on all of `data`, in batches of `batch_size` rows.
// `ws` may be null (a local workspace is used). InvalidArgument as LossAndGradients, or if
// batch_size < 1 or the data set is empty or malformed.
absl::StatusOr<Evaluation> Evaluate(absl::Span<const Matrix* const> params, const Dataset& data,
                                    int batch_size, MlpWorkspace* ws = nullptr);

}  // namespace dion

#endif  // DION_WORKER_MLP_H_
