#!/usr/bin/python3
"""A real Prometheus scraping a real dion-server and dion-worker (ctest deploy_prometheus_live).

  live_scrape_test.py --server BIN --worker BIN --source_root DIR [--prometheus BIN]

Starts, all on 127.0.0.1 with free ports:
  - dion-server (one shard, checkpoints every 2 s into a temporary directory),
  - dion-worker on the synthetic task (trains until stopped),
  - Debian's prometheus with deploy/prometheus/prometheus.yml, the Kubernetes configuration,
    unchanged except: scrape and evaluation every 1 s, the rule file by absolute path, and
    `kubernetes_sd_configs` replaced by a `file_sd_configs` file that lists what Kubernetes pod
    discovery would: the shard pod dion-ps-0 and worker pod dion-worker-0-xxxxx with their
    __meta_kubernetes_* labels, plus three targets the relabelling must drop (the shard's gRPC
    port, a Succeeded worker pod, another application's pod). Debian's prometheus is built
    without Kubernetes discovery, so this is how the relabel rules get exercised here.
Then asserts, through Prometheus' HTTP API after several scrapes:
  1. exactly the two dion targets are active, up, with job / shard / worker / namespace / pod /
     run labels as the alert rules and the dashboard expect; the decoys were dropped;
  2. key series exist with plausible values (versions advancing, pushes accepted, samples
     counted, loss finite and positive, staleness and phase histograms filled, orthogonality
     error small);
  3. every alert rule loaded and evaluates without error, and none is firing;
  4. every metric name in the rules and in every dashboard panel query appears in the real
     /metrics output of the two processes (names of series created only on first event are
     listed in LAZY_SERIES), and every dashboard query runs in Prometheus and returns data;
  5. SIGTERM makes dion-worker exit 0 and dion-server write a checkpoint and exit 0.
Bounded: gives up after DEADLINE_S seconds. Python 3 standard library only.
"""
import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard_check  # noqa: E402
from prom_util import (Prometheus, check, free_ports, http_get, run_bounded,  # noqa: E402
                       wait_until)

DEADLINE_S = 60
# Labelled series prometheus-cpp creates on their first event only; a healthy short run has
# none of them. dashboard_check verifies these names against the registration code instead.
LAZY_SERIES = {"dion_worker_resyncs_total"}
NAMESPACE, RUN = "dion-test", "dion-small"


def pod_target(address, pod, component, port_name, phase="Running", app="dion-ps",
               index=None):
    labels = {
        "__meta_kubernetes_namespace": NAMESPACE,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
        "__meta_kubernetes_pod_label_app_kubernetes_io_component": component,
        "__meta_kubernetes_pod_label_app_kubernetes_io_instance": RUN,
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_phase": phase,
    }
    if index is not None:
        labels["__meta_kubernetes_pod_annotation_batch_kubernetes_io_job_completion_index"] = index
    return {"targets": [address], "labels": labels}


def write_config(source_root, tmp, targets_file):
    with open(os.path.join(source_root, "deploy/prometheus/prometheus.yml")) as f:
        config = f.read()
    sd = "    kubernetes_sd_configs:\n      - role: pod\n"
    if config.count(sd) != 2:
        raise AssertionError("prometheus.yml: expected two 'kubernetes_sd_configs: - role: pod'")
    config = config.replace(sd, f"    file_sd_configs:\n      - files: ['{targets_file}']\n")
    rules = os.path.join(source_root, "deploy/prometheus/rules/dion-alerts.yml")
    for old, new in (("scrape_interval: 15s", "scrape_interval: 1s"),
                     ("evaluation_interval: 15s", "evaluation_interval: 1s"),
                     ("  - rules/dion-alerts.yml", f"  - '{rules}'")):
        if old not in config:
            raise AssertionError(f"prometheus.yml: '{old}' not found")
        config = config.replace(old, new)
    path = os.path.join(tmp, "prometheus.yml")
    with open(path, "w") as f:
        f.write(config)
    return path


def series_names(metrics_text):
    names = set()
    for line in metrics_text.splitlines():
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", line)
        if m and not line.startswith("#"):
            names.add(m.group(1))
    return names


