// The MLP: its parameter table (names, shapes, optimizers, ranks, inits), its backward pass
// against central finite differences in double precision, the float (BLAS) path against the
// double one, input validation, workspace reuse, Evaluate, and that plain SGD learns the
// synthetic teacher task.
#include "worker/train/mlp.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "common/rng.h"
#include "worker/train/synthetic_task.h"

namespace dion {
namespace {

// Double-precision replica of `table`'s initial values, with biases made non-zero so that
// their gradients and the ReLU masks are exercised non-trivially.
std::vector<MatrixD> DoubleParams(const std::vector<ParamSpec>& table, uint64_t seed) {
  std::vector<MatrixD> params;
  Rng rng(seed);
  for (const Matrix& p : InitialParameters(table)) {
    MatrixD d = p.cast<double>();
    if (d.rows() == 1) {
      for (Eigen::Index j = 0; j < d.cols(); ++j) d(0, j) = 0.1 * rng.Normal();
    }
    params.push_back(d);
  }
  return params;
}

MatrixD GaussianBatch(int64_t rows, int64_t cols, uint64_t seed) {
  MatrixD X(rows, cols);
  Rng rng(seed);
  for (Eigen::Index i = 0; i < X.size(); ++i) X.data()[i] = rng.Normal();
  return X;
}

std::vector<int> CyclicLabels(int64_t n, int classes) {
  std::vector<int> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<int>((i * 7 + 3) % classes);
  return labels;
}

TEST(MlpParameterTable, NamesShapesOptimizersAndRanksFollowTheLayers) {
  MlpOptions options;  // 784-256-128-10
  options.dion.lr = 0.02;
  options.adamw.lr = 0.003;
  absl::StatusOr<std::vector<ParamSpec>> table = ParameterTable(options);
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->size(), 6u);
  const char* names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight",
                         "fc3.bias"};
  const std::vector<std::vector<int64_t>> shapes = {{256, 784}, {256}, {128, 256},
                                                    {128},      {10, 128}, {10}};
  for (size_t k = 0; k < table->size(); ++k) {
    const ParamSpec& spec = (*table)[k];
    EXPECT_EQ(spec.name, names[k]);
    EXPECT_EQ(spec.shape, shapes[k]) << spec.name;
    EXPECT_TRUE(ValidateParamSpec(spec).ok()) << spec.name;
    const bool hidden_weight = k == 0 || k == 2;
    EXPECT_EQ(spec.optimizer, hidden_weight ? OptimizerKind::kDion : OptimizerKind::kAdamW)
        << spec.name;
    EXPECT_EQ(spec.init.kind, k % 2 == 0 ? InitSpec::Kind::kKaiming : InitSpec::Kind::kZeros);
    if (hidden_weight) {
      EXPECT_EQ(spec.dion.lr, 0.02);
    } else {
      EXPECT_EQ(spec.adamw.lr, 0.003);
    }
    for (size_t j = 0; j < k; ++j) EXPECT_NE(spec.init.seed, (*table)[j].init.seed);
  }
  // rank = ceil(0.25 * min(out, in)): 256 x 784 -> 64, 128 x 256 -> 32.
  EXPECT_EQ((*table)[0].rank(), 64);
  EXPECT_EQ((*table)[2].rank(), 32);
  EXPECT_EQ((*table)[4].rank(), 0);

  options.dion.rank_fraction = 0.1;  // ceil(25.6) = 26, ceil(12.8) = 13
  table = ParameterTable(options);
  ASSERT_TRUE(table.ok());
  EXPECT_EQ((*table)[0].rank(), 26);
  EXPECT_EQ((*table)[2].rank(), 13);
}

