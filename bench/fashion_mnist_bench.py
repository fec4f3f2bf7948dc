#!/usr/bin/python3
"""Fashion-MNIST end to end: `dion local` configurations against the PyTorch baseline.

Runs, in one invocation and interleaved repetition by repetition (so that load from other
processes hits every configuration alike):

  torch     bench/torch_fashion_mnist.py: the same 784-256-128-10 MLP, single process, AdamW
            (lr 1e-3, batch 128), with the number of torch threads that was faster in a probe
  default   `dion local` with its defaults (2 shards, 4 workers, rank fraction 1/4)
  w1, w8    1 and 8 workers
  w8b       8 workers, 2048-sample batches on the shards (= 8 x 256: sync8's samples per step)
  r1, r16   Dion rank fractions 1 and 1/16, each pushing factors of its own rank (r1: dense-size
            pushes; the default pushes rank 1/16 factors under a rank 1/4 Dion step)
  c4        the default with pushes of rank 1/4 (= its Dion rank, the default before 2026-12-02)
  old       the defaults before 2026-12-02: 128-sample local steps, lookahead 4, rank 1/4 pushes
  sync8     8 workers, `--sync` (every batch waits for all workers)
  w2, sync4, w4wait (not run by default) 2 workers; 4 synchronous workers; 4 workers that each
            wait for their own push to be applied before their next local step
  sb        (not run by default) the default with the shards on OpenBLAS's SandyBridge kernel
            and the workers on the one OpenBLAS picks for the CPU (mixed CPU models)
  sball     (not run by default) every process on the SandyBridge kernel: what that kernel's
            speed alone costs, to tell it apart from mixing kernels in sb
A configuration's token env:NAME=VALUE sets NAME in the environment of `dion local` (so of
every process it starts) instead of passing a flag.

Each `dion local` run writes summary.json; this script reads it and reports, per configuration,
the medians over the repetitions of: final test accuracy, time to the target accuracy (dion
local: from the moment the workers start training together, data loading excluded, to the time
worker 0 copied the first weights that reach it, at the grain of --snapshot_interval, 0.15 s ~
0.11 epochs; PyTorch: its training clock, data loading and evaluation excluded, at the grain of
--torch_eval_every, 50 steps = 0.107 epochs), the ratio of that time to PyTorch's in the same
repetition, the passes over the training set at that first evaluation (epochs to target: the
sample cost, apart from the speed), bytes on the wire and the dense equivalent. "async vs sync"
compares w8 and w8b with sync8 after the same number of samples (the same epochs).

Usage (Debian's interpreter, for python3-torch):
  /usr/bin/python3 bench/fashion_mnist_bench.py --dion build/worker/dion --reps 3
  ... --configs default,w8,sync8 --epochs 12 --json_out /tmp/fmnist.json
  ... --config 'ts128=--target_samples=128' --configs default,ts128 --no_torch
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "default": [],
    "w1": ["--workers=1"],
    "w8": ["--workers=8"],
    "w8b": ["--workers=8", "--target_samples=2048"],
    "r1": ["--rank_fraction=1", "--compression_rank_fraction=1"],
    "r16": ["--rank_fraction=0.0625", "--compression_rank_fraction=0.0625"],
    "c4": ["--compression_rank_fraction=0.25"],
    "old": ["--batch_size=128", "--lookahead=4", "--compression_rank_fraction=0.25"],
    "sync8": ["--workers=8", "--sync"],
    # The sample cost of asynchrony at the default 4 workers (docs/benchmarks.md): 2 workers,
    # 4 synchronous workers, and 4 workers that each wait for their own push to be applied.
    "w2": ["--workers=2"],
    "sync4": ["--sync"],
    "w4wait": ["--worker_flags=--synchronous"],
    "sb": ["--shard_env=OPENBLAS_CORETYPE=SandyBridge"],
    "sball": ["env:OPENBLAS_CORETYPE=SandyBridge"],
}


# Seconds per training step of the baseline MLP (batch 128) at a given torch thread count.
PROBE = """
import time, torch
torch.set_num_threads({threads})
model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                            torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
loss_fn = torch.nn.CrossEntropyLoss()
def step():
    optimizer.zero_grad()
    loss_fn(model(x), y).backward()
    optimizer.step()
for _ in range(50):
    step()
start = time.perf_counter()
for _ in range(200):
    step()
