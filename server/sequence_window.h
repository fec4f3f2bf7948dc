// Which sequence numbers of one worker (for one parameter) were already accepted, in bounded
// memory, so that a retried contribution is applied at most once.
//
// The window keeps a floor F and the set of accepted sequences in [F, F + window). A sequence
// is in one of three states (Lookup):
//   kSeen     accepted before: answered DUPLICATE;
//   kNew      never accepted: judged normally;
//   kUnknown  below the floor, and the window can no longer tell whether it was accepted.
// The floor moves in two ways:
//   - filling in: when the lowest sequences arrive the floor advances over them, so a worker
//     that numbers 0, 1, 2, ... without gaps costs O(1) memory. Everything it passes this way
//     was accepted, so it stays kSeen.
//   - forcing: accepting s >= F + window slides the floor to s - window + 1, past sequences
//     that never arrived. The forced floor remembers the point below which that happened:
//     after it, every sequence below the forced floor is kUnknown (it may never have arrived,
//     or it may have been accepted and forgotten), never kSeen. Answering DUPLICATE there
//     would make the worker drop data the shard never applied.
// So a worker must keep fewer than `window` unacknowledged sequences per parameter (with an
// increasing counter and a few pushes in flight this always holds); then nothing it retries
// is ever kUnknown. Memory: at most `window` entries.
//
// Thread-safety: not synchronised; the batcher guards it.
#ifndef DION_SERVER_SEQUENCE_WINDOW_H_
#define DION_SERVER_SEQUENCE_WINDOW_H_

#include <cstdint>
#include <vector>

#include "absl/container/btree_set.h"

namespace dion {

class SequenceWindow {
 public:
  enum class State { kNew, kSeen, kUnknown };

  // REQUIRES: window >= 1.
  explicit SequenceWindow(uint64_t window) : window_(window) {}

  State Lookup(uint64_t sequence) const {
    if (sequence >= floor_) return seen_.contains(sequence) ? State::kSeen : State::kNew;
    return sequence >= forced_floor_ ? State::kSeen : State::kUnknown;
  }

  // Records `sequence` as accepted. REQUIRES: Lookup(sequence) == kNew.
  void Insert(uint64_t sequence);

  // The highest accepted sequence (floor - 1 when the set above the floor is empty), or 0 when
  // nothing was accepted.
  uint64_t highest() const {
    if (!seen_.empty()) return *seen_.rbegin();
    return floor_ > 0 ? floor_ - 1 : 0;
  }

  uint64_t window() const { return window_; }
  // For checkpoints: the floor, the forced floor (<= floor; 0 if never forced) and the
  // accepted sequences above the floor.
  uint64_t floor() const { return floor_; }
  uint64_t forced_floor() const { return forced_floor_; }
  std::vector<uint64_t> SeenAboveFloor() const { return {seen_.begin(), seen_.end()}; }
  // Restores a state produced by the accessors above; entries outside [floor, floor + window)
  // are dropped and a forced floor above the floor is lowered to it.
  void Restore(uint64_t floor, uint64_t forced_floor, const std::vector<uint64_t>& seen);

  size_t memory_entries() const { return seen_.size(); }

 private:
  void Compact();

  uint64_t window_;
  uint64_t floor_ = 0;
  // Sequences below it were passed over by a forced slide (or lie below one that was).
  uint64_t forced_floor_ = 0;
  absl::btree_set<uint64_t> seen_;  // accepted sequences in [floor_, floor_ + window_)
};

}  // namespace dion

#endif  // DION_SERVER_SEQUENCE_WINDOW_H_
