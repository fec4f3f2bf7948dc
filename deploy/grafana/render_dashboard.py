#!/usr/bin/python3
"""Render deploy/grafana/dashboard.json to one self-contained SVG, offline, from Prometheus.

  render_dashboard.py --prometheus http://127.0.0.1:9090 --out dashboard.svg
      [--dashboard FILE] [--range 15m] [--end UNIX_TIME] [--step 2s]
      [--scrape_interval 5s] [--var NAME=VALUE ...] [--width 1200]

Every panel's targets run as /api/v1/query_range over [end - range, end]. Grafana variables:
$__interval = step, $__rate_interval = max(step + scrape interval, 4 * scrape interval) (the
scrape interval is read from Prometheus' configuration unless given), $__range; template
variables come from --var. Panels sit on Grafana's 24-column gridPos grid: rows become section
titles, timeseries lines (stacking, fill, log scale and unit from fieldConfig), stat/gauge the
big last value over a sparkline, heatmaps coloured cells. This is an approximation of what
Grafana draws, not a screenshot (docs/observability.md). Python 3 standard library only.

Exit status: 0 the SVG was written; 1 a query failed (stderr names the panel and the expr;
nothing is written); 2 bad arguments or Prometheus unreachable.
"""
import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from xml.sax.saxutils import escape

BG, PANEL_BG, BORDER, TEXT, DIM, GRID = "#111217", "#181b1f", "#2c3036", "#ccccdc", "#8e8e9b", "#26292f"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#705da0", "#37872d", "#fade2a", "#447ebc", "#c15c17", "#890f02", "#0a437c"]
NAMED = {"green": "#73bf69", "red": "#f2495c", "yellow": "#fade2a", "orange": "#ff9830",
         "blue": "#5794f2", "purple": "#b877d9", "text": TEXT}
HEAT = ["#2d1a0c", "#7a3407", "#c4500a", "#f08a3c", "#fdbf85", "#feedde"]  # dark to light orange
CELL_H, MARGIN, HEADER = 38, 8, 54  # Grafana: 30 px rows + 8 px gaps


class QueryError(Exception):
    pass


class Unreachable(Exception):
    pass


def seconds(text):
    """'90s', '1m30s', '250ms', '1h' -> seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 90s, 5m, 1h)")
    return sum(float(n) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)


def promql_duration(s):
    return f"{int(round(s * 1000))}ms" if s != int(s) else f"{int(s)}s"


def http_json(url):
    """GET url -> parsed JSON; an HTTP error with a JSON body still returns the body."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        try:
            return json.load(e)
        except ValueError:
            raise QueryError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(f"cannot reach Prometheus at {url.split('/api/')[0]}: "
                          f"{getattr(e, 'reason', e)}") from None


def scrape_interval(base):
    """The global scrape_interval of Prometheus' configuration; Grafana's default 15 s if unknown."""
    try:
        body = http_json(f"{base}/api/v1/status/config")
        found = re.search(r"^  scrape_interval: (\S+)$", body["data"]["yaml"], re.M)
        return seconds(found.group(1))
    except (QueryError, KeyError, TypeError, ValueError, AttributeError):
        return 15.0


def query_range(base, expr, start, end, step):
    """[(labels, [(t, v or None)])] for a PromQL range query; raises QueryError."""
    q = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                "step": f"{step:g}"})
    body = http_json(f"{base}/api/v1/query_range?{q}")
    if body.get("status") != "success":
        raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
    if body["data"]["resultType"] != "matrix":
        raise QueryError(f"expected a matrix, got {body['data']['resultType']}")
    out = []
    for r in body["data"]["result"]:
        points = [(float(t), float(v)) for t, v in r["values"]]
        out.append((r["metric"], [(t, v if math.isfinite(v) else None) for t, v in points]))
    return out


def substitute(expr, variables):
    for name in sorted(variables, key=len, reverse=True):
        for form in ("${%s}" % name, "[[%s]]" % name, "$" + name):
            expr = expr.replace(form, variables[name])
    left = re.search(r"\$\{?(\w+)", expr)
    if left:
        raise QueryError(f"unknown variable ${left.group(1)}: pass --var {left.group(1)}=VALUE")
    return expr


def legend(fmt, labels, expr):
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    if not shown:
        return labels.get("__name__", expr)
    return labels.get("__name__", "") + "{" + ", ".join(f'{k}="{v}"' for k, v in shown.items()) + "}"


# ---- numbers and units -------------------------------------------------------------------

