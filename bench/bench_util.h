// What the push benches share besides their load (bench/push_load.h): dying with a message, a
// watchdog for --max_runtime, the machine's load, number formatting and comma-separated counts.
// Bench-only.
//
// Thread-safety: the functions are safe to call from any thread.
#ifndef DION_BENCH_BENCH_UTIL_H_
#define DION_BENCH_BENCH_UTIL_H_

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dion::bench {

// "<program>: <what>" on stderr, then exit 1 without cleanup (threads may still run).
[[noreturn]] inline void Die(absl::string_view program, absl::string_view what) {
  std::fprintf(stderr, "%s: %s\n", std::string(program).c_str(), std::string(what).c_str());
  std::_Exit(1);
}

// Ends the process (Die) once `max_runtime` has passed: a stuck run cannot hold the machine.
inline void StartWatchdog(absl::string_view program, absl::Duration max_runtime) {
  std::thread([program = std::string(program), max_runtime] {
    absl::SleepFor(max_runtime);
    Die(program, absl::StrCat("gave up after --max_runtime=", absl::FormatDuration(max_runtime)));
  }).detach();
}

// The 1-minute load average (the machine may be shared), or -1.
inline double LoadAverage() {
  double load = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load) != 1) load = -1;
    std::fclose(f);
  }
  return load;
}

// `v` with `digits` decimals, "-" for NaN (a figure not measured).
inline std::string Fmt(double v, int digits = 0) {
  return std::isnan(v) ? "-" : absl::StrFormat("%.*f", digits, v);
}

// The positive integers of a comma-separated flag value; Die naming --`flag` and the entry.
inline std::vector<int> ParseCounts(absl::string_view program, absl::string_view flag,
                                    absl::string_view text) {
  std::vector<int> counts;
  for (absl::string_view s : absl::StrSplit(text, ',')) {
    int c = 0;
    if (!absl::SimpleAtoi(s, &c) || c < 1) {
      Die(program, absl::StrCat("bad --", flag, " entry '", s, "'"));
    }
    counts.push_back(c);
  }
  return counts;
}

}  // namespace dion::bench

#endif  // DION_BENCH_BENCH_UTIL_H_
