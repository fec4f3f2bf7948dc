#!/usr/bin/python3
"""Offline checks of deploy/grafana/dashboard.json (ctest deploy_dashboard_schema).

  dashboard_check.py DASHBOARD_JSON SOURCE_ROOT

1. The JSON has what Grafana's dashboard schema (schemaVersion 39, Grafana 10/11) requires of
   an importable dashboard: top-level fields of the right types, panels with unique integer
   ids, a gridPos of integers inside the 24-column grid with no two panels overlapping, known
   panel types, unique refIds per panel, and every datasource reference pointing at the
   dashboard's single Prometheus datasource variable.
2. Every metric name in every panel query is one the code registers: the names in the
   prometheus-cpp builders of server/metrics.cc and worker/client/worker_metrics.cc (histograms with
   their _bucket / _sum / _count series) plus Prometheus' own `up`. The live test
   (live_scrape_test.py) checks the same names against a real /metrics scrape.

Python 3 standard library only (runs with /usr/bin/python3). Exit 0 when everything holds,
1 with one line per problem otherwise.
"""
import json
import re
import sys

PANEL_TYPES = {"row", "timeseries", "stat", "heatmap", "gauge", "bargauge", "table", "text",
               "alertlist", "state-timeline", "histogram"}
GRID_COLUMNS = 24
DATASOURCE_VARIABLE = "datasource"
DATASOURCE_REF = {"type": "prometheus", "uid": "${%s}" % DATASOURCE_VARIABLE}

# PromQL words that look like identifiers but are not metric names.
PROMQL_KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
}


def panels_of(dashboard):
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        for inner in panel.get("panels", []) or []:
            yield inner


def schema_errors(dashboard):
    errors = []
    required = {"title": str, "uid": str, "panels": list, "schemaVersion": int, "time": dict,
                "templating": dict, "annotations": dict, "editable": bool, "version": int,
                "tags": list, "refresh": str, "timezone": str}
    for field, kind in required.items():
        if field not in dashboard:
            errors.append(f"top level: missing '{field}'")
        elif not isinstance(dashboard[field], kind) or (kind is int and
                                                       isinstance(dashboard[field], bool)):
            errors.append(f"top level: '{field}' should be {kind.__name__}")
    if errors:
        return errors
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]):
        errors.append(f"uid '{dashboard['uid']}': Grafana accepts 1-40 of [A-Za-z0-9_-]")
    if dashboard["schemaVersion"] < 36:
        errors.append("schemaVersion below 36: datasource references by uid need >= 36")
    if set(dashboard["time"]) != {"from", "to"}:
        errors.append("time: needs exactly 'from' and 'to'")

    variables = dashboard["templating"].get("list", [])
    names = [v.get("name") for v in variables]
    if len(names) != len(set(names)):
        errors.append(f"templating: duplicate variable names in {names}")
    ds_vars = [v for v in variables if v.get("type") == "datasource"]
    if [(v.get("name"), v.get("query")) for v in ds_vars] != [(DATASOURCE_VARIABLE, "prometheus")]:
        errors.append("templating: expected exactly one datasource variable "
                      f"'{DATASOURCE_VARIABLE}' of query 'prometheus'")
    for v in variables:
        if v.get("type") != "datasource" and "datasource" in v and \
                v["datasource"] != DATASOURCE_REF:
            errors.append(f"templating variable {v.get('name')}: datasource {v['datasource']} "
                          f"is not {DATASOURCE_REF}")

    ids = {}
    boxes = []
    for panel in panels_of(dashboard):
        pid = panel.get("id")
        where = f"panel {pid} '{panel.get('title')}'"
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            errors.append(f"{where}: id must be a positive integer")
        elif pid in ids:
            errors.append(f"{where}: id also used by '{ids[pid]}'")
        else:
            ids[pid] = panel.get("title")
        if not panel.get("title"):
            errors.append(f"{where}: no title")
        if panel.get("type") not in PANEL_TYPES:
            errors.append(f"{where}: unknown type {panel.get('type')!r}")
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or set(grid) != {"h", "w", "x", "y"} or \
                not all(isinstance(grid[k], int) and not isinstance(grid[k], bool)
                        for k in "hwxy"):
            errors.append(f"{where}: gridPos must be {{h, w, x, y}} integers, got {grid}")
        else:
            if grid["h"] < 1 or grid["w"] < 1 or grid["x"] < 0 or grid["y"] < 0 or \
                    grid["x"] + grid["w"] > GRID_COLUMNS:
                errors.append(f"{where}: gridPos {grid} outside the {GRID_COLUMNS}-column grid")
            for other_where, other in boxes:
                if grid["x"] < other["x"] + other["w"] and other["x"] < grid["x"] + grid["w"] \
                        and grid["y"] < other["y"] + other["h"] and \
                        other["y"] < grid["y"] + grid["h"]:
                    errors.append(f"{where}: gridPos overlaps {other_where}")
            boxes.append((where, grid))
        if panel.get("type") == "row":
            if panel.get("targets"):
                errors.append(f"{where}: a row has no queries")
            continue
        if panel.get("datasource") != DATASOURCE_REF:
            errors.append(f"{where}: datasource {panel.get('datasource')} is not {DATASOURCE_REF}")
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            errors.append(f"{where}: no targets")
            continue
        ref_ids = [t.get("refId") for t in targets]
        if len(ref_ids) != len(set(ref_ids)) or not all(ref_ids):
            errors.append(f"{where}: refIds must be present and unique, got {ref_ids}")
        for t in targets:
            if t.get("datasource", DATASOURCE_REF) != DATASOURCE_REF:
                errors.append(f"{where} query {t.get('refId')}: datasource {t['datasource']} "
                              f"is not {DATASOURCE_REF}")
            if not isinstance(t.get("expr"), str) or not t["expr"].strip():
                errors.append(f"{where} query {t.get('refId')}: empty expr")
        if not isinstance(panel.get("fieldConfig"), dict) or \
                not isinstance(panel["fieldConfig"].get("defaults"), dict):
            errors.append(f"{where}: fieldConfig.defaults missing")
        if panel.get("type") == "heatmap" and \
                any(t.get("format") != "heatmap" for t in targets):
            errors.append(f"{where}: heatmap queries need format 'heatmap' (buckets by le)")
    return errors


