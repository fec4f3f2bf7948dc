#!/usr/bin/python3
"""Slow links: dion-ps (`dion local --link_rate`) against PyTorch DDP dense and DDP + PowerSGD.

For each link rate (per worker, both directions) and model, in one invocation:
  - dion:      `dion local` (4 workers, 2 shards, defaults) with --link_rate (and
               --link_delay with --delay), each worker in its own network namespace behind a
               tbf-shaped veth pair (docs/worker.md, "Slow links");
  - ddp:       bench/ddp_fashion_mnist.py, 4 gloo ranks, dense all-reduce;
  - powersgd:  the same with the PowerSGD hook at rank 4 with error feedback;
  - extra dion configurations with --dion_config NAME=FLAGS (e.g. fixed push ranks, or
    --worker_flags=--compression_rank_fraction=auto: a configuration's --worker_flags, comma-
    separated, are added to the bench's own), named in --systems.
Every DDP rank runs in a namespace of its own behind a veth pair shaped exactly as `dion local`
shapes a worker's (the same names, 198.18.0.0/15 addresses, slot lock and tbf parameters;
see LinkNamespaces), with forwarding enabled on the root-side veths only, so rank-to-rank
traffic crosses the sender's and the receiver's link. DDP gets no added delay: its ranks
connect to each other on ports gloo picks, which the delay relay of `dion local` does not
serve, so with --delay only dion pays the latency (which favours DDP).

Reported per run: time to --target test accuracy (each side's own training clock: dion's
train_time_to_target_s, rank 0's clock without evaluations for DDP), final test accuracy,
epochs, and bytes both ways per worker (dion: the relay's count of gRPC/TLS bytes on each
worker's link; DDP: the veths' counters, Ethernet/IP/TCP headers included, ~4.5% more than
payload). Runs are cut at --time_limit seconds of training (dion: SIGINT, whose partial report
still has the time to target if it was reached). Needs root, Debian's python3-torch and the
Fashion-MNIST IDX files.

  sudo /usr/bin/python3 bench/slow_link_bench.py --dion build/worker/dion \\
      --rates 100mbit --models default,wide --systems dion,ddp,powersgd --json_out out.json
"""
import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {"default": "256,128", "wide": "1024,1024"}
LOCK_DIR = "/run/dion-links"
SLOTS = 512


def rate_bits(text):
    for suffix, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3), ("bit", 1)):
        if text.endswith(suffix):
            return int(float(text[:-len(suffix)]) * scale)
    return int(text)


