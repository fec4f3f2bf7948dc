#!/usr/bin/python3
"""`dion local --prometheus_config` against a real Prometheus (ctest deploy_prometheus_local).

  local_prometheus_test.py --dion BIN --source_root DIR [--prometheus BIN] [--promtool BIN]

Runs `dion local` on the synthetic task (2 shards, 2 workers, metrics on free loopback ports)
with --prometheus_config, then:
  1. `promtool check config` accepts the written file (and with it the alert rules it names);
  2. the file names the rules of this source tree by absolute path;
  3. Debian's prometheus, started with that file (scrape and evaluation interval turned down
     from 5 s to 1 s, nothing else changed), sees exactly the four targets up, with the job and
     shard / worker labels the alert rules and the dashboard use, and scrapes training progress
     from both shards and the workers;
  4. `dion local` still finishes its run with exit status 0.
Bounded: gives up after DEADLINE_S seconds. Python 3 standard library only.
"""
import argparse
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prom_util import (Prometheus, check, consecutive_free_ports, free_ports,  # noqa: E402
                       http_get, run_bounded, wait_until)

DEADLINE_S = 90


def run(args, tmp, procs):
    deadline = time.monotonic() + DEADLINE_S
    base = consecutive_free_ports(4)
    prom_port, = free_ports(1)
    if base <= prom_port < base + 4:
        raise AssertionError(f"port {prom_port} was handed out twice")
    config = os.path.join(tmp, "prometheus-dion.yml")
    dion_log = open(os.path.join(tmp, "dion.log"), "w+")
    procs["dion"] = subprocess.Popen(
        [args.dion, "local", "--dataset=synthetic", "--shards=2", "--workers=2", "--epochs=60",
         "--progress=lines", "--progress_interval=1s", "--eval_interval=1s",
         f"--metrics_base_port={base}", f"--prometheus_config={config}",
         f"--run_dir={tmp}/run"], stdout=dion_log, stderr=subprocess.STDOUT)
    wait_until("dion local to write the configuration", lambda: os.path.exists(config), deadline)
    failures = []
    with open(config) as f:
        text = f.read()
    print(text)

    # 1 and 2.
    checked = subprocess.run([args.promtool, "check", "config", config], capture_output=True,
                             text=True)
    check(failures, checked.returncode == 0,
          f"promtool check config: {checked.stdout.strip()} {checked.stderr.strip()}")
    rules = os.path.join(args.source_root, "deploy/prometheus/rules/dion-alerts.yml")
    check(failures, f'  - "{rules}"' in text, f"rule_files names {rules}")

    # 3.
    fast = os.path.join(tmp, "prometheus-fast.yml")
    for old in ("scrape_interval: 5s", "evaluation_interval: 5s"):
        if old not in text:
            raise AssertionError(f"{config}: '{old}' not found")
    with open(fast, "w") as f:
        f.write(text.replace(": 5s", ": 1s"))
    prom_log = open(os.path.join(tmp, "prometheus.log"), "w+")
    procs["prometheus"] = subprocess.Popen(
        [args.prometheus, f"--config.file={fast}", f"--storage.tsdb.path={tmp}/tsdb",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=prom_log, stderr=subprocess.STDOUT)
    prom = Prometheus(prom_port)
    wait_until("prometheus ready", lambda: "Ready" in http_get(f"{prom.base}/-/ready"), deadline)
    wait_until("3 scrapes of all 4 targets and versions advancing on both shards", lambda: (
        (prom.value('count(count_over_time(up{job=~"dion-ps|dion-worker"}[1m]) >= 3)') or 0) == 4
        and (prom.value('count(max by (shard) (dion_parameter_version{job="dion-ps"}) > 0)')
             or 0) == 2), deadline)
    targets = prom.api("targets")["activeTargets"]
    labels = sorted(((t["labels"]["job"], t["labels"].get("shard"), t["labels"].get("worker"),
                      t["labels"]["instance"], t["health"]) for t in targets),
                    key=lambda t: t[3])
    expected = [("dion-ps", "0", None, f"127.0.0.1:{base}", "up"),
                ("dion-ps", "1", None, f"127.0.0.1:{base + 1}", "up"),
                ("dion-worker", None, "0", f"127.0.0.1:{base + 2}", "up"),
                ("dion-worker", None, "1", f"127.0.0.1:{base + 3}", "up")]
    check(failures, labels == expected, f"targets (job, shard, worker, instance, health): {labels}")
    samples = prom.value('sum(dion_worker_samples_total{job="dion-worker"})') or 0
    check(failures, samples > 0, f"workers' samples scraped: {samples}")
    rule_groups = prom.api("rules")["groups"]
    check(failures, sum(len(g["rules"]) for g in rule_groups) > 0,
          f"alert rules loaded from the written file: {len(rule_groups)} group(s)")

    # 4.
    procs["prometheus"].terminate()
    left = max(1.0, deadline - time.monotonic())
    try:
        code = procs["dion"].wait(timeout=left)
    except subprocess.TimeoutExpired:
        code = None
    dion_log.seek(0)
    output = dion_log.read()
    check(failures, code == 0, f"dion local exit status {code}; last lines:\n"
          + "\n".join(output.splitlines()[-8:]))
    check(failures, f"Prometheus configuration for the metrics ports in {config}" in output,
          "dion local says where the configuration went")
    return failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dion", required=True)
    parser.add_argument("--source_root", required=True)
    parser.add_argument("--prometheus", default="/usr/bin/prometheus")
    parser.add_argument("--promtool", default="/usr/bin/promtool")
    args = parser.parse_args()
    args.source_root = os.path.abspath(args.source_root)
    return run_bounded(run, args, "dion-local-prom-", [args.prometheus, args.promtool])


if __name__ == "__main__":
    sys.exit(main())
