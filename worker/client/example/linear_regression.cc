// Trains a model of its own through the dion-ps client library: linear regression
// y = W x + b against a fixed random teacher, with W (8 x 32) under Dion and b (8) under AdamW.
//
//   linear_regression <shard 0 host:port> [<shard 1 host:port> ...]
//
// Connects to the shards (listed in shard-index order), registers the model, then repeats:
// copy the replica, compute the mean-squared-error gradient of a fresh batch, Submit. Every
// kReportEvery steps it prints "step <n> loss <held-out loss>". Exits 0 once the held-out loss
// is below kTargetFraction of its starting value, 1 if that does not happen within
// kTimeBudget, 2 on a client error.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/matrix.h"
#include "common/model_table.h"
#include "common/param_spec.h"
#include "common/rng.h"
#include "worker/client/client.h"

namespace {

constexpr int kInputs = 32;
constexpr int kOutputs = 8;
constexpr int kBatch = 64;
constexpr int kReportEvery = 20;
constexpr double kTargetFraction = 0.1;
constexpr absl::Duration kTimeBudget = absl::Seconds(40);

// The user's model description: W x + b, both starting at zero.
dion::ModelTable LinearModel() {
  dion::ParamSpec weight;
  weight.name = "W";
  weight.shape = {kOutputs, kInputs};
  weight.optimizer = dion::OptimizerKind::kDion;
  weight.dion.lr = 0.05;
  weight.dion.weight_decay = 0;
  weight.dion.rank_fraction = 1.0;
  dion::ParamSpec bias;
  bias.name = "b";
  bias.shape = {kOutputs};
  bias.optimizer = dion::OptimizerKind::kAdamW;
  bias.adamw.lr = 0.02;
  bias.adamw.weight_decay = 0;
  return dion::ModelTable{"linear-regression-example", {{weight, {}}, {bias, {}}}};
}

dion::Matrix Normal(dion::Rng& rng, int rows, int cols, double stddev) {
  dion::Matrix m(rows, cols);
  rng.FillNormal(m, stddev);
  return m;
}

// Samples in columns: x (kInputs x n) and the teacher's y (kOutputs x n).
struct Batch {
  dion::Matrix x;
  dion::Matrix y;
};

struct Teacher {
  dion::Matrix w;  // kOutputs x kInputs
  dion::Matrix b;  // kOutputs x 1

  Batch Sample(dion::Rng& rng, int n) const {
    Batch batch{Normal(rng, kInputs, n, 1.0), dion::Matrix()};
    batch.y = w * batch.x + b.replicate(1, n);
    return batch;
  }
};

// 0.5 * mean over the batch of ||W x + b - y||^2; with `grads`, its gradient in table order
// (dW kOutputs x kInputs, db 1 x kOutputs).
double Loss(const std::vector<dion::Matrix>& weights, const Batch& batch,
            std::vector<dion::Matrix>* grads) {
  const dion::Matrix& w = weights[0];
  const dion::Matrix bias = weights[1].transpose();  // kOutputs x 1
  const int n = static_cast<int>(batch.x.cols());
  const dion::Matrix error = w * batch.x + bias.replicate(1, n) - batch.y;
  if (grads != nullptr) {
    grads->resize(2);
    (*grads)[0] = error * batch.x.transpose() / n;
    (*grads)[1] = error.rowwise().sum().transpose() / n;
  }
  return 0.5 * error.squaredNorm() / n;
}

int Train(const std::vector<std::string>& shards) {
  dion::ClientOptions options;
  options.shard_addresses = shards;
  options.worker_id = "linear-regression-example";
  options.compression_rank_fraction = 1.0;
  absl::StatusOr<std::unique_ptr<dion::Client>> client =
      dion::Client::Connect(LinearModel(), options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 2;
  }
  dion::Rng rng(7);
  const Teacher teacher{Normal(rng, kOutputs, kInputs, 1.0 / std::sqrt(double{kInputs})),
                        Normal(rng, kOutputs, 1, 0.5)};
  const Batch held_out = teacher.Sample(rng, 512);

  std::vector<dion::Matrix> weights;
  std::vector<dion::Matrix> grads;
  (*client)->CopyWeights(&weights);
  const double first_loss = Loss(weights, held_out, nullptr);
  std::printf("step 0 loss %.6f\n", first_loss);
  const absl::Time deadline = absl::Now() + kTimeBudget;
  for (int step = 1; absl::Now() < deadline; ++step) {
    (*client)->CopyWeights(&weights);
    const double loss = Loss(weights, teacher.Sample(rng, kBatch), &grads);
    if (absl::Status s = (*client)->Submit(grads, kBatch, loss); !s.ok()) {
      std::fprintf(stderr, "submit: %s\n", s.ToString().c_str());
      return 2;
    }
    if (step % kReportEvery != 0) continue;
    (*client)->CopyWeights(&weights);
    const double held_out_loss = Loss(weights, held_out, nullptr);
    std::printf("step %d loss %.6f\n", step, held_out_loss);
    std::fflush(stdout);
    if (held_out_loss < kTargetFraction * first_loss) {
      if (absl::Status s = (*client)->Flush(absl::Seconds(30)); !s.ok()) {
        std::fprintf(stderr, "flush: %s\n", s.ToString().c_str());
        return 2;
      }
      std::printf("reached %.6f < %.2f x %.6f\n", held_out_loss, kTargetFraction, first_loss);
      return 0;
    }
  }
  std::fprintf(stderr, "the loss did not fall below %.2f x %.6f within %s\n", kTargetFraction,
               first_loss, absl::FormatDuration(kTimeBudget).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <shard 0 host:port> [<shard 1 host:port> ...]\n", argv[0]);
    return 2;
  }
  return Train(std::vector<std::string>(argv + 1, argv + argc));
}
