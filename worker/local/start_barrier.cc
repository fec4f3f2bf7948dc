#include "worker/local/start_barrier.h"

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "worker/local/run_summary.h"

namespace dion {

StartBarrier::StartBarrier(std::string path, int workers)
    : path_(std::move(path)), ready_(std::max(0, workers), false), waiting_(std::max(0, workers)) {}

void StartBarrier::Reset() {
  std::error_code ignored;
  std::filesystem::remove(path_, ignored);
}

void StartBarrier::Ready(int index) {
  if (index < 0 || index >= static_cast<int>(ready_.size()) || ready_[index]) return;
  ready_[index] = true;
  if (--waiting_ > 0) return;
  if (absl::Status s = WriteTextFile(path_, ""); !s.ok()) error_ = std::string(s.message());
}

bool StartBarrier::ready(int index) const {
  return index >= 0 && index < static_cast<int>(ready_.size()) && ready_[index];
}

}  // namespace dion
