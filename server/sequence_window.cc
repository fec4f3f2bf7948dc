#include "server/sequence_window.h"

namespace dion {

void SequenceWindow::Insert(uint64_t sequence) {
  if (sequence - floor_ >= window_) {
    // Slide: keep the newest `window_` sequences, forget (and from now on refuse) older ones.
    floor_ = sequence - window_ + 1;
    seen_.erase(seen_.begin(), seen_.lower_bound(floor_));
  }
  seen_.insert(sequence);
  Compact();
}

void SequenceWindow::Restore(uint64_t floor, const std::vector<uint64_t>& seen) {
  floor_ = floor;
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
