#include "worker/local/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace dion {
namespace {

// Pixels inside a panel: room for tick labels on the left and below, the title above.
constexpr double kLeft = 62, kRight = 16, kTop = 34, kBottom = 46;
constexpr int kTitleHeight = 34;

std::string Escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A tick label with as many decimals as the tick step needs (0.05 -> 2, 20 -> 0).
std::string TickLabel(double value, double step) {
  const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 6);
  if (std::fabs(value) < step * 1e-6) value = 0;  // no "-0.00"
  return absl::StrFormat("%.*f", decimals, value);
}

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void Add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
};

// A panel's plotting area in pixels, and the data range and ticks it shows.
struct Frame {
  double px0 = 0, px1 = 0, py0 = 0, py1 = 0;  // py0 top, py1 bottom
  double xlo = 0, xhi = 1, ylo = 0, yhi = 1;
  std::vector<double> xticks, yticks;
  double X(double x) const { return px0 + (x - xlo) / (xhi - xlo) * (px1 - px0); }
  double Y(double y) const { return py1 - (y - ylo) / (yhi - ylo) * (py1 - py0); }
  // Where a point goes, with y clamped into the range.
  double YClamped(double y) const { return Y(std::clamp(y, ylo, yhi)); }
};

constexpr double kLegendWidth = 150;
double LegendHeight(const PlotPanel& panel) { return 8 + 16.0 * panel.series.size(); }

void RenderTitleAndAxisLabels(const PlotPanel& panel, const Frame& f, double x0, double y0,
                              double height, std::string* svg) {
  absl::StrAppendFormat(svg, "<g>\n<text x=\"%.1f\" y=\"%.1f\" class=\"title\">%s</text>\n",
                        (f.px0 + f.px1) / 2, y0 + 20, Escape(panel.title));
  absl::StrAppendFormat(svg, "<text x=\"%.1f\" y=\"%.1f\" class=\"axis\">%s</text>\n",
                        (f.px0 + f.px1) / 2, y0 + height - 8, Escape(panel.x_label));
  const double mid_y = (f.py0 + f.py1) / 2;
  absl::StrAppendFormat(svg,
                        "<text x=\"%.1f\" y=\"%.1f\" class=\"axis\" "
                        "transform=\"rotate(-90 %.1f %.1f)\">%s</text>\n",
                        x0 + 16, mid_y, x0 + 16, mid_y, Escape(panel.y_label));
}

// The range of the finite points of every series.
std::pair<Range, Range> DataRange(const PlotPanel& panel) {
  Range xr, yr;
  for (const PlotSeries& s : panel.series) {
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      xr.Add(x);
      yr.Add(y);
    }
  }
  return {xr, yr};
}

// Sets the frame's range and ticks for data in xr x yr (not empty).
void Scale(const PlotPanel& panel, Range xr, Range yr, Frame* f) {
  if (panel.y_range.has_value()) {
    yr.lo = panel.y_range->first;
    yr.hi = panel.y_range->second;
  } else {  // a little room, so a curve does not run along the frame
    const double pad = 0.03 * (yr.hi - yr.lo);
    yr.lo -= pad;
    yr.hi += pad;
  }
  if (panel.x_from_zero) xr.lo = std::min(xr.lo, 0.0);
  f->xticks = NiceTicks(xr.lo, xr.hi, 6);
  f->yticks = NiceTicks(yr.lo, yr.hi, 5);
  f->xlo = f->xticks.front();
  f->xhi = f->xticks.back();
  f->ylo = panel.y_range ? yr.lo : f->yticks.front();
  f->yhi = panel.y_range ? yr.hi : f->yticks.back();
}

void RenderGridAndTicks(const Frame& f, std::string* svg) {
  const std::vector<double>& xt = f.xticks;
  const std::vector<double>& yt = f.yticks;
  const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1, ystep = yt.size() > 1 ? yt[1] - yt[0] : 1;
  for (double t : xt) {
    absl::StrAppendFormat(svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"tick\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" class=\"xtick\">%s</text>\n",
                          f.X(t), f.py0, f.X(t), f.py1, f.X(t), f.py1, f.X(t), f.py1 + 5, f.X(t),
                          f.py1 + 18, TickLabel(t, xstep));
  }
  for (double t : yt) {
    if (t < f.ylo - 1e-12 * std::fabs(ystep) || t > f.yhi + 1e-12 * std::fabs(ystep)) continue;
    absl::StrAppendFormat(svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"tick\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" class=\"ytick\">%s</text>\n",
                          f.px0, f.Y(t), f.px1, f.Y(t), f.px0 - 5, f.Y(t), f.px0, f.Y(t),
                          f.px0 - 8, f.Y(t) + 4, TickLabel(t, ystep));
  }
}

// The top-left corner of the legend: the corner of the frame where it hides the fewest points.
std::pair<double, double> LegendCorner(const PlotPanel& panel, const Frame& f) {
  const double legend_h = LegendHeight(panel);
  double lx = f.px1 - kLegendWidth, ly = f.py0, fewest = std::numeric_limits<double>::infinity();
  for (const auto& [cx, cy] :
       {std::pair{f.px1 - kLegendWidth, f.py0}, std::pair{f.px1 - kLegendWidth, f.py1 - legend_h},
        std::pair{f.px0, f.py0}, std::pair{f.px0, f.py1 - legend_h}}) {
    double hidden = 0;
    for (const PlotSeries& s : panel.series) {
      for (const auto& [x, y] : s.points) {
        const double sx = f.X(x), sy = f.YClamped(y);
        hidden += sx >= cx && sx <= cx + kLegendWidth && sy >= cy && sy <= cy + legend_h;
      }
    }
    if (hidden < fewest) {
      fewest = hidden;
      lx = cx;
      ly = cy;
    }
  }
  return {lx, ly};
}

