#include "worker/local/progress_display.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include "absl/time/clock.h"

namespace dion {

ProgressDisplay::ProgressDisplay(LocalRunOptions::Progress mode, absl::Duration interval,
                                 int epochs, int workers)
    : mode_(mode),
      interval_(mode == LocalRunOptions::Progress::kLive ? absl::Milliseconds(500) : interval),
      epochs_(epochs),
      workers_(workers) {}

void ProgressDisplay::Say(FILE* stream, const std::string& message) {
  if (live_line_shown_) {
    std::fputs("\r\033[K", stdout);
    std::fflush(stdout);
    live_line_shown_ = false;
  }
  std::fprintf(stream, "%s\n", message.c_str());
  std::fflush(stream);
}

void ProgressDisplay::Show(const RunAggregate& run, double now_s, bool force) {
  if (mode_ == LocalRunOptions::Progress::kQuiet) return;
  if (!force && absl::Now() - last_shown_ < interval_) return;
  last_shown_ = absl::Now();
  const LiveStatus s = run.Live();
  if (s.workers_reporting == 0 && !force) return;
  std::string line = StatusLine(s, now_s, epochs_, workers_);
  if (mode_ != LocalRunOptions::Progress::kLive) return Say(stdout, line);
  winsize size{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 1 &&
      line.size() >= size.ws_col) {
    line.resize(size.ws_col - 1);  // a wrapped line could not be rewritten in place
  }
  std::printf("\r\033[K%s", line.c_str());
  std::fflush(stdout);
  live_line_shown_ = true;
}

void ProgressDisplay::KeepLiveLine() {
  if (!live_line_shown_) return;
  std::fputs("\n", stdout);
  live_line_shown_ = false;
}

}  // namespace dion