// --split_threshold: the 2-D Dion matrices with at least that many elements are split over the
// shards, no more owners than the tall side has rows; the rest stays whole.
TEST(MlpParameterTable, SplitsTheDionMatricesAtOrAboveTheThreshold) {
  MlpOptions options;  // 784-256-128-10: fc1 256 x 784 (200704), fc2 128 x 256 (32768)
  const std::vector<ParamSpec> table = *ParameterTable(options);
  std::vector<ParamSpec> split = table;
  SplitLargeMatrices(32768, 3, split);
  EXPECT_EQ(split[0].split_owners, 3);  // fc1.weight
  EXPECT_EQ(split[2].split_owners, 3);  // fc2.weight, exactly at the threshold
  for (size_t k : {1, 3, 4, 5}) EXPECT_EQ(split[k].split_owners, 0) << split[k].name;
  split = table;
  SplitLargeMatrices(32769, 3, split);
  EXPECT_EQ(split[0].split_owners, 3);
  EXPECT_EQ(split[2].split_owners, 0);  // one element short
  for (auto [threshold, shards] : {std::pair<int64_t, int>{0, 3}, {1, 1}}) {
    split = table;
    SplitLargeMatrices(threshold, shards, split);  // never, or a single shard
    for (const ParamSpec& spec : split) EXPECT_EQ(spec.split_owners, 0) << spec.name;
  }
  std::vector<ParamSpec> narrow = {table[0]};
  narrow[0].shape = {2, 3};  // tall side 3
  SplitLargeMatrices(1, 8, narrow);
  EXPECT_EQ(narrow[0].split_owners, 3);
}

TEST(MlpParameterTable, InitialValuesAreKaimingWeightsAndZeroBiasesSeededByTheModelSeed) {
  MlpOptions options;
  options.seed = 5;
  const std::vector<ParamSpec> table = *ParameterTable(options);
  const std::vector<Matrix> params = InitialParameters(table);
  // fc1.weight has 200704 entries: its sample stddev is within ~0.5% of sqrt(2 / 784).
  const double stddev = std::sqrt(params[0].cast<double>().squaredNorm() / params[0].size());
  EXPECT_NEAR(stddev, std::sqrt(2.0 / 784), 0.01 * std::sqrt(2.0 / 784));
  EXPECT_EQ(params[1].rows(), 1);
  EXPECT_TRUE(params[1].isZero(0));
  options.seed = 6;
  const std::vector<Matrix> other = InitialParameters(*ParameterTable(options));
  EXPECT_NE(params[0], other[0]);
  EXPECT_EQ(params[0], InitialParameters(table)[0]);
}