// One polyline per series (and its markers), finite points only.
void RenderSeries(const PlotPanel& panel, const Frame& f, std::string* svg) {
  for (const PlotSeries& s : panel.series) {
    std::string points;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      absl::StrAppendFormat(&points, "%.1f,%.1f ", f.X(x), f.YClamped(y));
    }
    if (!points.empty()) points.pop_back();
    absl::StrAppendFormat(svg, "<polyline points=\"%s\" stroke=\"%s\" class=\"series\"/>\n", points,
                          Escape(s.color));
    if (!s.markers) continue;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      absl::StrAppendFormat(svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n",
                            f.X(x), f.YClamped(y), Escape(s.color));
    }
  }
}

void RenderLegend(const PlotPanel& panel, double lx, double ly, std::string* svg) {
  absl::StrAppendFormat(svg,
                        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                        "class=\"legendbox\"/>\n",
                        lx + 2, ly + 2, kLegendWidth - 4, LegendHeight(panel) - 4);
  int legend_row = 0;
  for (const PlotSeries& s : panel.series) {
    const double row_y = ly + 16 + 16 * legend_row++;
    absl::StrAppendFormat(svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                          "stroke-width=\"2\"/><text x=\"%.1f\" y=\"%.1f\" class=\"legend\">%s"
                          "</text>\n",
                          lx + 8, row_y - 4, lx + 26, row_y - 4, Escape(s.color), lx + 32, row_y,
                          Escape(s.label));
  }
}

// The panel in the width x height box at (x0, y0): labels, frame, then (with data) grid and
// ticks, the series and the legend.
void RenderPanel(const PlotPanel& panel, double x0, double y0, double width, double height,
                 std::string* svg) {
  Frame f;
  f.px0 = x0 + kLeft;
  f.px1 = x0 + width - kRight;
  f.py0 = y0 + kTop;
  f.py1 = y0 + height - kBottom;
  RenderTitleAndAxisLabels(panel, f, x0, y0, height, svg);
  absl::StrAppendFormat(svg,
                        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                        "class=\"frame\"/>\n",
                        f.px0, f.py0, f.px1 - f.px0, f.py1 - f.py0);
  const auto [xr, yr] = DataRange(panel);
  if (xr.empty()) {
    absl::StrAppendFormat(svg, "<text x=\"%.1f\" y=\"%.1f\" class=\"axis\">no data</text>\n</g>\n",
                          (f.px0 + f.px1) / 2, (f.py0 + f.py1) / 2);
    return;
  }
  Scale(panel, xr, yr, &f);
  RenderGridAndTicks(f, svg);
  const auto [lx, ly] = LegendCorner(panel, f);
  RenderSeries(panel, f, svg);
  RenderLegend(panel, lx, ly, svg);
  *svg += "</g>\n";
}

}  // namespace

std::vector<double> NiceTicks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {0, 1};
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo < 1e-12 * std::max(1.0, std::fabs(hi))) {
    const double pad = std::fabs(lo) > 0 ? 0.1 * std::fabs(lo) : 1.0;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / std::max(1, target - 1);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude * 10;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * magnitude >= raw) {
      step = m * magnitude;
      break;
    }
  }
  std::vector<double> ticks;
  const double first = std::floor(lo / step + 1e-9) * step;
  for (double t = first; ticks.empty() || ticks.back() < hi - 1e-9 * step; t += step) {
    ticks.push_back(std::fabs(t) < 1e-12 * step ? 0.0 : t);
  }
  if (ticks.size() == 1) ticks.push_back(ticks[0] + step);
  return ticks;
}

std::string RenderSvgPlot(const std::string& title, const std::vector<PlotPanel>& panels,
                          int columns, int panel_width, int panel_height) {
  columns = std::max(1, columns);
  const int rows = std::max<int>(1, (static_cast<int>(panels.size()) + columns - 1) / columns);
  const int width = columns * panel_width;
  const int height = kTitleHeight + rows * panel_height;
  std::string svg = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\">\n"
      "<style>\n"
      "text { font-family: sans-serif; fill: #222; }\n"
      ".title { font-size: 14px; font-weight: bold; text-anchor: middle; }\n"
      ".axis { font-size: 12px; text-anchor: middle; }\n"
      ".xtick { font-size: 10px; text-anchor: middle; }\n"
      ".ytick { font-size: 10px; text-anchor: end; }\n"
      ".legend { font-size: 11px; }\n"
      ".legendbox { fill: white; fill-opacity: 0.85; stroke: #ccc; stroke-width: 1; }\n"
      ".frame { fill: none; stroke: #444; stroke-width: 1; }\n"
      ".grid { stroke: #e4e4e4; stroke-width: 1; }\n"
      ".tick { stroke: #444; stroke-width: 1; }\n"
      ".series { fill: none; stroke-width: 1.8; stroke-linejoin: round; }\n"
      "</style>\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%d\" y=\"22\" class=\"title\" style=\"font-size:16px\">%s</text>\n",
      width, height, width, height, width / 2, Escape(title));
  for (size_t i = 0; i < panels.size(); ++i) {
    const int row = static_cast<int>(i) / columns, column = static_cast<int>(i) % columns;
    RenderPanel(panels[i], column * panel_width, kTitleHeight + row * panel_height, panel_width,
                panel_height, &svg);
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace dion
