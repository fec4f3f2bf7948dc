#!/usr/bin/python3
"""deploy/grafana/render_dashboard.py against a fake Prometheus (ctest deploy_render_dashboard).

  render_dashboard_test.py [--source_root DIR]

A tiny http.server on 127.0.0.1 answers /api/v1/query_range with deterministic series (two
per query, le buckets for histogram queries, nothing for dion_connected_workers, a bad_data
error for queries containing BROKEN) and /api/v1/status/config with a 1 s scrape interval.
The renderer runs as a subprocess on the real dashboard.json (or a copy with one query
changed). Python 3 standard library only, loopback only, a few seconds.
"""
import argparse
import http.server
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.parse
import xml.etree.ElementTree as ET

SVG = "{http://www.w3.org/2000/svg}"
SOURCE_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class FakePrometheus(http.server.BaseHTTPRequestHandler):
    queries = []  # every PromQL expression received, in order

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        args = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/api/v1/status/config":
            return self.reply(200, {"status": "success",
                                    "data": {"yaml": "global:\n  scrape_interval: 1s\n"}})
        if url.path != "/api/v1/query_range":
            return self.reply(404, {"status": "error", "error": f"no {url.path}"})
        expr = args["query"]
        FakePrometheus.queries.append(expr)
        if "BROKEN" in expr:
            return self.reply(400, {"status": "error", "errorType": "bad_data",
                                    "error": "1:1: parse error: unexpected identifier"})
        start, end, step = float(args["start"]), float(args["end"]), float(args["step"])
        times = [start + i * step for i in range(int((end - start) / step) + 1)]
        if "dion_connected_workers" in expr:
            result = []
        elif "_bucket" in expr and "histogram_quantile" not in expr:
            result = [{"metric": {"le": le}, "values": [[t, str(n * (1 + i % 3))]
                                                        for i, t in enumerate(times)]}
                      for n, le in enumerate(["0", "1", "2", "+Inf"], start=1)]
        else:
            result = [{"metric": {"worker": str(k), "shard": str(k), "result": "accepted"},
                       "values": [[t, str(k + 1 + math.sin(i / 5))] for i, t in enumerate(times)]}
                      for k in range(2)]
        self.reply(200, {"status": "success", "data": {"resultType": "matrix", "result": result}})


class RenderDashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.url = f"http://127.0.0.1:{cls.server.server_address[1]}"
        cls.renderer = os.path.join(SOURCE_ROOT, "deploy/grafana/render_dashboard.py")
        with open(os.path.join(SOURCE_ROOT, "deploy/grafana/dashboard.json")) as f:
            cls.dashboard = json.load(f)
        cls.tmp = tempfile.TemporaryDirectory(prefix="render-dashboard-test-")

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()
        cls.tmp.cleanup()

    def render(self, dashboard, *extra, url=None):
        """(exit status, stdout + stderr, SVG path) of one renderer run."""
        path = os.path.join(self.tmp.name, f"dashboard-{len(os.listdir(self.tmp.name))}.json")
        with open(path, "w") as f:
            json.dump(dashboard, f)
        out = path.replace(".json", ".svg")
        run = subprocess.run([sys.executable, self.renderer, "--dashboard", path,
                              "--prometheus", url or self.url, "--out", out, "--range", "2m",
                              "--end", "1700000000", "--step", "2s", *extra],
                             capture_output=True, text=True, timeout=30)
        return run.returncode, run.stdout + run.stderr, out

    def with_expr(self, title, expr):
        """A copy of the dashboard with the first target of panel `title` set to expr."""
        copy = json.loads(json.dumps(self.dashboard))
        panel = next(p for p in copy["panels"] if p["title"] == title)
        panel["targets"][0]["expr"] = expr
        return copy

    def test_draws_one_group_per_panel_with_its_title(self):
        FakePrometheus.queries.clear()
        code, output, out = self.render(self.dashboard)
        self.assertEqual(code, 0, output)
        root = ET.parse(out).getroot()  # raises if the SVG is not well-formed XML
        self.assertEqual(root.tag, SVG + "svg")
        groups = [g for g in root.iter(SVG + "g") if g.get("class", "").startswith("panel")]
        self.assertEqual([g.find(SVG + "title").text for g in groups],
                         [p["title"] for p in self.dashboard["panels"]])
        by_title = {g.find(SVG + "title").text: g for g in groups}
        for panel in self.dashboard["panels"]:
            texts = [t.text for t in by_title[panel["title"]].iter(SVG + "text")]
            if panel["type"] != "row":  # the visible title, possibly shortened with an ellipsis
                self.assertTrue(texts and panel["title"].startswith(texts[0].rstrip("…")), texts)
        self.assertIn("no data", [t.text for t in by_title["Connected workers"].iter(SVG + "text")])
        self.assertTrue(any(p.get("stroke") for p in by_title["Training loss"].iter(SVG + "path")),
                        "Training loss has no line")
        self.assertTrue(list(by_title["Push staleness"].iter(SVG + "rect")), "no heatmap cells")
        # Grafana variables became concrete PromQL: $__rate_interval = max(2s + 1s, 4 * 1s).
        self.assertTrue(FakePrometheus.queries)
        self.assertFalse([q for q in FakePrometheus.queries if "$" in q])
        self.assertTrue([q for q in FakePrometheus.queries if "[4s]" in q])

    def test_query_error_names_panel_and_expr(self):
        code, output, out = self.render(self.with_expr("Steps/s", "sum(BROKEN(dion_steps_total))"))
        self.assertEqual(code, 1, output)
        self.assertIn("panel 'Steps/s'", output)
        self.assertIn("sum(BROKEN(dion_steps_total))", output)
        self.assertIn("bad_data: 1:1: parse error", output)
        self.assertFalse(os.path.exists(out), "an SVG was written despite the error")

    def test_template_variable_needs_a_value(self):
        dashboard = self.with_expr("Shards up", 'sum(up{job="$job"})')
        code, output, _ = self.render(dashboard)
        self.assertEqual(code, 1, output)
        self.assertIn("panel 'Shards up'", output)
        self.assertIn("--var job=VALUE", output)
        FakePrometheus.queries.clear()
        code, output, _ = self.render(dashboard, "--var", "job=dion-ps")
        self.assertEqual(code, 0, output)
        self.assertIn('sum(up{job="dion-ps"})', FakePrometheus.queries)

    def test_unreachable_prometheus_is_reported(self):
        with socket.socket() as s:  # a port nobody listens on: bound, never listening
            s.bind(("127.0.0.1", 0))
            code, output, out = self.render(self.dashboard,
                                            url=f"http://127.0.0.1:{s.getsockname()[1]}")
        self.assertEqual(code, 2, output)
        self.assertIn("cannot reach Prometheus at http://127.0.0.1:", output)
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source_root", default=SOURCE_ROOT)
    args, rest = parser.parse_known_args()
    SOURCE_ROOT = os.path.abspath(args.source_root)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
