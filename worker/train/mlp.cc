#include "worker/train/mlp.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/rng.h"

namespace dion {
namespace {

template <typename Scalar>
using MatrixT = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename Scalar>
using ConstRefT = Eigen::Ref<const MatrixT<Scalar>>;

// C = op(A) op(B), C already sized. Float goes through BLAS (the hot path); double, used
// only by gradient checks, through Eigen.
void Product(Trans ta, Trans tb, ConstMatrixRef A, ConstMatrixRef B, Matrix& C) {
  Gemm(ta, tb, 1.0f, A, B, 0.0f, C);
}
void Product(Trans ta, Trans tb, const ConstRefT<double>& A, const ConstRefT<double>& B,
             MatrixD& C) {
  if (ta == Trans::kNo && tb == Trans::kNo) C.noalias() = A * B;
  if (ta == Trans::kNo && tb == Trans::kYes) C.noalias() = A * B.transpose();
  if (ta == Trans::kYes && tb == Trans::kNo) C.noalias() = A.transpose() * B;
  if (ta == Trans::kYes && tb == Trans::kYes) C.noalias() = A.transpose() * B.transpose();
}

template <typename Mat>
void ResizeIfNeeded(Mat& M, Eigen::Index rows, Eigen::Index cols) {
  if (M.rows() != rows || M.cols() != cols) M.resize(rows, cols);
}

// Checks that the parameters chain (W_l is d_l x d_{l-1}, b_l is 1 x d_l), that X has
// d_0 columns and one label per row, and that every label names a class.
template <typename Scalar>
absl::Status CheckInputs(absl::Span<const MatrixT<Scalar>* const> params, Eigen::Index x_rows,
                         Eigen::Index x_cols, absl::Span<const int> labels) {
  if (params.size() < 2 || params.size() % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mlp: got ", params.size(), " parameters: expected (weight, bias) pairs, at least one"));
  }
  Eigen::Index width = x_cols;
  for (size_t k = 0; k < params.size(); k += 2) {
    const MatrixT<Scalar>* W = params[k];
    const MatrixT<Scalar>* b = params[k + 1];
    const std::string layer = absl::StrCat("fc", k / 2 + 1);
    if (W == nullptr || b == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("mlp: ", layer, " parameter is null"));
    }
    if (W->cols() != width || W->rows() < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("mlp: ", layer, ".weight is ", W->rows(), " x ", W->cols(),
                       ": expected ", width, " columns (the ", k == 0 ? "input" : "previous layer",
                       " width)"));
    }
    if (b->rows() != 1 || b->cols() != W->rows()) {
      return absl::InvalidArgumentError(absl::StrCat("mlp: ", layer, ".bias is ", b->rows(),
                                                     " x ", b->cols(), ": expected 1 x ",
                                                     W->rows()));
    }
    width = W->rows();
  }
  if (x_rows < 1) return absl::InvalidArgumentError("mlp: empty batch: expected >= 1 rows");
  if (static_cast<Eigen::Index>(labels.size()) != x_rows) {
    return absl::InvalidArgumentError(absl::StrCat("mlp: batch has ", x_rows, " rows but ",
                                                   labels.size(), " labels"));
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= width) {
      return absl::InvalidArgumentError(absl::StrCat("mlp: label[", i, "] = ", labels[i],
                                                     ": expected 0 <= label < ", width));
    }
  }
  return absl::OkStatus();
}

// ws.A[l] = ReLU(A_{l-1} W_l^T + b_l), the last layer without ReLU (the logits).
template <typename Scalar>
void Forward(absl::Span<const MatrixT<Scalar>* const> params, const ConstRefT<Scalar>& X,
             MlpWorkspaceT<Scalar>& ws) {
  const size_t layers = params.size() / 2;
  ws.A.resize(layers);
  ws.D.resize(layers);
  for (size_t l = 0; l < layers; ++l) {
    const MatrixT<Scalar>& W = *params[2 * l];
    MatrixT<Scalar>& Z = ws.A[l];
    ResizeIfNeeded(Z, X.rows(), W.rows());
    if (l == 0) {
      Product(Trans::kNo, Trans::kYes, X, W, Z);
    } else {
      Product(Trans::kNo, Trans::kYes, ws.A[l - 1], W, Z);
    }
    Z.rowwise() += params[2 * l + 1]->row(0);
    if (l + 1 < layers) Z = Z.cwiseMax(Scalar(0));
  }
}

