// The training defaults of dion-ps, in one place: dion-worker's and dion-server's flag defaults
// are these constants, and `dion local` shows them in its --help and passes a training flag to
// its children only when the user chose another value. Tuned for Fashion-MNIST with 2 shards
// and 4 workers (docs/benchmarks.md). Header-only constants: `dion`, which must not link
// OpenBLAS, includes it without linking dion_common.
#ifndef DION_COMMON_TRAINING_DEFAULTS_H_
#define DION_COMMON_TRAINING_DEFAULTS_H_

#include <cstdint>

#include "absl/time/time.h"

namespace dion::defaults {

// Data (dion-worker).
inline constexpr char kDataset[] = "fashion-mnist";  // or "synthetic"
inline constexpr char kDataDir[] = "/usr/share/datasets/fashion-mnist";  // Debian's package
inline constexpr int64_t kSyntheticTrainSamples = 32768;
inline constexpr char kPartition[] = "iid";  // or "dirichlet"
inline constexpr double kDirichletAlpha = 0.5;

// Model and optimizer (dion-worker, which registers them with the shards).
inline constexpr char kHiddenLayers[] = "256,128";
inline constexpr double kRankFraction = 0.25;  // Dion rank of the hidden matrices / min(m, n)
// Learning rates tuned for 512-sample shard batches (twice the rates that suit 128-sample
// batches; docs/benchmarks.md, "Learning rates doubled").
inline constexpr double kLr = 0.014;        // Dion, hidden matrices
inline constexpr double kAdamwLr = 0.0014;  // AdamW, biases and the output layer
inline constexpr double kLionLr = 0.0003;   // Lion, where chosen (--hidden/other_optimizer)
inline constexpr double kMuonLr = 0.02;     // Muon, hidden matrices where chosen
inline constexpr double kMomentum = 0.95;
inline constexpr double kWeightDecay = 0.0;
inline constexpr uint64_t kModelSeed = 1;  // worker j shuffles with kModelSeed * 1000 + j
// A 2-D Dion matrix with at least this many elements (2048 x 2048) is split by rows over all
// the shards (dion-worker --split_threshold; 0: never).
inline constexpr int64_t kSplitThreshold = 2048 * 2048;

// Local steps and pushes (dion-worker). 256-sample steps and rank-1/16 pushes do less work per
// sample than 128 and 1/4; they need ~15% more samples to 88% but train ~40% more samples/s
// (docs/benchmarks.md, "Bigger local steps, smaller pushes").
inline constexpr int kEpochs = 12;
inline constexpr int kBatchSize = 256;
inline constexpr double kCompressionRankFraction = 0.0625;  // of min(m, n); 0: kRankFraction
// Gradients are computed at the replica extrapolated this many versions ahead along its last
// step (docs/algorithm.md); 0: at the replica as it is.
inline constexpr double kLookahead = 8;

// Learning-rate cooldown (dion-server): over the last kLrCooldownFraction of the run's samples
// every learning rate falls linearly to kLrFinalScale of its value. The run's length in
// samples (--lr_schedule_samples) depends on the deployment and has no default.
inline constexpr double kLrCooldownFraction = 0.2;
inline constexpr double kLrFinalScale = 0.1;

// Batching and staleness (dion-server). A batch closes at 512 samples: on Fashion-MNIST with 4
// workers this ends less noisy than the adaptive rule (docs/benchmarks.md).
inline constexpr int64_t kTargetSamples = 512;
inline constexpr int kTargetWorkers = 0;  // 0: no worker target
inline constexpr absl::Duration kBatchDeadline = absl::Milliseconds(50);
inline constexpr bool kAdaptiveBatching = false;
inline constexpr char kStalenessPolicy[] = "inverse";
inline constexpr int64_t kMaxStaleness = 16;

}  // namespace dion::defaults

#endif  // DION_COMMON_TRAINING_DEFAULTS_H_
