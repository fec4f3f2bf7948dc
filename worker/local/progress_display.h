// What `dion local` (worker/local/local_run.h) prints while it runs: its messages, and the
// run's status line (StatusLine, worker/local/run_report.h) either as a line every interval or,
// on a terminal, as one line rewritten in place that messages erase and print above.
//
// Thread-safety: none; the supervisor's thread owns it.
#ifndef DION_WORKER_LOCAL_PROGRESS_DISPLAY_H_
#define DION_WORKER_LOCAL_PROGRESS_DISPLAY_H_

#include <cstdio>
#include <string>

#include "absl/time/time.h"
#include "worker/local/local_run.h"
#include "worker/local/run_report.h"

namespace dion {

class ProgressDisplay {
 public:
  // `interval`: between status lines in kLines mode (kLive rewrites twice a second). `epochs`
  // and `workers`: the run's, for the status line.
  ProgressDisplay(LocalRunOptions::Progress mode, absl::Duration interval, int epochs,
                  int workers);

  // Prints `message` and a newline on `stream` (stdout or stderr), first erasing the live
  // status line if one is shown.
  void Say(FILE* stream, const std::string& message);
  // Shows the run's status at `now_s` (seconds since the run started) when the interval has
  // passed since the last one and some worker reported, or always when `force`. Nothing in
  // kQuiet mode.
  void Show(const RunAggregate& run, double now_s, bool force);
  // Ends a shown live line with a newline, so that it stays on screen above what follows.
  void KeepLiveLine();

 private:
  const LocalRunOptions::Progress mode_;
  const absl::Duration interval_;
  const int epochs_;
  const int workers_;
  bool live_line_shown_ = false;
  absl::Time last_shown_ = absl::InfinitePast();
};

}  // namespace dion

#endif  // DION_WORKER_LOCAL_PROGRESS_DISPLAY_H_