TEST(MlpParameterTable, RefusesBadOptionsNamingTheField) {
  MlpOptions options;
  options.layer_sizes = {784};
  EXPECT_EQ(ParameterTable(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.layer_sizes = {784, 0, 10};
  EXPECT_NE(ParameterTable(options).status().message().find("layer_sizes[1]"),
            absl::string_view::npos);
  options.layer_sizes = {784, 64, 10};
  options.dion.rank_fraction = 0;
  EXPECT_NE(ParameterTable(options).status().message().find("rank_fraction"),
            absl::string_view::npos);
  // A single layer is all head: no Dion parameter, so the Dion config is not consulted.
  options.layer_sizes = {784, 10};
  absl::StatusOr<std::vector<ParamSpec>> table = ParameterTable(options);
  ASSERT_TRUE(table.ok());
  EXPECT_EQ((*table)[0].optimizer, OptimizerKind::kAdamW);
}

// The hidden weights can use AdamW, Lion or Muon instead of Dion, and the biases and the head
// Lion instead of AdamW, each with its own hyper-parameters; Dion and Muon are refused for
// the biases and the head, and the config of a chosen optimizer is validated.
TEST(MlpParameterTable, OptimizersAreSelectablePerGroup) {
  MlpOptions options;
  options.layer_sizes = {20, 16, 8, 4};
  options.hidden_optimizer = OptimizerKind::kMuon;
  options.other_optimizer = OptimizerKind::kLion;
  options.muon.lr = 0.03;
  options.lion.lr = 2e-4;
  absl::StatusOr<std::vector<ParamSpec>> table = ParameterTable(options);
  ASSERT_TRUE(table.ok()) << table.status();
  for (const ParamSpec& spec : *table) {
    const bool hidden_weight = spec.name == "fc1.weight" || spec.name == "fc2.weight";
    EXPECT_EQ(spec.optimizer, hidden_weight ? OptimizerKind::kMuon : OptimizerKind::kLion)
        << spec.name;
    if (hidden_weight) EXPECT_EQ(spec.muon.lr, 0.03) << spec.name;
    if (!hidden_weight) EXPECT_EQ(spec.lion.lr, 2e-4) << spec.name;
  }
  options.hidden_optimizer = OptimizerKind::kLion;
  table = ParameterTable(options);
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ((*table)[0].optimizer, OptimizerKind::kLion);

  for (OptimizerKind refused : {OptimizerKind::kDion, OptimizerKind::kMuon}) {
    options.other_optimizer = refused;
    EXPECT_NE(ParameterTable(options).status().message().find("expected adamw or lion"),
              absl::string_view::npos);
  }
  options.other_optimizer = OptimizerKind::kAdamW;
  options.hidden_optimizer = OptimizerKind::kMuon;
  options.muon.ns_steps = 0;
  EXPECT_EQ(ParameterTable(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MlpLoss, ZeroWeightsGiveLogOfTheClassCount) {
  MlpOptions options;
  options.layer_sizes = {6, 5, 4};
  std::vector<Matrix> params = InitialParameters(*ParameterTable(options));
  for (Matrix& p : params) p.setZero();
  const Matrix X = GaussianBatch(3, 6, 1).cast<float>();
  MlpWorkspace ws;
  absl::StatusOr<float> loss =
      LossAndGradients(ParameterViews(params), X, CyclicLabels(3, 4), nullptr, &ws);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_NEAR(*loss, std::log(4.0), 1e-6);
}

// Central differences (L(p + h) - L(p - h)) / 2h in double have truncation error
// ~h^2 |L'''| ~ 1e-10 and rounding error ~1e-16 / h ~ 1e-11 at h = 1e-5, so a correct
// backward agrees to ~1e-9; 1e-7 absolute + 1e-6 relative leaves margin, while any wrong
// term (a missing mask, a transposed factor, a 1/B) is off by far more.
TEST(MlpGradient, MatchesCentralFiniteDifferencesForEveryParameterInDouble) {
  MlpOptions options;
  options.layer_sizes = {5, 7, 6, 4};
  std::vector<MatrixD> params = DoubleParams(*ParameterTable(options), 3);
  const std::vector<const MatrixD*> views = ParameterViews(params);
  const MatrixD X = GaussianBatch(8, 5, 4);
  const std::vector<int> labels = CyclicLabels(8, 4);
  MlpWorkspaceD ws;
  std::vector<MatrixD> grads;
  ASSERT_TRUE(LossAndGradients(views, X, labels, &grads, &ws).ok());
  ASSERT_EQ(grads.size(), params.size());
  const double h = 1e-5;
  int checked = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    ASSERT_EQ(grads[k].rows(), params[k].rows());
    ASSERT_EQ(grads[k].cols(), params[k].cols());
    for (Eigen::Index i = 0; i < params[k].size(); ++i) {
      double& p = params[k].data()[i];
      const double saved = p;
      p = saved + h;
      const double plus = *LossAndGradients(views, X, labels, nullptr, &ws);
      p = saved - h;
      const double minus = *LossAndGradients(views, X, labels, nullptr, &ws);
      p = saved;
      const double numeric = (plus - minus) / (2 * h);
      const double analytic = grads[k].data()[i];
      EXPECT_NEAR(analytic, numeric, 1e-7 + 1e-6 * std::abs(numeric))
          << "parameter " << k << " entry " << i;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 7 * 5 + 7 + 6 * 7 + 6 + 4 * 6 + 4);
}

// The float path (BLAS GEMMs, float softmax) against the double one on the same weights:
// float rounding over sums of ~64 terms gives relative errors ~1e-6; 1e-4 catches any
// real discrepancy (a wrong transpose flag is off by O(1)).
TEST(MlpGradient, FloatPathMatchesDoublePath) {
  MlpOptions options;
  options.layer_sizes = {64, 48, 32, 10};
  const std::vector<MatrixD> params_d = DoubleParams(*ParameterTable(options), 8);
  std::vector<Matrix> params_f;
  for (const MatrixD& p : params_d) params_f.push_back(p.cast<float>());
  const MatrixD X = GaussianBatch(33, 64, 9);
  const std::vector<int> labels = CyclicLabels(33, 10);
  MlpWorkspaceD ws_d;
  MlpWorkspace ws_f;
  std::vector<MatrixD> grads_d;
  std::vector<Matrix> grads_f;
  const double loss_d = *LossAndGradients(ParameterViews(params_d), X, labels, &grads_d, &ws_d);
  const float loss_f = *LossAndGradients(ParameterViews(params_f), X.cast<float>(), labels,
                                         &grads_f, &ws_f);
  EXPECT_NEAR(loss_f, loss_d, 1e-5 * loss_d);
  for (size_t k = 0; k < params_d.size(); ++k) {
    const double error = (grads_f[k].cast<double>() - grads_d[k]).norm() / grads_d[k].norm();
    EXPECT_LT(error, 1e-4) << "parameter " << k;
  }
}

TEST(MlpLoss, StaysFiniteForHugeLogits) {
  MlpOptions options;
  options.layer_sizes = {4, 3};
  std::vector<Matrix> params = InitialParameters(*ParameterTable(options));
  params[0].setZero();
  params[1] << 1000.0f, 0.0f, -1000.0f;  // softmax would overflow without the max shift
  const Matrix X = Matrix::Ones(2, 4);
  MlpWorkspace ws;
  std::vector<Matrix> grads;
  absl::StatusOr<float> loss = LossAndGradients(ParameterViews(params), X, {0, 1}, &grads, &ws);
  ASSERT_TRUE(loss.ok());
  EXPECT_NEAR(*loss, 500.0f, 1e-3f);  // (0 + 1000) / 2
  for (const Matrix& g : grads) EXPECT_TRUE(AllFinite(g));
}

TEST(MlpLoss, RefusesMalformedInputsWithoutWritingGradients) {
  MlpOptions options;
  options.layer_sizes = {4, 3, 2};
  const std::vector<Matrix> params = InitialParameters(*ParameterTable(options));
  std::vector<const Matrix*> views = ParameterViews(params);
  const Matrix X = Matrix::Ones(2, 4);
  MlpWorkspace ws;
  std::vector<Matrix> grads;
  const auto code = [&](std::vector<const Matrix*> v, const Matrix& x, std::vector<int> labels) {
    return LossAndGradients(v, x, labels, &grads, &ws).status();
  };
  EXPECT_NE(code(views, Matrix::Ones(2, 5), {0, 1}).message().find("fc1.weight"),
            absl::string_view::npos);
  EXPECT_NE(code(views, X, {0, 2}).message().find("label[1] = 2"), absl::string_view::npos);
  EXPECT_EQ(code(views, X, {0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({views[0], views[1], views[2]}, X, {0, 1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(code({views[0], views[2], views[2], views[3]}, X, {0, 1}).message().find("fc1.bias"),
            absl::string_view::npos);
  EXPECT_EQ(code(views, Matrix(0, 4), {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(grads.empty());
}

TEST(MlpLoss, ReusesWorkspaceAndGradientBuffersAcrossSteps) {
  MlpOptions options;
  options.layer_sizes = {16, 8, 4};
  const std::vector<Matrix> params = InitialParameters(*ParameterTable(options));
  const Matrix X = GaussianBatch(5, 16, 2).cast<float>();
  const std::vector<int> labels = CyclicLabels(5, 4);
  MlpWorkspace ws;
  std::vector<Matrix> grads;
  const float first = *LossAndGradients(ParameterViews(params), X, labels, &grads, &ws);
  const std::vector<Matrix> first_grads = grads;
  const float* activation = ws.A[0].data();
  const float* gradient = grads[0].data();
  const float second = *LossAndGradients(ParameterViews(params), X, labels, &grads, &ws);
  EXPECT_EQ(first, second);
  for (size_t k = 0; k < grads.size(); ++k) EXPECT_EQ(grads[k], first_grads[k]);
  // Same batch size: no buffer was reallocated.
  EXPECT_EQ(ws.A[0].data(), activation);
  EXPECT_EQ(grads[0].data(), gradient);
}

TEST(MlpEvaluate, MatchesTheFullBatchLossAndCountsArgmaxHits) {
  MlpOptions options;
  options.layer_sizes = {6, 5, 3};
  const std::vector<Matrix> params = InitialParameters(*ParameterTable(options));
  Dataset data;
  data.num_classes = 3;
  data.features = GaussianBatch(20, 6, 11).cast<float>();
  data.labels = CyclicLabels(20, 3);
  MlpWorkspace ws;
  const float full = *LossAndGradients(ParameterViews(params), data.features, data.labels,
                                       nullptr, &ws);
  int correct = 0;
  for (int r = 0; r < 20; ++r) {
    Eigen::Index argmax;
    ws.A.back().row(r).maxCoeff(&argmax);
    correct += argmax == data.labels[r];
  }
  absl::StatusOr<Evaluation> eval = Evaluate(ParameterViews(params), data, 7);  // 7 + 7 + 6
  ASSERT_TRUE(eval.ok()) << eval.status();
  EXPECT_EQ(eval->samples, 20);
  EXPECT_NEAR(eval->loss, full, 1e-5);
  EXPECT_DOUBLE_EQ(eval->accuracy, correct / 20.0);
  EXPECT_EQ(Evaluate(ParameterViews(params), data, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Plain SGD (X -= lr G) on the teacher task: 500 steps of batch 64 at lr 0.3 take the
// held-out loss from 3.10 to 0.68, accuracy 0.74 (seeded, measured); the bounds leave margin
// for BLAS rounding differences between machines, while a broken gradient stays above ~2.
TEST(MlpTraining, PlainSgdLearnsTheTeacherTask) {
  const TeacherOptions teacher;
  const Dataset train = *MakeTeacherDataset(teacher, 32768, 1);
  const Dataset test = *MakeTeacherDataset(teacher, 2048, 2);
  MlpOptions options;
  options.layer_sizes = {teacher.input_dim, 64, teacher.num_classes};
  options.seed = 7;
  std::vector<Matrix> params = InitialParameters(*ParameterTable(options));
  const std::vector<const Matrix*> views = ParameterViews(params);
  const double initial = Evaluate(views, test, 512)->loss;
  MlpWorkspace ws;
  std::vector<Matrix> grads;
  Matrix X;
  std::vector<int> labels;
  std::vector<int64_t> batch(64);
  for (int step = 0; step < 500; ++step) {
    std::iota(batch.begin(), batch.end(), (step * 64) % train.size());
    GatherBatch(train, batch, &X, &labels);
    ASSERT_TRUE(LossAndGradients(views, X, labels, &grads, &ws).ok());
    for (size_t k = 0; k < params.size(); ++k) params[k] -= 0.3f * grads[k];
  }
  const Evaluation final_eval = *Evaluate(views, test, 512);
  std::printf("teacher task, SGD lr 0.3, 500 steps: loss %.3f -> %.3f, accuracy %.3f\n",
              initial, final_eval.loss, final_eval.accuracy);
  EXPECT_GT(initial, 2.0);
  EXPECT_LT(final_eval.loss, 0.85);
  EXPECT_GT(final_eval.accuracy, 0.68);
}

}  // namespace
}  // namespace dion
