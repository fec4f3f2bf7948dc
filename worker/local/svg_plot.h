// A small line-plot renderer producing standalone SVG (no dependencies), used for the curves of
// `dion local` (worker/local/run_report.h): a grid of panels, each with a frame, axes, ticks, tick
// labels, axis labels, a title, light grid lines, one polyline per series and a legend.
//
// The output is a complete SVG 1.1 document (XML declaration, xmlns, viewBox) that browsers and
// image viewers open directly. Non-finite points are dropped.
//
// Thread-safety: pure functions.
#ifndef DION_WORKER_SVG_PLOT_H_
#define DION_WORKER_SVG_PLOT_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dion {

struct PlotSeries {
  std::string label;                              // legend text
  std::string color;                              // any SVG colour, e.g. "#1f77b4"
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in the given order
  bool markers = false;  // also draw a dot at every point (for sparse series)
};

struct PlotPanel {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<PlotSeries> series;
  // Fixed y range; otherwise the data's range widened to the enclosing ticks.
  std::optional<std::pair<double, double>> y_range;
  bool x_from_zero = false;  // the x axis starts at 0 even if the data starts later
};

// About `target` evenly spaced "nice" values (steps of 1, 2 or 5 times a power of ten) covering
// [lo, hi]: the first is <= lo, the last >= hi. lo == hi is widened first.
std::vector<double> NiceTicks(double lo, double hi, int target);

// Renders `panels` row by row, `columns` per row, each panel_width x panel_height pixels, with
// `title` above them all.
std::string RenderSvgPlot(const std::string& title, const std::vector<PlotPanel>& panels,
                          int columns, int panel_width = 440, int panel_height = 300);

}  // namespace dion

#endif  // DION_WORKER_SVG_PLOT_H_
