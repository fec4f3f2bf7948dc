#include "server/sequence_window.h"

#include <algorithm>

namespace dion {

void SequenceWindow::Insert(uint64_t sequence) {
  if (sequence - floor_ >= window_) {
    // Slide: keep the newest `window_` sequences and forget older ones. The highest sequence
    // passed over without having been accepted becomes unknowable, and so does everything
    // below it; accepted ones above it stay seen. (floor_ itself is never in seen_, after
    // Compact, so there is always such a sequence.)
    const uint64_t new_floor = sequence - window_ + 1;
    uint64_t unseen = new_floor - 1;
    auto it = seen_.lower_bound(new_floor);
    while (it != seen_.begin() && *std::prev(it) == unseen) {
      --it;
      --unseen;
    }
    forced_floor_ = std::max(forced_floor_, unseen + 1);
    floor_ = new_floor;
    seen_.erase(seen_.begin(), seen_.lower_bound(floor_));
  }
  seen_.insert(sequence);
  Compact();
}

void SequenceWindow::Restore(uint64_t floor, uint64_t forced_floor,
                             const std::vector<uint64_t>& seen) {
  floor_ = floor;
  forced_floor_ = std::min(forced_floor, floor);
  seen_.clear();
  for (uint64_t s : seen) {
    if (s >= floor_ && s - floor_ < window_) seen_.insert(s);
  }
  Compact();
}

void SequenceWindow::Compact() {
  // A contiguous run starting at the floor carries no information beyond the floor itself.
  while (!seen_.empty() && *seen_.begin() == floor_) {
    seen_.erase(seen_.begin());
    ++floor_;
  }
}

}  // namespace dion