print((time.perf_counter() - start) / 200)
"""


def run_torch(args, threads):
    command = [sys.executable, os.path.join(HERE, "torch_fashion_mnist.py"),
               f"--epochs={args.torch_epochs}", f"--threads={threads}",
               f"--target={args.target}", f"--data_dir={args.data_dir}",
               f"--eval_every={args.torch_eval_every}"]
    if args.stop_at_target:
        command.append("--stop_at_target")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    for line in output.splitlines():
        if line.startswith("summary "):
            return json.loads(line[len("summary "):])
    raise RuntimeError("torch_fashion_mnist.py printed no summary line:\n" + output)


def run_dion(args, name, flags, run_dir):
    command = [args.dion, "local", f"--run_dir={run_dir}", "--progress=quiet",
               f"--epochs={args.epochs}", f"--target_accuracy={args.target}",
               f"--data_dir={args.data_dir}"]
    if args.eval_interval:
        command.append(f"--eval_interval={args.eval_interval}")
    env = dict(os.environ)
    for token in flags:
        if token.startswith("env:"):
            key, _, value = token[len("env:"):].partition("=")
            env[key] = value
        else:
            command.append(token)
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: {' '.join(command)} exited {result.returncode}:\n"
                           + result.stdout[-3000:] + result.stderr[-3000:])
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    summary["bench_wall_s"] = time.monotonic() - started
    return summary


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, pattern):
    return "-" if value is None else pattern.format(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--dion", default=os.path.join(HERE, "..", "build", "worker", "dion"),
                        help="the built dion binary")
    parser.add_argument("--configs", default="default,w1,w8,w8b,r1,r16,sync8",
                        help="comma-separated, from: " + ", ".join(CONFIGS))
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every configuration")
    parser.add_argument("--epochs", type=int, default=12, help="dion local --epochs")
    parser.add_argument("--eval_interval", default="",
                        help="dion local --eval_interval (default: dion local's; the time to "
                             "target has --snapshot_interval's grain either way)")
    parser.add_argument("--torch_epochs", type=int, default=12)
    parser.add_argument("--torch_eval_every", type=int, default=50,
                        help="PyTorch steps between evaluations (50 steps = 0.107 epochs, ~0.12 s)")
    parser.add_argument("--torch_threads", default="probe",
                        help="torch threads, or 'probe': time 1 and 2 on 200 steps, keep the faster")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument("--stop_at_target", action="store_true",
                        help="stop the PyTorch run at the target (faster; no final accuracy)")
    parser.add_argument("--target", type=float, default=0.88)
    parser.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--extra", default="", help="extra dion local flags for every config")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=FLAGS",
                        help="define (or redefine) a configuration: dion local flags separated "
                             "by spaces, e.g. --config 'ts128=--target_samples=128 --lr=0.01'; "
                             "repeatable; name it in --configs to run it")
    parser.add_argument("--json_out", default="", help="write every run's figures here")
    args = parser.parse_args()

    for definition in args.config:
        name, sep, flags = definition.partition("=")
        if not sep or not name:
            parser.error(f"--config '{definition}': expected NAME=FLAGS")
        CONFIGS[name] = flags.split()
    names = [n for n in args.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            parser.error(f"unknown config '{n}'; expected one of {', '.join(CONFIGS)}")
    if not os.access(args.dion, os.X_OK):
        parser.error(f"{args.dion} is not an executable; build the 'dion' target first")
    extra = args.extra.split()

    threads = 1
    if not args.no_torch:
        if args.torch_threads == "probe":
            import torch  # noqa: F401  (fails early with a clear message if missing)
            probe = {}
            for t in (1, 2):
                script = PROBE.format(threads=t)
                probe[t] = float(subprocess.run([sys.executable, "-c", script], check=True,
                                                capture_output=True, text=True).stdout)
            threads = min(probe, key=probe.get)
            print(f"torch probe: {probe[1] * 1e3:.2f} ms/step at 1 thread, "
                  f"{probe[2] * 1e3:.2f} ms/step at 2: using {threads}", flush=True)
        else:
            threads = int(args.torch_threads)

    runs = []  # {"config", "rep", ...}
    scratch = tempfile.mkdtemp(prefix="fmnist_bench.")
    for rep in range(args.reps):
        torch_summary = None
        if not args.no_torch:
            torch_summary = run_torch(args, threads)
            runs.append({"config": "torch", "rep": rep,
                         "final_test_accuracy": torch_summary["final_test_accuracy"],
                         "train_time_to_target_s": torch_summary["time_to_target_seconds"],
                         "epochs_to_target": torch_summary.get("epochs_to_target"),
                         "train_time_s": torch_summary["train_seconds"],
                         "threads": threads})
            print(f"rep {rep} torch: time to {args.target:.0%} "
                  f"{fmt(torch_summary['time_to_target_seconds'], '{:.1f}')} s, final "
                  f"{torch_summary['final_test_accuracy']:.4f}", flush=True)
        for name in names:
            run_dir = os.path.join(scratch, f"{name}-{rep}")
            s = run_dion(args, name, CONFIGS[name] + extra, run_dir)
            row = {"config": name, "rep": rep, "flags": CONFIGS[name] + extra,
                   "final_test_accuracy": s["final_test_accuracy"],
                   "train_time_to_target_s": s.get("train_time_to_target_s"),
                   "time_to_target_s": s.get("time_to_target_s"),
                   "train_time_s": s["training_time_s"], "wall_time_s": s["wall_time_s"],
                   "samples": s["samples"], "steps": s["steps"], "pushes": s["pushes"],
                   "sent_bytes": s["sent_bytes"], "dense_bytes": s["dense_bytes"],
                   "mean_staleness": s["mean_staleness"], "refused": s["refused"],
                   "resyncs": s["resyncs"],
                   "received_bytes": s.get("received_bytes"),
                   "wire_bytes": s.get("wire_bytes"), "wire_dense_bytes": s.get("wire_dense_bytes"),
                   "epochs_to_target": next((e["epochs"] for e in s["evaluations"]
                                             if e["test_accuracy"] >= args.target), None)}
            # The accuracy after the same number of samples as the sync run is the final one:
            # every configuration trains the same epochs.
            if torch_summary and torch_summary["time_to_target_seconds"] and \
                    row["train_time_to_target_s"] is not None:
                row["ratio_to_torch"] = (row["train_time_to_target_s"]
                                         / torch_summary["time_to_target_seconds"])
            runs.append(row)
            print(f"rep {rep} {name}: final {row['final_test_accuracy']:.4f}, time to "
                  f"{args.target:.0%} {fmt(row['train_time_to_target_s'], '{:.1f}')} s "
                  f"(ratio to torch {fmt(row.get('ratio_to_torch'), '{:.2f}')}), "
                  f"{row['sent_bytes'] / 1e9:.2f} GB sent / {row['dense_bytes'] / 1e9:.2f} GB "
                  f"dense, {row['resyncs']} resyncs in {row['pushes']} pushes, "
                  f"wall {row['wall_time_s']:.1f} s", flush=True)

    print()
    print(f"medians over {args.reps} repetition(s); dion local --epochs={args.epochs} "
          f"{' '.join(extra)}; torch {threads} thread(s)")
    print(f"| config | final accuracy | train time to {args.target:.0%} (s) | / PyTorch | "
          f"epochs to {args.target:.0%} | GB sent | dense / sent | GB received | "
          f"dense / (sent + received) | samples/s | mean staleness | resyncs |")
    print("|" + "---|" * 12)
    for name in (["torch"] if not args.no_torch else []) + names:
        rows = [r for r in runs if r["config"] == name]
        accuracy = median([r["final_test_accuracy"] for r in rows])
        to_target = median([r["train_time_to_target_s"] for r in rows])
        epochs = fmt(median([r.get("epochs_to_target") for r in rows]), '{:.2f}')
        reached = sum(1 for r in rows if r.get("train_time_to_target_s") is not None)
        if reached < len(rows):  # the medians below are over the runs that reached it
            epochs += f" ({reached} of {len(rows)} reached it)"
        if name == "torch":
            print(f"| PyTorch, {threads} thread(s) | {accuracy:.4f} | {fmt(to_target, '{:.1f}')}"
                  f" | 1 | {epochs} | - | - | - | - | - | - | - |")
            continue
        ratio = median([r.get("ratio_to_torch") for r in rows])
        sent = median([r["sent_bytes"] / 1e9 for r in rows])
        dense_ratio = median([r["dense_bytes"] / r["sent_bytes"] for r in rows])
        rate = median([r["samples"] / r["train_time_s"] for r in rows])
        staleness = median([r["mean_staleness"] for r in rows])
        resyncs = median([r["resyncs"] for r in rows])
        received = median([r["received_bytes"] / 1e9 for r in rows if r.get("received_bytes")])
        wire_ratio = median([r["wire_dense_bytes"] / r["wire_bytes"] for r in rows
                             if r.get("wire_bytes")])
        print(f"| {name} `{' '.join(CONFIGS[name]) or '(defaults)'}` | {accuracy:.4f} | "
              f"{fmt(to_target, '{:.1f}')} | {fmt(ratio, '{:.2f}')} | {epochs} | {sent:.2f} | "
              f"{dense_ratio:.2f} | {fmt(received, '{:.2f}')} | {fmt(wire_ratio, '{:.2f}')} | "
              f"{rate:.0f} | {staleness:.2f} | {resyncs:.0f} |")
    if "sync8" in names:
        s = median([r["final_test_accuracy"] for r in runs if r["config"] == "sync8"])
        for name in ("w8", "w8b"):
            if name in names:
                a = median([r["final_test_accuracy"] for r in runs if r["config"] == name])
                print(f"async ({name}) - sync (sync8) final accuracy after the same samples: "
                      f"{100 * (a - s):+.2f} points")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "torch_threads": threads, "runs": runs}, f, indent=1)
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