def run(args, tmp, procs):
    deadline = time.monotonic() + DEADLINE_S
    grpc, shard_metrics, worker_metrics, prom_port, closed = free_ports(5)
    logs = {}

    def start(name, argv):
        logs[name] = open(os.path.join(tmp, f"{name}.log"), "w+")
        procs[name] = subprocess.Popen(argv, stdout=logs[name], stderr=subprocess.STDOUT)

    start("server", [args.server, f"--listen=127.0.0.1:{grpc}",
                     f"--metrics_listen=127.0.0.1:{shard_metrics}",
                     f"--checkpoint_dir={tmp}/ckpt", "--checkpoint_interval=2s"])
    start("worker", [args.worker, f"--shards=127.0.0.1:{grpc}", "--dataset=synthetic",
                     f"--metrics_listen=127.0.0.1:{worker_metrics}", "--epochs=100000",
                     "--progress_interval=1s", "--eval_interval=1s", "--give_up_after=20s"])
    targets_file = os.path.join(tmp, "targets.json")
    with open(targets_file, "w") as f:
        json.dump([
            pod_target(f"127.0.0.1:{shard_metrics}", "dion-ps-0", "shard", "metrics"),
            pod_target(f"127.0.0.1:{grpc}", "dion-ps-0", "shard", "grpc"),
            pod_target(f"127.0.0.1:{worker_metrics}", "dion-worker-0-x7k2p", "worker", "metrics",
                       index="0"),
            pod_target(f"127.0.0.1:{closed}", "dion-worker-1-q9z4r", "worker", "metrics",
                       phase="Succeeded", index="1"),
            pod_target(f"127.0.0.1:{closed}", "other-0", "shard", "metrics", app="other"),
        ], f)
    config = write_config(args.source_root, tmp, targets_file)
    start("prometheus", [args.prometheus, f"--config.file={config}",
                         f"--storage.tsdb.path={tmp}/tsdb",
                         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
    prom = Prometheus(prom_port)
    wait_until("prometheus ready", lambda: "Ready" in http_get(f"{prom.base}/-/ready"),
               deadline)
    # Five scrapes of each target, training under way, rules evaluated.
    wait_until("5 scrapes of both targets and training progress", lambda: (
        (prom.value('min(count_over_time(up{job=~"dion-ps|dion-worker"}[1m]))') or 0) >= 5
        and (prom.value('max(dion_parameter_version{job="dion-ps"})') or 0) > 0
        and (prom.value('sum(rate(dion_pushes_total{job="dion-ps", result="accepted"}[10s]))')
             or 0) > 0), deadline)
    failures = []

    # 1. Targets and labels after relabelling.
    targets = prom.api("targets")
    active = sorted((t["labels"] for t in targets["activeTargets"]), key=lambda l: l["job"])
    expected = [
        {"job": "dion-ps", "instance": f"127.0.0.1:{shard_metrics}", "namespace": NAMESPACE,
         "pod": "dion-ps-0", "run": RUN, "shard": "0"},
        {"job": "dion-worker", "instance": f"127.0.0.1:{worker_metrics}", "namespace": NAMESPACE,
         "pod": "dion-worker-0-x7k2p", "run": RUN, "worker": "0"},
    ]
    check(failures, active == expected, f"active targets and their labels: {active}")
    check(failures, all(t["health"] == "up" for t in targets["activeTargets"]),
          "both targets healthy")
    check(failures, len(targets["droppedTargets"]) == 8,
          f"decoy targets dropped by both jobs: {len(targets['droppedTargets'])} of 8")

    # 2. Key series, plausible values.
    def between(expr, lo, hi):
        v = prom.value(expr)
        check(failures, v is not None and math.isfinite(v) and lo <= v <= hi,
              f"{expr} = {v} in [{lo}, {hi}]")

    between('up{job="dion-ps", shard="0"}', 1, 1)
    between('up{job="dion-worker", worker="0"}', 1, 1)
    between('max(dion_parameter_version{job="dion-ps", shard="0"})', 1, 1e9)
    between('max(delta(dion_parameter_version{job="dion-ps"}[5s]))', 1, 1e9)
    between('sum(rate(dion_steps_total{job="dion-ps"}[10s]))', 0.1, 1e6)
    between('sum(rate(dion_pushes_total{job="dion-ps", result="accepted"}[10s]))', 0.1, 1e7)
    between('sum(dion_pushes_total{job="dion-ps", result=~"rejected|stale"})', 0, 0)
    between('dion_connected_workers{job="dion-ps"}', 1, 1)
    between('dion_worker_samples_total{job="dion-worker", worker="0"}', 1, 1e12)
    between('dion_worker_training_loss{job="dion-worker"}', 1e-6, 100)
    between('dion_worker_loss{job="dion-ps"}', 1e-6, 100)
    between('dion_worker_compression_ratio{job="dion-worker"}', 1.0, 1e4)
    between('dion_push_staleness_count{job="dion-ps"}', 1, 1e12)
    between('histogram_quantile(0.95, rate(dion_push_staleness_bucket{job="dion-ps"}[10s]))',
            0, 16)
    between('dion_step_phase_duration_seconds_count{job="dion-ps", phase="aggregate"}', 1, 1e12)
    between('dion_orthogonality_error{job="dion-ps"}', 0, 1e-4)
    between('dion_checkpoints_total{job="dion-ps", result="ok"}', 1, 1e6)

    # 3. Alert rules: loaded, healthy, quiet.
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    check(failures, len(rules) >= 7, f"{len(rules)} alert rules loaded")
    for r in rules:
        check(failures, r.get("health") == "ok" and not r.get("lastError"),
              f"rule {r['name']} evaluates (health={r.get('health')} {r.get('lastError', '')})")
        check(failures, r.get("state") == "inactive", f"rule {r['name']} is {r.get('state')}")

    # 4. Metric names of rules and dashboard are exported; dashboard queries return data.
    exported = (series_names(http_get(f"http://127.0.0.1:{shard_metrics}/metrics")) |
                series_names(http_get(f"http://127.0.0.1:{worker_metrics}/metrics")) | {"up"})
    print(f"     /metrics of the shard and the worker: {len(exported)} series names")
    for r in rules:
        missing = dashboard_check.metric_names(r["query"]) - exported
        check(failures, not missing, f"rule {r['name']} uses exported metrics "
              f"(missing: {sorted(missing)})")
    with open(os.path.join(args.source_root, "deploy/grafana/dashboard.json")) as f:
        dashboard = json.load(f)
    for title, ref, expr in dashboard_check.panel_queries(dashboard):
        names = dashboard_check.metric_names(expr)
        missing = names - exported - LAZY_SERIES
        check(failures, not missing,
              f"panel '{title}' {ref}: metrics exported (missing: {sorted(missing)})")
        result = prom.query(expr.replace("$__rate_interval", "10s"))
        check(failures, bool(result) or names <= LAZY_SERIES,
              f"panel '{title}' {ref}: query returns {len(result)} series")

    # 5. SIGTERM: the worker finishes its step and exits 0, then the shard checkpoints and
    # exits 0 (what a pod deletion or `docker stop` does to them).
    procs["worker"].send_signal(signal.SIGTERM)
    code = procs["worker"].wait(timeout=20)
    check(failures, code == 0, f"dion-worker exits {code} after SIGTERM")
    server = procs["server"]
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=20)
    logs["server"].seek(0)
    server_log = logs["server"].read()
    check(failures, code == 0, f"dion-server exits {code} after SIGTERM")
    check(failures, "checkpoint" in server_log and "stopped" in server_log,
          "dion-server logged its final checkpoint and 'stopped'")
    if failures:
        for name, log in logs.items():
            log.seek(0)
            print(f"--- {name} log (last 2000 characters) ---\n{log.read()[-2000:]}")
    return failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--source_root", required=True)
    parser.add_argument("--prometheus", default="/usr/bin/prometheus")
    args = parser.parse_args()
    args.source_root = os.path.abspath(args.source_root)
    return run_bounded(run, args, "dion-live-", [args.prometheus])


if __name__ == "__main__":
    sys.exit(main())