// Mean cross-entropy of softmax(logits) against labels, and its gradient with respect to
// the logits into dlogits (if non-null): (softmax - onehot) / B. Log-sum-exp subtracts
// the row maximum first, so no exp overflows.
template <typename Scalar>
double SoftmaxCrossEntropy(const MatrixT<Scalar>& logits, absl::Span<const int> labels,
                           MatrixT<Scalar>* dlogits) {
  const Eigen::Index batch = logits.rows();
  if (dlogits != nullptr) ResizeIfNeeded(*dlogits, batch, logits.cols());
  const Scalar inv_batch = Scalar(1) / static_cast<Scalar>(batch);
  double total = 0.0;
  for (Eigen::Index r = 0; r < batch; ++r) {
    const auto row = logits.row(r);
    const Scalar top = row.maxCoeff();
    Scalar sum;
    if (dlogits != nullptr) {
      auto d = dlogits->row(r);
      d = (row.array() - top).exp().matrix();
      sum = d.sum();
      d *= inv_batch / sum;
      d(labels[r]) -= inv_batch;
    } else {
      sum = (row.array() - top).exp().sum();
    }
    total += static_cast<double>(top + std::log(sum) - row(labels[r]));
  }
  return total / static_cast<double>(batch);
}

template <typename Scalar>
absl::StatusOr<Scalar> LossAndGradientsImpl(absl::Span<const MatrixT<Scalar>* const> params,
                                            const ConstRefT<Scalar>& X,
                                            absl::Span<const int> labels,
                                            std::vector<MatrixT<Scalar>>* grads,
                                            MlpWorkspaceT<Scalar>* ws) {
  if (absl::Status s = CheckInputs<Scalar>(params, X.rows(), X.cols(), labels); !s.ok()) return s;
  Forward<Scalar>(params, X, *ws);
  const size_t layers = params.size() / 2;
  const double loss = SoftmaxCrossEntropy<Scalar>(ws->A[layers - 1], labels,
                                                  grads != nullptr ? &ws->D[layers - 1] : nullptr);
  if (grads == nullptr) return static_cast<Scalar>(loss);

  if (grads->size() != params.size()) grads->resize(params.size());
  for (size_t l = layers; l-- > 0;) {
    const MatrixT<Scalar>& W = *params[2 * l];
    const MatrixT<Scalar>& D = ws->D[l];  // d loss / d Z_l, B x d_l
    const ConstRefT<Scalar> A_prev = l == 0 ? ConstRefT<Scalar>(X) : ConstRefT<Scalar>(ws->A[l - 1]);
    MatrixT<Scalar>& dW = (*grads)[2 * l];
    MatrixT<Scalar>& db = (*grads)[2 * l + 1];
    ResizeIfNeeded(dW, W.rows(), W.cols());
    ResizeIfNeeded(db, 1, W.rows());
    Product(Trans::kYes, Trans::kNo, D, A_prev, dW);  // dW = D^T A_{l-1}
    db = D.colwise().sum();
    if (l > 0) {
      // d loss / d Z_{l-1} = (D W) masked by ReLU'(Z_{l-1}), i.e. where A_{l-1} > 0.
      MatrixT<Scalar>& D_prev = ws->D[l - 1];
      ResizeIfNeeded(D_prev, D.rows(), W.cols());
      Product(Trans::kNo, Trans::kNo, D, W, D_prev);
      D_prev.array() = (ws->A[l - 1].array() > Scalar(0)).select(D_prev.array(), Scalar(0));
    }
  }
  return static_cast<Scalar>(loss);
}

}  // namespace

