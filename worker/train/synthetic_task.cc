#include "worker/train/synthetic_task.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/rng.h"

namespace dion {

absl::StatusOr<Dataset> MakeTeacherDataset(const TeacherOptions& options, int64_t num_samples,
                                           uint64_t seed) {
  if (options.input_dim < 1 || options.hidden < 1 || options.num_classes < 2 ||
      num_samples < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "teacher task: input_dim = ", options.input_dim, ", hidden = ", options.hidden,
        ", num_classes = ", options.num_classes, ", num_samples = ", num_samples,
        ": expected dimensions >= 1, num_classes >= 2, num_samples >= 0"));
  }
  // The teacher, in double: W1 Kaiming so hidden units are well scaled; W2's rows centred
  // to sum zero so that the positive mean of the ReLU outputs favours no class (without
  // it one or two classes take most of the labels).
  Rng teacher_rng(MixSeed(options.teacher_seed, 0x7eac4e));
  MatrixD W1(options.hidden, options.input_dim);
  MatrixD W2(options.num_classes, options.hidden);
  for (Eigen::Index i = 0; i < W1.size(); ++i) {
    W1.data()[i] = teacher_rng.Normal() * std::sqrt(2.0 / options.input_dim);
  }
  for (Eigen::Index i = 0; i < W2.size(); ++i) {
    W2.data()[i] = teacher_rng.Normal() / std::sqrt(static_cast<double>(options.hidden));
  }
  W2.colwise() -= W2.rowwise().mean();

  Dataset data;
  data.num_classes = options.num_classes;
  data.features.resize(num_samples, options.input_dim);
  data.labels.resize(num_samples);
  Rng rng(MixSeed(seed, 0xda7a));
  rng.FillNormal(data.features);
  for (int64_t i = 0; i < num_samples; ++i) {
    const Eigen::RowVectorXd x = data.features.row(i).cast<double>();
    const Eigen::RowVectorXd h = (x * W1.transpose()).cwiseMax(0.0);
    const Eigen::RowVectorXd logits = h * W2.transpose();
    Eigen::Index label = 0;
    logits.maxCoeff(&label);
    data.labels[i] = static_cast<int>(label);
  }
  return data;
}

}  // namespace dion