def run(*argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class LinkNamespaces:
    """worker/local/worker_links.cc's links for `count` processes, plus routing between them."""

    def __init__(self, count, rate):
        os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
        for slot in range(SLOTS):
            self.lock = open(f"{LOCK_DIR}/slot-{slot}.lock", "a")
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                self.lock.close()
        else:
            sys.exit("no free link slot")
        self.slot, self.count = slot, count
        try:
            for j in range(count):
                self._add(j, rate)
        except subprocess.CalledProcessError as e:
            self.close()
            sys.exit(f"setting up links: {' '.join(e.cmd)}: {e.stderr.decode().strip()}")

    def address(self, j, root_side):
        return f"198.{18 + self.slot // 256}.{self.slot % 256}.{4 * j + (1 if root_side else 2)}"

    def ns(self, j):
        return f"dion-link-{self.slot}-w{j}"

    def host(self, j):
        return f"dl{self.slot}w{j}h"

    def inner(self, j):
        return f"dl{self.slot}w{j}n"

    def _add(self, j, rate):
        ns, host, inner = self.ns(j), self.host(j), self.inner(j)
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
        run("ip", "link", "set", inner, "netns", ns)
        run("ip", "addr", "add", self.address(j, True) + "/30", "dev", host)
        run("ip", "link", "set", host, "up")
        run("ip", "-n", ns, "addr", "add", self.address(j, False) + "/30", "dev", inner)
        run("ip", "-n", ns, "link", "set", inner, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "route", "add", "default", "via", self.address(j, True))
        # Forwarding on this interface only (the machine's ip_forward stays as it is).
        with open(f"/proc/sys/net/ipv4/conf/{host}/forwarding", "w") as f:
            f.write("1")
        burst = max(32 * 1024, rate // 8 // 500)  # as worker/local/worker_links.cc
        tbf = ["root", "tbf", "rate", f"{rate}bit", "burst", str(burst), "latency", "50ms"]
        run("tc", "qdisc", "add", "dev", host, *tbf)
        run("tc", "-n", ns, "qdisc", "add", "dev", inner, *tbf)

    def counters(self, j):
        """(bytes from process j, bytes to process j) on its veth, headers included."""
        base = f"/sys/class/net/{self.host(j)}/statistics/"
        with open(base + "rx_bytes") as rx, open(base + "tx_bytes") as tx:
            return int(rx.read()), int(tx.read())

    def close(self):
        for j in range(self.count):
            subprocess.run(["ip", "link", "del", self.host(j)], stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "netns", "del", self.ns(j)], stderr=subprocess.DEVNULL)
        self.lock.close()


def run_dion(args, rate, model, flags, work):
    run_dir = tempfile.mkdtemp(prefix="dion-", dir=work)
    command = [args.dion, "local", f"--link_rate={rate}", f"--run_dir={run_dir}",
               "--progress=quiet"]
    if args.delay:
        command.append(f"--link_delay={args.delay}")
    # Registration carries the initial weights (the wide model's 7.5 MB per shard): through a
    # slow link on a loaded machine it can take longer than dion-worker's 10 s --rpc_deadline.
    worker_flags = ["--rpc_deadline=60s"]
    if model != "default":
        worker_flags.append(f"--hidden_layers={MODELS[model]}")
    # A configuration's own --worker_flags join these (a second --worker_flags would replace them).
    for flag in flags:
        if flag.startswith("--worker_flags="):
            worker_flags += flag[len("--worker_flags="):].split(",")
    command.append("--worker_flags=" + " ".join(worker_flags))
    command += [f for f in flags if not f.startswith("--worker_flags=")]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = process.communicate(timeout=args.limit + 45)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # a partial report, the links removed
        out, _ = process.communicate()
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    sent = received = 0
    for line in out.splitlines():  # "dion local: link of worker-j: N bytes sent, M bytes received"
        if "link of worker-" in line:
            words = line.split()
            sent += int(words[-6])
            received += int(words[-3])
    workers = 4
    ranks = push_ranks(run_dir, workers)
    cut = s["final_test_accuracy"] is None  # interrupted: no final evaluation
    last = s["evaluations"][-1]["test_accuracy"] if s["evaluations"] else None
    return {"status": "cut" if cut else s["status"],
            "time_to_target_s": s.get("train_time_to_target_s"),
            "final_test_accuracy": last if cut else s["final_test_accuracy"],
            "epochs": s["samples"] / 60000, "train_s": s["training_time_s"],
            "wall_s": time.monotonic() - started,
            "epochs_to_target": next((e["epochs"] for e in s["evaluations"]
                                      if e["test_accuracy"] >= args.target), None),
            "sent_per_worker": sent / workers, "received_per_worker": received / workers,
            "resyncs": s["resyncs"], "mean_staleness": s["mean_staleness"],
            "push_rank_fractions": ranks}


def push_ranks(run_dir, workers):
    """Each worker's last (push_rank_fraction, push_rank_changes, uplink_rate_mbps) with the
    adaptive push rank."""
    ranks = []
    for j in range(workers):
        last = None
        with open(os.path.join(run_dir, "logs", f"worker-{j}.log"), errors="replace") as f:
            for line in f:
                if line.startswith(("progress ", "final ")) and "push_rank_fraction=" in line:
                    kv = dict(w.split("=", 1) for w in line.split() if "=" in w)
                    last = (float(kv["push_rank_fraction"]), int(kv["push_rank_changes"]),
                            float(kv.get("uplink_rate_mbps", "nan")))
        ranks.append(last)
    return ranks


def run_ddp(args, rate, model, powersgd_rank, work):
    links = LinkNamespaces(4, rate_bits(rate))
    try:
        before = [links.counters(j) for j in range(4)]
        master = f"{links.address(0, False)}:29500"
        flags = ["--master", master, "--hidden", MODELS[model], "--epochs", str(args.epochs),
                 "--batch_size", str(args.ddp_batch), "--lr", str(args.ddp_lr),
                 "--eval_every", str(args.ddp_eval_every), "--time_limit", str(args.limit),
                 "--powersgd_rank", str(powersgd_rank), "--target", str(args.target)]
        ranks = []
        logs = tempfile.mkdtemp(prefix="ddp-", dir=work)
        for r in range(4):
            env = dict(os.environ, GLOO_SOCKET_IFNAME=links.inner(r))
            ranks.append(subprocess.Popen(
                ["ip", "netns", "exec", links.ns(r), "/usr/bin/python3",
                 os.path.join(HERE, "ddp_fashion_mnist.py"), "--rank", str(r)] + flags,
                env=env, stdout=open(f"{logs}/rank-{r}.log", "w"), stderr=subprocess.STDOUT))
        started = time.monotonic()
        ranks[0].wait(timeout=args.limit * 3 + 300)
        after = [links.counters(j) for j in range(4)]
        with open(f"{logs}/rank-0.log") as f:
            out = f.read()
    finally:
        for p in locals().get("ranks", []):  # the others end with rank 0, or are killed
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        links.close()
    line = next((l for l in out.splitlines() if l.startswith("summary ")), None)
    if line is None:
        sys.exit(f"DDP rank 0 printed no summary:\n{out[-3000:]}")
    s = json.loads(line[len("summary "):])
    return {"status": "cut" if s["stopped_early"] and s["time_to_target_seconds"] is None
                      else "ok",
            "time_to_target_s": s["time_to_target_seconds"],
            "final_test_accuracy": s["final_test_accuracy"], "epochs": s["epochs"],
            "train_s": s["train_seconds"], "wall_s": time.monotonic() - started,
            "epochs_to_target": s["epochs_to_target"],
            "sent_per_worker": sum(a[0] - b[0] for a, b in zip(after, before)) / 4,
            "received_per_worker": sum(a[1] - b[1] for a, b in zip(after, before)) / 4}


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dion", required=True, help="path of the dion binary")
    parser.add_argument("--rates", default="100mbit,1gbit,20mbit")
    parser.add_argument("--models", default="default,wide")
    parser.add_argument("--systems", default="dion,ddp,powersgd")
    parser.add_argument("--dion_config", action="append", default=[],
                        help="NAME=FLAGS: a dion configuration to name in --systems")
    parser.add_argument("--delay", default="", help="one-way --link_delay of the dion runs")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--target", type=float, default=0.88)
    parser.add_argument("--time_limit", type=float, default=75,
                        help="training seconds after which a run of the default model is cut")
    parser.add_argument("--time_limit_wide", type=float, default=150,
                        help="the same for the wide model (4x the compute per sample)")
    parser.add_argument("--ddp_batch", type=int, default=256,
                        help="per rank (tuned on loopback: 64, 128, 256, 512 -> 256)")
    parser.add_argument("--ddp_lr", type=float, default=4e-3)
    parser.add_argument("--ddp_eval_every", type=int, default=6, help="0.1 epoch at 256")
    parser.add_argument("--json_out", default="")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: the links are network namespaces and tc qdiscs")
    configs = {"dion": []}
    for c in args.dion_config:
        name, _, flags = c.partition("=")
        configs[name] = flags.split()
    work = tempfile.mkdtemp(prefix="slow-link-bench-")
    results = []
    print(f"load {os.getloadavg()}", flush=True)
    for rate in args.rates.split(","):
        for model in args.models.split(","):
            args.limit = args.time_limit_wide if model == "wide" else args.time_limit
            for system in args.systems.split(","):
                if system in configs:
                    r = run_dion(args, rate, model, configs[system], work)
                elif system in ("ddp", "powersgd"):
                    r = run_ddp(args, rate, model, 4 if system == "powersgd" else 0, work)
                else:
                    sys.exit(f"unknown system {system}")
                r.update(rate=rate, model=model, system=system, load=os.getloadavg()[0])
                results.append(r)
                print(f"| {rate} | {model} | {system} | {fmt(r['time_to_target_s'])} | "
                      f"{fmt(r['epochs_to_target'], 2)} | {fmt(r['final_test_accuracy'], 4)} | "
                      f"{fmt(r['epochs'], 2)} | {r['sent_per_worker'] / 1e6:.1f} | "
                      f"{r['received_per_worker'] / 1e6:.1f} | {r['status']} | "
                      f"{r['load']:.1f} | staleness {fmt(r.get('mean_staleness'), 2)} | "
                      f"push ranks {r.get('push_rank_fractions', '-')} |", flush=True)
                if args.json_out:
                    with open(args.json_out, "w") as f:
                        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