absl::Status ValidateMlpOptions(const MlpOptions& options) {
  if (options.layer_sizes.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mlp layer_sizes has ", options.layer_sizes.size(),
        " entries: expected at least 2 (input dimension ... number of classes)"));
  }
  for (size_t i = 0; i < options.layer_sizes.size(); ++i) {
    if (options.layer_sizes[i] < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "mlp layer_sizes[", i, "] = ", options.layer_sizes[i], ": expected >= 1"));
    }
  }
  if (options.other_optimizer != OptimizerKind::kAdamW &&
      options.other_optimizer != OptimizerKind::kLion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mlp other_optimizer ", OptimizerKindName(options.other_optimizer),
        ": expected adamw or lion for the biases and the output weight"));
  }
  std::vector<OptimizerKind> used = {options.other_optimizer};
  if (options.layer_sizes.size() > 2) used.push_back(options.hidden_optimizer);
  for (OptimizerKind kind : used) {
    absl::Status s;
    switch (kind) {
      case OptimizerKind::kDion: s = ValidateDionConfig(options.dion); break;
      case OptimizerKind::kAdamW: s = ValidateAdamWConfig(options.adamw); break;
      case OptimizerKind::kLion: s = ValidateLionConfig(options.lion); break;
      case OptimizerKind::kMuon: s = ValidateMuonConfig(options.muon); break;
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ParamSpec>> ParameterTable(const MlpOptions& options) {
  if (absl::Status s = ValidateMlpOptions(options); !s.ok()) return s;
  std::vector<ParamSpec> table;
  const size_t layers = options.layer_sizes.size() - 1;
  for (size_t l = 0; l < layers; ++l) {
    const int64_t in = options.layer_sizes[l];
    const int64_t out = options.layer_sizes[l + 1];
    const bool head = l + 1 == layers;
    ParamSpec weight;
    weight.name = absl::StrCat("fc", l + 1, ".weight");
    weight.shape = {out, in};
    weight.optimizer = head ? options.other_optimizer : options.hidden_optimizer;
    weight.dion = options.dion;
    weight.adamw = options.adamw;
    weight.lion = options.lion;
    weight.muon = options.muon;
    weight.init = {InitSpec::Kind::kKaiming, 1.0, MixSeed(options.seed, table.size())};
    table.push_back(weight);

    ParamSpec bias;
    bias.name = absl::StrCat("fc", l + 1, ".bias");
    bias.shape = {out};
    bias.optimizer = options.other_optimizer;
    bias.adamw = options.adamw;
    bias.lion = options.lion;
    bias.init = {InitSpec::Kind::kZeros, 1.0, MixSeed(options.seed, table.size())};
    table.push_back(bias);
  }
  for (const ParamSpec& spec : table) {
    if (absl::Status s = ValidateParamSpec(spec); !s.ok()) return s;
  }
  return table;
}

void SplitLargeMatrices(int64_t threshold, int num_shards, std::vector<ParamSpec>& table) {
  if (threshold <= 0 || num_shards < 2) return;
  for (ParamSpec& spec : table) {
    if (spec.optimizer != OptimizerKind::kDion || spec.shape.size() != 2) continue;
    if (spec.size() < threshold) continue;
    const int64_t tall = std::max(spec.rows(), spec.cols());
    const int owners =
        static_cast<int>(std::min<int64_t>({num_shards, tall, kMaxSplitOwners}));
    if (owners >= 2) spec.split_owners = owners;
  }
}

std::vector<Matrix> InitialParameters(absl::Span<const ParamSpec> table) {
  std::vector<Matrix> params;
  params.reserve(table.size());
  for (const ParamSpec& spec : table) params.push_back(InitialValue(spec));
  return params;
}

absl::StatusOr<float> LossAndGradients(absl::Span<const Matrix* const> params, ConstMatrixRef X,
                                       absl::Span<const int> labels, std::vector<Matrix>* grads,
                                       MlpWorkspace* ws) {
  return LossAndGradientsImpl<float>(params, X, labels, grads, ws);
}

absl::StatusOr<double> LossAndGradients(absl::Span<const MatrixD* const> params,
                                        Eigen::Ref<const MatrixD> X, absl::Span<const int> labels,
                                        std::vector<MatrixD>* grads, MlpWorkspaceD* ws) {
  return LossAndGradientsImpl<double>(params, X, labels, grads, ws);
}

absl::StatusOr<Evaluation> Evaluate(absl::Span<const Matrix* const> params, const Dataset& data,
                                    int batch_size, MlpWorkspace* ws) {
  if (batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("evaluate: batch_size = ", batch_size, ": expected >= 1"));
  }
  if (data.size() == 0) return absl::InvalidArgumentError("evaluate: the data set is empty");
  if (absl::Status s = ValidateDataset(data); !s.ok()) return s;
  MlpWorkspace local;
  if (ws == nullptr) ws = &local;
  double loss_sum = 0.0;
  int64_t correct = 0;
  for (int64_t start = 0; start < data.size(); start += batch_size) {
    const int64_t rows = std::min<int64_t>(batch_size, data.size() - start);
    const ConstMatrixRef X = data.features.middleRows(start, rows);
    const absl::Span<const int> labels = absl::MakeConstSpan(data.labels).subspan(start, rows);
    absl::StatusOr<float> loss = LossAndGradients(params, X, labels, nullptr, ws);
    if (!loss.ok()) return loss.status();
    loss_sum += static_cast<double>(*loss) * static_cast<double>(rows);
    const Matrix& logits = ws->A.back();
    for (int64_t r = 0; r < rows; ++r) {
      Eigen::Index predicted = 0;
      logits.row(r).maxCoeff(&predicted);
      correct += predicted == labels[r];
    }
  }
  Evaluation result;
  result.samples = data.size();
  result.loss = loss_sum / static_cast<double>(data.size());
  result.accuracy = static_cast<double>(correct) / static_cast<double>(data.size());
  return result;
}

}  // namespace dion