def si(v, suffixes=("", " k", " M", " G", " T", " P"), base=1000.0):
    i = 0
    while abs(v) >= base and i < len(suffixes) - 1:
        v, i = v / base, i + 1
    text = f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return text + suffixes[i]


def fmt(v, unit):
    if v is None:
        return "NaN"
    if unit == "percentunit":
        return si(v * 100) + "%"
    if unit == "percent":
        return si(v) + "%"
    if unit in ("s", "ms"):
        s = v / 1000 if unit == "ms" else v
        for scale, name in ((3600, " h"), (60, " min"), (1, " s"), (1e-3, " ms"), (1e-6, " µs")):
            if abs(s) >= scale:
                return f"{s / scale:.3g}{name}"
        return "0 s" if s == 0 else f"{s * 1e9:.3g} ns"
    if unit == "sci":
        return f"{v:.1e}"
    if unit == "bytes":  # Grafana: bytes are IEC, decbytes and Bps SI
        return si(v, (" B", " KiB", " MiB", " GiB", " TiB"), 1024.0)
    if unit in ("decbytes", "Bps"):
        return si(v, (" B", " kB", " MB", " GB", " TB")) + ("/s" if unit == "Bps" else "")
    suffix = {"": "", "short": "", "none": "", "ops": " ops/s"}.get(unit or "", " " + str(unit))
    return si(v).replace(" ", "") + suffix


def nice_ticks(lo, hi, n=4):
    if hi <= lo:  # a constant: 0..1 for zero, else 0..2v like Grafana's soft range
        lo, hi = (0.0, 1.0) if lo == 0 else (min(0.0, 2 * lo), max(0.0, 2 * hi))
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return [lo + i * step for i in range(int(round((hi - lo) / step)) + 1)]


def time_ticks(start, end):
    for every in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400):
        if (end - start) / every <= 6:
            break
    first = math.ceil(start / every) * every
    label = "%H:%M:%S" if every < 60 else "%H:%M"
    return [(t, time.strftime(label, time.gmtime(t))) for t in range(int(first), int(end) + 1, every)]


def text_w(s, size):
    return len(s) * size * 0.58


def fit(s, width, size):
    n = int(width / (size * 0.58))
    return s if len(s) <= n else s[:max(1, n - 1)] + "…"


def text(x, y, s, size=11, fill=TEXT, anchor="start", weight=None):
    w = f' font-weight="{weight}"' if weight else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{fill}" '
            f'text-anchor="{anchor}"{w}>{escape(s)}</text>')


def mix(c1, c2, f):
    a, b = (tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (c1, c2))
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b))


def heat_color(f):
    f = min(max(f, 0.0), 1.0) * (len(HEAT) - 1)
    i = min(int(f), len(HEAT) - 2)
    return mix(HEAT[i], HEAT[i + 1], f - i)


# ---- panels ------------------------------------------------------------------------------

def segments(points, tx, ty):
    """Runs of pixels (x, y, y_base) between gaps; at most one point per pixel column."""
    runs = [[]]
    for t, v, base in points:
        if v is None:
            if runs[-1]:
                runs.append([])
        elif not runs[-1] or tx(t) - runs[-1][-1][0] >= 1.0:
            runs[-1].append((tx(t), ty(v), ty(base)))
    return [r for r in runs if r]


def line_d(run):
    return "".join(f"{'L' if i else 'M'}{x:.1f} {y:.1f}" for i, (x, y) in enumerate(run))


def area(run, color, opacity):
    """The area between a run and its base (the series below, or the axis)."""
    d = line_d([(x, y) for x, y, _ in run] + [(x, b) for x, _, b in reversed(run)])
    return f'<path d="{d}Z" fill="{color}" fill-opacity="{opacity:.2f}" stroke="none"/>'


def legend_block(items, x, y, w):
    """Legend items (name, colour) flowed into 3 lines (+ "+N more"); returns (svg, height)."""
    out, lines, cx, shown = [], 0, x, 0
    for name, color in items:
        name = fit(name, w - 14, 10)
        iw = 14 + text_w(name, 10) + 12
        if cx + iw > x + w and cx > x:
            lines, cx = lines + 1, x
        if lines == 3:
            out.append(text(x, y + 3 * 14 + 7, f"+{len(items) - shown} more", 10, DIM))
            break
        ly = y + lines * 14
        out.append(f'<rect x="{cx:.1f}" y="{ly + 2:.1f}" width="10" height="3" fill="{color}"/>')
        out.append(text(cx + 14, ly + 7, name, 10))
        cx, shown = cx + iw, shown + 1
    return out, (lines + 1) * 14 + 4


