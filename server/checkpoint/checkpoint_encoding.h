// The layout and text encodings of a shard checkpoint directory (written by
// server/checkpoint/checkpointer.h, read by server/checkpoint/checkpoint_reader.h):
//   manifest.json           server/checkpoint/checkpoint_manifest.h; metadata keys below
//   model_table.textproto   the dion.v1.RegisterModelRequest of the model, without initial
//                           values (every hyper-parameter explicit; doubles print exactly)
//   dedup.txt               the batchers' dedup state (below)
//   <stem>.<tensor>.npy     per owned parameter: X, then StateTensors(); float32, 1-D
//                           parameters as 1-D arrays. <stem> is FileStem(parameter name); the
//                           real name is in the metadata, so a stem is never decoded.
// Metadata: format, sequence, shard_index, num_shards, model_name, workers (escaped, comma
// separated), initial_value_checksums (per table parameter: 16 hex digits or "-"),
// parameters (count) and per owned parameter i, in table order, ParameterKey(i, field) for
// name, file (the stem), optimizer, version, step (the optimizer's update count, Adam's t),
// contributions_applied, samples_applied (absent in old checkpoints, read as 0) and checksum
// (WeightsChecksum of X, hex); run_id and cut when set (server/checkpoint/checkpoint_cut.h).
//
// Escape writes every byte outside [A-Za-z0-9_.-] (and a leading '.') as '+' and two
// upper-case hex digits: '%' is not a legal manifest file name, and the result never contains
// ',' or ' ', so escaped names can be listed. FileStem cuts escaped names longer than
// kMaxFileStem and ends them in "++" and the name's FNV-1a hex, which no escaped name contains.
//
// dedup.txt: a header comment, then one line per (parameter, worker):
//   <parameter index> <escaped worker id> <floor>:<forced floor> <accepted sequences>...
// (server/sequence_window.h). A line written before the forced floor existed has "<floor>"
// alone; it reads as forced floor 0, its old meaning (everything below the floor was seen).
//
// Thread-safety: pure functions.
#ifndef DION_SERVER_CHECKPOINT_ENCODING_H_
#define DION_SERVER_CHECKPOINT_ENCODING_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/matrix.h"
#include "common/param_spec.h"
#include "common/row_reduce.h"
#include "server/batcher.h"
#include "server/stepper.h"

namespace dion {

inline constexpr absl::string_view kShardCheckpointFormat = "dion-ps.shard-checkpoint.v1";
inline constexpr absl::string_view kModelTableFile = "model_table.textproto";
inline constexpr absl::string_view kDedupFile = "dedup.txt";

// "<stem>.<suffix>.npy" and "parameter.<i>.<field>".
std::string TensorFile(absl::string_view stem, absl::string_view suffix);
std::string ParameterKey(size_t i, absl::string_view field);

// One tensor of an optimizer state: its file suffix, where it lives and its shape.
struct StateTensor {
  absl::string_view suffix;
  Matrix* matrix;
  int64_t rows, cols;
};
// The tensors of `state`, which holds the optimizer state of `spec`: M Q (Dion), adam_m adam_v
// (AdamW), lion_m (Lion), M (Muon). Every tensor has the parameter's shape except Dion's Q
// (min(m, n) x r). For one owner's `rows` of a split parameter, M has the block's shape (X's
// rows, or X's columns when m < n). The pointers alias `state`.
std::vector<StateTensor> StateTensors(const ParamSpec& spec, OptimizerState& state,
                                      RowBlock rows = {});
// An empty state of the optimizer `kind`, and the update count of a state.
OptimizerState EmptyState(OptimizerKind kind);
int64_t StateStep(const OptimizerState& state);

// Leaves room for the longest suffix (".adam_m.npy") within the 255-character name limit.
inline constexpr size_t kMaxFileStem = 200;

std::string Escape(absl::string_view name);
// InvalidArgument for a '+' not followed by two upper-case hex digits.
absl::StatusOr<std::string> Unescape(absl::string_view escaped);
// The file-name stem of a parameter: Escape(name), cut as described above.
std::string FileStem(absl::string_view name);

// dedup[i] is the state of the i-th owned parameter's batcher (workers sorted by id).
std::string SerializeDedupState(const std::vector<std::vector<WorkerDedupState>>& dedup);
// The inverse, for `parameters` owned parameters. InvalidArgument "line <n>: ..." for a
// malformed line, an index >= parameters, a forced floor above the floor, sequences not
// increasing or below the floor, workers repeated or unsorted.
absl::StatusOr<std::vector<std::vector<WorkerDedupState>>> ParseDedupState(
    absl::string_view text, size_t parameters);

}  // namespace dion

#endif  // DION_SERVER_CHECKPOINT_ENCODING_H_
