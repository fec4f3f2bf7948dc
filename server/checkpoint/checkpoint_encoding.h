// The text encodings inside a shard checkpoint (server/checkpoint/checkpointer.h): names escaped into
// file names and comma lists, and the batchers' dedup state (dedup.txt).
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
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/batcher.h"

namespace dion {

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
