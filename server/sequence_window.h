// Which sequence numbers of one worker (for one parameter) were already accepted, in bounded
// memory, so that a retried contribution is applied at most once.
//
// The window keeps a floor F (every sequence < F counts as seen) and the set of accepted
// sequences in [F, F + window). Accepting a sequence s >= F + window slides the floor to
// s - window + 1: sequences that fall below it without having arrived are from then on answered
// as duplicates. So a worker must keep the sequences it may still retry within `window` of its
// newest one (with an increasing counter and a few pushes in flight this always holds).
// When the lowest sequences fill in, the floor advances over them, so a worker that numbers
// 0, 1, 2, ... without gaps costs O(1) memory; in any case at most `window` entries.
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
  // REQUIRES: window >= 1.
  explicit SequenceWindow(uint64_t window) : window_(window) {}

  // True if `sequence` was accepted before or lies below the floor.
  bool Contains(uint64_t sequence) const {
    return sequence < floor_ || seen_.contains(sequence);
  }

  // Records `sequence` as accepted. REQUIRES: !Contains(sequence).
  void Insert(uint64_t sequence);

  // For checkpoints: the floor and the accepted sequences above it.
  uint64_t floor() const { return floor_; }
  std::vector<uint64_t> SeenAboveFloor() const { return {seen_.begin(), seen_.end()}; }
  // Restores a state produced by floor() and SeenAboveFloor(); entries outside
  // [floor, floor + window) are dropped.
  void Restore(uint64_t floor, const std::vector<uint64_t>& seen);

  size_t memory_entries() const { return seen_.size(); }

 private:
  void Compact();

  uint64_t window_;
  uint64_t floor_ = 0;
  absl::btree_set<uint64_t> seen_;  // accepted sequences in [floor_, floor_ + window_)
};

}  // namespace dion

#endif  // DION_SERVER_SEQUENCE_WINDOW_H_