def timeseries(panel, series, box, start, end):
    x, y, w, h = box
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom, unit = defaults.get("custom", {}), defaults.get("unit")
    log = custom.get("scaleDistribution", {}).get("type") == "log"
    stacked = custom.get("stacking", {}).get("mode", "none") not in ("none", None)
    fill = custom.get("fillOpacity", 0) / 100
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    items = [(name, c) for (name, _), c in zip(series, colors)]
    _, leg_h = legend_block(items, 0, 0, w - 16)  # first pass: only the height
    below = {}  # Grafana "normal" stacking: each series on top of the ones before it
    for i, (name, pts) in enumerate(series):
        base = dict(below) if stacked else {}
        pts = [(t, None if v is None or (log and v <= 0) else v + base.get(t, 0.0),
                base.get(t, 0.0)) for t, v in pts]
        below.update({t: v for t, v, _ in pts if v is not None})
        series[i] = (name, pts)
    values = [v for _, pts in series for _, v, _ in pts if v is not None]
    if not values:
        return [text(x + w / 2, y + h / 2 + 6, "no data", 14, DIM, "middle")]
    lo, hi = min(values + ([0.0] if (stacked or fill) and not log else [])), max(values)
    if log:
        lo, hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        hi = hi if hi > lo else lo + 1
        every = max(1, (hi - lo + 3) // 4)  # at most ~5 decades labelled
        hi = lo + math.ceil((hi - lo) / every) * every
        ticks = [10.0 ** e for e in range(lo, hi + 1, every)]
    else:
        ticks = nice_ticks(lo, hi)
    labels = [fmt(t, unit) for t in ticks]
    left = x + 10 + max(text_w(s, 10) for s in labels)
    top, bottom, right = y + 30, y + h - leg_h - 18, x + w - 10
    vmap = (lambda v: math.log10(max(v, 10.0 ** lo))) if log else (lambda v: v)  # noqa: E731
    a, b = vmap(ticks[0]), vmap(ticks[-1])
    tx = lambda t: left + (t - start) / (end - start) * (right - left)  # noqa: E731
    ty = lambda v: bottom - (vmap(v) - a) / (b - a) * (bottom - top)  # noqa: E731
    g = []
    for t, s in zip(ticks, labels):
        g.append(f'<line x1="{left:.1f}" y1="{ty(t):.1f}" x2="{right:.1f}" y2="{ty(t):.1f}" '
                 f'stroke="{GRID}"/>')
        g.append(text(left - 4, ty(t) + 3.5, s, 10, DIM, "end"))
    for t, s in time_ticks(start, end):
        g.append(text(tx(t), bottom + 13, s, 10, DIM, "middle"))
    for (name, pts), color in zip(series, colors):
        for run in segments(pts, tx, ty):
            if fill:
                g.append(area(run if stacked else [(px, py, bottom) for px, py, _ in run],
                              color, fill))
            g.append(f'<path d="{line_d([(px, py) for px, py, _ in run])}" fill="none" '
                     f'stroke="{color}" stroke-width="1.5"/>')
    return g + legend_block(items, x + 8, bottom + 20, w - 16)[0]


def stat(panel, series, box, start, end):
    x, y, w, h = box
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    pts = [(t, v) for t, v in series[0][1] if v is not None]
    if not pts:
        return [text(x + w / 2, y + h / 2 + 8, "no data", 14, DIM, "middle")]
    value = pts[-1][1]  # reduceOptions lastNotNull, the dashboard's choice everywhere
    steps = defaults.get("thresholds", {}).get("steps", [{"color": "green", "value": None}])
    color = steps[0]["color"]
    for s in steps:
        if s.get("value") is not None and value >= s["value"]:
            color = s["color"]
    color = NAMED.get(color, color if color.startswith("#") else NAMED["green"])
    g, lo, hi = [], min(v for _, v in pts), max(v for _, v in pts)
    if panel.get("options", {}).get("graphMode", "area") != "none":  # sparkline, lower third
        tx = lambda t: x + 1 + (t - start) / (end - start) * (w - 2)  # noqa: E731
        ty = lambda v: y + h - 2 - (v - lo) / ((hi - lo) or 1) * h * 0.35  # noqa: E731
        for run in segments([(t, v, lo) for t, v in pts], tx, ty):
            g += [area(run, color, 0.15), f'<path d="{line_d([(a, b) for a, b, _ in run])}" '
                  f'fill="none" stroke="{color}" stroke-opacity="0.6"/>']
    s = fmt(value, defaults.get("unit"))
    size = min(h * 0.36, (w - 24) / (len(s) * 0.68))  # bold digits ~0.6-0.65 em wide
    g.append(text(x + w / 2, y + 24 + (h - 24) * 0.45 + size * 0.35, s, round(size, 1), color,
                  "middle", "bold"))
    if len(series) > 1:
        g.append(text(x + w - 6, y + 16, f"+{len(series) - 1} series", 9, DIM, "end"))
    return g


def heatmap(panel, series, box, start, end):
    """format=heatmap: cumulative le buckets -> counts per bucket, one row per bucket."""
    x, y, w, h = box
    le = lambda lab: float(lab.get("le", "inf").replace("+Inf", "inf"))  # noqa: E731
    rows = sorted(series, key=lambda s: le(s[2]))
    times = sorted({t for _, pts, _ in rows for t, _ in pts})
    cols = max(1, math.ceil(len(times) / 100))  # at most 100 columns: sum neighbouring steps
    grid = [dict(pts) for _, pts, _ in rows]
    cells = [[sum(max(0.0, (now.get(t) or 0) - (below.get(t) or 0)) for t in times[c:c + cols])
              for c in range(0, len(times), cols)] for now, below in zip(grid, [{}] + grid)]
    opts = panel.get("options", {})
    cutoff = opts.get("filterValues", {}).get("le", 1e-9)
    exponent = opts.get("color", {}).get("exponent", 0.5)
    peak = max([v for row in cells for v in row] + [0])
    if peak <= cutoff:
        return [text(x + w / 2, y + h / 2, "no data", 14, DIM, "middle")]
    labels = [r[2].get("le", "?") for r in rows]
    left = x + 12 + max(text_w(s, 10) for s in labels)
    top, bottom, right = y + 30, y + h - 36, x + w - 10
    tx = lambda t: left + (t - start) / (end - start) * (right - left)  # noqa: E731
    step = (times[1] - times[0]) * cols if len(times) > 1 else end - start
    rh = (bottom - top) / len(rows)
    g = []
    for i, row in enumerate(cells):
        ry = bottom - (i + 1) * rh
        if rh >= 10 or i % math.ceil(10 / rh) == 0:
            g.append(text(left - 4, ry + rh / 2 + 3.5, labels[i], 10, DIM, "end"))
        for c, v in enumerate(row):
            if v <= cutoff:
                continue
            cx = tx(times[c * cols] - step / 2) if c else left
            cw = min(tx(times[c * cols] + step / 2), right) - cx
            g.append(f'<rect x="{cx:.1f}" y="{ry + 0.5:.1f}" width="{max(cw - 1, 0.5):.1f}" '
                     f'height="{max(rh - 1, 0.5):.1f}" fill="{heat_color((v / peak) ** exponent)}"/>')
    for t, s in time_ticks(start, end):
        g.append(text(tx(t), bottom + 13, s, 10, DIM, "middle"))
    lx, ly = left, bottom + 20
    for k in range(20):
        g.append(f'<rect x="{lx + k * 6:.1f}" y="{ly:.1f}" width="6" height="8" '
                 f'fill="{heat_color(k / 19)}"/>')
    g.append(text(lx + 126, ly + 8, f"0 … {fmt(peak, 'short')} per cell", 10, DIM))
    return g


def draw_panel(panel, series, box, start, end):
    x, y, w, h = box
    kind, title = panel.get("type"), panel.get("title", "")
    g = [f'<g class="panel panel-{escape(kind or "")}" id="panel-{panel.get("id")}">',
         f"<title>{escape(title)}</title>"]
    if kind == "row":
        hidden = len(panel.get("panels", [])) if panel.get("collapsed") else 0
        suffix = f" (collapsed, {hidden} panels)" if hidden else ""
        g += [text(x + 2, y + 22, title + suffix, 15, TEXT, "start", "bold"),
              f'<line x1="{x:.1f}" y1="{y + 29:.1f}" x2="{x + w:.1f}" y2="{y + 29:.1f}" '
              f'stroke="{BORDER}"/>', "</g>"]
        return g
    g += [f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="3" '
          f'fill="{PANEL_BG}" stroke="{BORDER}"/>',
          text(x + 8, y + 18, fit(title, w - 16, 12), 12, TEXT, "start", "bold")]
    if not any(v is not None for s in series for _, v in s[1]):
        g.append(text(x + w / 2, y + h / 2 + 6, "no data", 14, DIM, "middle"))
    elif kind in ("stat", "gauge", "bargauge"):
        g += stat(panel, series, box, start, end)
    elif kind == "heatmap":
        g += heatmap(panel, series, box, start, end)
    elif kind in ("timeseries", "graph"):
        g += timeseries(panel, [(name, pts) for name, pts, _ in series], box, start, end)
    else:
        g.append(text(x + w / 2, y + h / 2, f"panel type {kind!r} not rendered", 12, DIM, "middle"))
    return g + ["</g>"]


def render(dashboard, base, start, end, step, variables, width):
    colw = (width - MARGIN) / 24
    svg, errors, bottom = [], [], HEADER
    for panel in dashboard.get("panels", []):  # a collapsed row keeps its panels hidden
        gp = panel.get("gridPos", {"x": 0, "y": 0, "w": 24, "h": 8})
        box = (MARGIN + gp["x"] * colw, HEADER + gp["y"] * CELL_H,
               gp["w"] * colw - MARGIN, gp["h"] * CELL_H - MARGIN)
        bottom = max(bottom, box[1] + box[3])
        series = []
        for target in panel.get("targets", []) if panel.get("type") != "row" else []:
            if target.get("hide") or not target.get("expr"):
                continue
            try:
                expr = substitute(target["expr"], variables)
                for labels, pts in query_range(base, expr, start, end, step):
                    series.append((legend(target.get("legendFormat", ""), labels, expr), pts,
                                   labels))
            except QueryError as e:
                errors.append(f"panel {panel.get('title')!r} (id {panel.get('id')}), target "
                              f"{target.get('refId', '?')}: {e}\n    expr: {target['expr']}")
        svg += draw_panel(panel, series, box, start, end)
    height = bottom + MARGIN + 22
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)) + " – "
            + time.strftime("%H:%M:%S UTC", time.gmtime(end)))
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
            f'viewBox="0 0 {width} {height:.0f}" font-family="Inter, Helvetica, Arial, sans-serif">',
            f'<rect width="100%" height="100%" fill="{BG}"/>',
            text(MARGIN, 26, dashboard.get("title", "dashboard"), 18, TEXT, "start", "bold"),
            text(width - MARGIN, 26, f"{when}, step {step:g}s", 11, DIM, "end"),
            text(MARGIN, 44, "Rendered offline by deploy/grafana/render_dashboard.py from "
                 "Prometheus query_range results: an approximation of the Grafana panels, "
                 "not a Grafana screenshot.", 10, DIM)]
    return head + svg + ["</svg>"], errors


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dashboard", default=os.path.join(here, "dashboard.json"))
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--out", required=True, help="SVG file to write")
    ap.add_argument("--range", default="15m", help="time range ending at --end (default 15m)")
    ap.add_argument("--end", type=float, default=None, help="unix time (default: now)")
    ap.add_argument("--step", default="2s", help="query resolution and $__interval")
    ap.add_argument("--scrape_interval", default=None,
                    help="for $__rate_interval (default: read from Prometheus, else 15s)")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="value of a dashboard template variable")
    ap.add_argument("--width", type=int, default=1200)
    args = ap.parse_args()
    base = args.prometheus.rstrip("/")
    try:
        span, step = seconds(args.range), seconds(args.step)
        scrape = seconds(args.scrape_interval) if args.scrape_interval else scrape_interval(base)
        with open(args.dashboard) as f:
            dashboard = json.load(f)
        if any("=" not in v for v in args.var):
            raise ValueError(f"--var expects NAME=VALUE, got {args.var}")
        variables = dict(v.split("=", 1) for v in args.var)
        end = args.end if args.end is not None else time.time()
        variables.update({"__interval": promql_duration(step),
                          "__interval_ms": str(int(step * 1000)),
                          "__rate_interval": promql_duration(max(step + scrape, 4 * scrape)),
                          "__range": promql_duration(span), "__range_s": str(int(span)),
                          "datasource": "prometheus"})
    except (ValueError, OSError, Unreachable) as e:
        print(f"render_dashboard: {e}", file=sys.stderr)
        return 2
    try:
        svg, errors = render(dashboard, base, end - span, end, step, variables, args.width)
    except Unreachable as e:
        print(f"render_dashboard: {e}", file=sys.stderr)
        return 2
    if errors:
        print(f"render_dashboard: {len(errors)} query error(s), {args.out} not written:",
              file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    with open(args.out, "w") as f:
        f.write("\n".join(svg) + "\n")
    print(f"render_dashboard: wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
