// The median the benchmarks report (docs/benchmarks.md: medians, robust to a slow repetition
// on a shared machine).
#ifndef DION_BENCH_MEDIAN_H_
#define DION_BENCH_MEDIAN_H_

#include <algorithm>
#include <cmath>
#include <vector>

namespace dion {

// The median of v (mean of the middle two for an even count); NaN when v is empty.
inline double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 == 1 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

}  // namespace dion

#endif  // DION_BENCH_MEDIAN_H_