def panel_queries(dashboard):
    """(panel title, refId, expr) of every query of every panel."""
    for panel in panels_of(dashboard):
        for t in panel.get("targets", []) or []:
            if "expr" in t:
                yield panel.get("title"), t.get("refId"), t["expr"]


def metric_names(expr):
    """Metric names referenced by a PromQL expression (identifiers that are not functions,
    keywords, label names or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations, $__rate_interval
    # Label lists of aggregations and vector matching.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # dashboard variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def registered_names(source_root):
    """Series names the code exports: .Name("...") of server/metrics.cc and
    worker/client/worker_metrics.cc; histograms (BuildHistogram) add _bucket, _sum and _count."""
    names = {"up"}
    for path in ("server/metrics.cc", "worker/client/worker_metrics.cc"):
        with open(f"{source_root}/{path}") as f:
            src = f.read()
        for m in re.finditer(r"Build(Counter|Gauge|Histogram)\(\)\s*\.Name\(\"(\w+)\"\)", src):
            kind, name = m.groups()
            names.add(name)
            if kind == "Histogram":
                names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return names


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        dashboard = json.load(f)
    errors = schema_errors(dashboard)
    known = registered_names(argv[2])
    if len(known) < 30:
        errors.append(f"found only {len(known)} registered metric names in the sources: "
                      "has the registration code changed shape?")
    queries = list(panel_queries(dashboard))
    referenced = set()
    for title, ref, expr in queries:
        names = metric_names(expr)
        if not names:
            errors.append(f"panel '{title}' query {ref}: no metric name found in {expr!r}")
        for name in sorted(names - known):
            errors.append(f"panel '{title}' query {ref}: metric {name} is not exported")
        referenced |= names
    for e in errors:
        print(f"FAIL {e}")
    print(f"{len(list(panels_of(dashboard)))} panels, {len(queries)} queries, "
          f"{len(referenced)} metric names referenced, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
