#include "worker/train/partition.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/rng.h"

namespace dion {
namespace {

constexpr int kMaxDirichletDraws = 1000;

// Fisher-Yates with our own Rng so the order is the same on every platform.
void Shuffle(std::vector<int64_t>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    size_t j = static_cast<size_t>(rng.Uniform() * static_cast<double>(i));
    j = std::min(j, i - 1);
    std::swap(v[i - 1], v[j]);
  }
}

// log of a Gamma(alpha, 1) variate (Marsaglia and Tsang 2000). Kept in log space because
// for alpha << 1 the variate itself underflows to 0 (alpha = 0.01: G ~ U^100).
double LogGamma(double alpha, Rng& rng) {
  if (alpha < 1.0) {
    // G(alpha) = G(alpha + 1) * U^(1 / alpha).
    double u = rng.Uniform();
    while (u <= 0.0) u = rng.Uniform();
    return LogGamma(alpha + 1.0, rng) + std::log(u) / alpha;
  }
  const double d = alpha - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  while (true) {
    const double x = rng.Normal();
    double v = 1.0 + c * x;
    if (v <= 0.0) continue;
    v = v * v * v;
    const double u = rng.Uniform();
    if (u <= 0.0) continue;
    if (u < 1.0 - 0.0331 * x * x * x * x || std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) {
      return std::log(d * v);
    }
  }
}

// p ~ Dirichlet(alpha, ..., alpha) over `k` entries.
std::vector<double> DrawDirichlet(int k, double alpha, Rng& rng) {
  std::vector<double> logs(k);
  for (double& l : logs) l = LogGamma(alpha, rng);
  const double top = *std::max_element(logs.begin(), logs.end());
  double sum = 0.0;
  for (double& l : logs) sum += (l = std::exp(l - top));
  for (double& l : logs) l /= sum;
  return logs;
}

std::vector<std::vector<int64_t>> IidParts(int64_t n, int num_workers, uint64_t seed) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  Rng rng(MixSeed(seed, 0));
  Shuffle(order, rng);
  std::vector<std::vector<int64_t>> parts(num_workers);
  for (int w = 0; w < num_workers; ++w) {
    const int64_t begin = n * w / num_workers;
    const int64_t end = n * (w + 1) / num_workers;
    parts[w].assign(order.begin() + begin, order.begin() + end);
  }
  return parts;
}

// One Dirichlet split of the per-class shuffled indices with proportion stream `draw`.
std::vector<std::vector<int64_t>> DirichletParts(
    const std::vector<std::vector<int64_t>>& by_class, int num_workers, double alpha,
    uint64_t seed, int draw) {
  Rng rng(MixSeed(seed, 1, static_cast<uint64_t>(draw)));
  std::vector<std::vector<int64_t>> parts(num_workers);
  for (const std::vector<int64_t>& members : by_class) {
    const std::vector<double> p = DrawDirichlet(num_workers, alpha, rng);
    const auto n_c = static_cast<double>(members.size());
    double cumulative = 0.0;
    int64_t begin = 0;
    for (int w = 0; w < num_workers; ++w) {
      cumulative += p[w];
      // Boundaries from the rounded cumulative sum: monotone, and the last one is exactly
      // N_c, so every sample of the class goes to exactly one worker.
      const int64_t end = w + 1 == num_workers
                              ? static_cast<int64_t>(members.size())
                              : std::min<int64_t>(static_cast<int64_t>(members.size()),
                                                  std::llround(cumulative * n_c));
      if (end > begin) parts[w].insert(parts[w].end(), members.begin() + begin, members.begin() + end);
      begin = std::max(begin, end);
    }
  }
  return parts;
}

}  // namespace

absl::string_view PartitionKindName(PartitionKind kind) {
  return kind == PartitionKind::kIid ? "iid" : "dirichlet";
}

absl::StatusOr<PartitionKind> ParsePartitionKind(absl::string_view name) {
  if (name == "iid") return PartitionKind::kIid;
  if (name == "dirichlet") return PartitionKind::kDirichlet;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown partition '", name, "': expected iid or dirichlet"));
}

absl::StatusOr<std::vector<std::vector<int64_t>>> PartitionAll(absl::Span<const int> labels,
                                                               int num_classes, int num_workers,
                                                               const PartitionOptions& options) {
  const auto n = static_cast<int64_t>(labels.size());
  if (num_workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("partition: num_workers = ", num_workers, ": expected >= 1"));
  }
  if (num_classes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("partition: num_classes = ", num_classes, ": expected >= 1"));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("partition: label[", i, "] = ", labels[i],
                                                     ": expected 0 <= label < ", num_classes));
    }
  }
  if (options.min_samples_per_worker < 0 || options.min_samples_per_worker * num_workers > n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "partition: min_samples_per_worker = ", options.min_samples_per_worker,
        ": expected 0 <= value and value * num_workers (", num_workers, ") <= samples (", n,
        ")"));
  }
  std::vector<std::vector<int64_t>> parts;
  if (options.kind == PartitionKind::kIid) {
    parts = IidParts(n, num_workers, options.seed);
  } else {
    if (!(std::isfinite(options.alpha) && options.alpha > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "partition: dirichlet alpha = ", options.alpha, ": expected a finite value > 0"));
    }
    std::vector<std::vector<int64_t>> by_class(num_classes);
    for (int64_t i = 0; i < n; ++i) by_class[labels[i]].push_back(i);
    for (int c = 0; c < num_classes; ++c) {
      Rng rng(MixSeed(options.seed, 2, static_cast<uint64_t>(c)));
      Shuffle(by_class[c], rng);
    }
    for (int draw = 0;; ++draw) {
      if (draw == kMaxDirichletDraws) {
        return absl::FailedPreconditionError(absl::StrCat(
            "partition: no Dirichlet(", options.alpha, ") split in ", kMaxDirichletDraws,
            " draws gave every one of ", num_workers, " workers >= ",
            options.min_samples_per_worker, " samples: lower min_samples_per_worker or raise alpha"));
      }
      parts = DirichletParts(by_class, num_workers, options.alpha, options.seed, draw);
      const bool enough = std::all_of(parts.begin(), parts.end(), [&](const auto& part) {
        return static_cast<int64_t>(part.size()) >= options.min_samples_per_worker;
      });
      if (enough) break;
    }
  }
  for (std::vector<int64_t>& part : parts) std::sort(part.begin(), part.end());
  return parts;
}

absl::StatusOr<std::vector<int64_t>> PartitionIndices(absl::Span<const int> labels,
                                                      int num_classes, int num_workers,
                                                      int worker_index,
                                                      const PartitionOptions& options) {
  if (worker_index < 0 || worker_index >= num_workers) {
    return absl::InvalidArgumentError(absl::StrCat("partition: worker_index = ", worker_index,
                                                   ": expected 0 <= worker_index < num_workers (",
                                                   num_workers, ")"));
  }
  absl::StatusOr<std::vector<std::vector<int64_t>>> parts =
      PartitionAll(labels, num_classes, num_workers, options);
  if (!parts.ok()) return parts.status();
  return std::move((*parts)[worker_index]);
}

}  // namespace dion
