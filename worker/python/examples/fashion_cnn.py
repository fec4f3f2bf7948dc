"""A PyTorch CNN trained on Fashion-MNIST through the dion-ps shards: a Python dion-worker.

    PYTHONPATH=build/python build/worker/dion local \\
        --worker_command='/usr/bin/python3 worker/python/examples/fashion_cnn.py'

It takes the flags `dion local` gives dion-worker (--shards, --worker_index, --num_workers,
--epochs, --batch_size, --lr, ..., the TLS and token flags, --start_file, --mode=evaluate) and
prints the same lines (worker/train/progress_line.h), so the run gets the same report,
summary.json and plot as with C++ workers. docs/python.md describes it.

Model: conv 3x3 (1->16) + pool, conv 3x3 (16->32) + pool, linear 1568->256, linear 256->10
(~0.41 M parameters). Conv kernels and the hidden linear layer train with Dion (kernels as
(out, in*3*3) matrices), the biases and the output layer with AdamW, as microsoft/dion groups
them. Worker 0 evaluates on the test set every --eval_interval, but spends at most a quarter of
its time on it (a CPU evaluation of 10 000 images is not free).
"""
import argparse
import gzip
import os
import signal
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import dion_ps
from dion_ps.progress import ProgressReporter, format_evaluation_line


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


# The output layer trains with AdamW, as in microsoft/dion's grouping.
SCALAR_PARAMS = ("fc2",)


def read_idx(path):
    """An IDX file (.gz or not) as a numpy array."""
    if not os.path.exists(path):
        path += ".gz"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(data_dir, train):
    """(images as float32 N x 1 x 28 x 28 in [0, 1], normalised; labels as int64)."""
    prefix = "train" if train else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - 0.2860) / 0.3530  # Fashion-MNIST's mean and standard deviation
    return x, torch.from_numpy(labels.astype(np.int64))


def make_model(seed):
    """The CNN with the initial weights every worker registers (same seed everywhere)."""
    torch.manual_seed(seed)
    return Cnn()


@torch.no_grad()
def evaluate(model, x, y, batch=1000):
    """(mean test loss, accuracy)."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        loss += F.cross_entropy(out, y[i:i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    model.train()
    return loss / len(x), correct / len(x)


class FirstCrossing:
    """Locates the first time the weights reach `target` test accuracy between two
    evaluations, as dion-worker's --snapshot_interval does: copies of the weights every
    `interval` seconds; when an evaluation first reaches the target, the copies since the
    previous evaluation are searched by bisection for the first that reaches it."""

    def __init__(self, model, target, interval):
        self.model, self.target, self.interval = model, target, interval
        self.copies = []  # (time, [parameter tensors])
        self.done = not target or interval <= 0

    def maybe_copy(self, now):
        if not self.done and (not self.copies or now - self.copies[-1][0] >= self.interval):
            self.copies.append((now, [p.detach().clone() for p in self.model.parameters()]))

    def after_evaluation(self, accuracy, test):
        """[(time, test_loss, accuracy)] of the copies evaluated, in time order (empty unless
        this evaluation is the first to reach the target). Leaves the model's weights as the
        copy last loaded: the caller reloads its own."""
        if self.done or accuracy < self.target:
            self.copies.clear()
            return []
        self.done = True
        found, lo, hi = [], 0, len(self.copies)
        while lo < hi:  # the copy at hi (or the evaluation itself) reaches the target
            mid = (lo + hi) // 2
            with torch.no_grad():
                for p, c in zip(self.model.parameters(), self.copies[mid][1]):
                    p.copy_(c)
            test_loss, acc = evaluate(self.model, *test)
            found.append((self.copies[mid][0], test_loss, acc))
            if acc >= self.target:
                hi = mid
            else:
                lo = mid + 1
        self.copies.clear()
        return sorted(found)


def parse_flags(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--shards", required=True, help="host:port of every shard, in shard-index order")
    add("--mode", default="train", choices=["train", "evaluate"])
    add("--worker_index", type=int, default=0)
    add("--num_workers", type=int, default=1)
    add("--worker_id", default="", help="default worker-<index> (evaluator-0 to evaluate)")
    add("--dataset", default="fashion-mnist", choices=["fashion-mnist"])
    add("--data_dir", default="/usr/share/datasets/fashion-mnist")
    add("--partition", default="iid", choices=["iid", "dirichlet"],
        help="split of the training set across workers, dion-worker's (dion_ps.partition)")
    add("--dirichlet_alpha", type=float, default=0.5,
        help="Dirichlet concentration of --partition=dirichlet; smaller means more skew")
    add("--epochs", type=int, default=12)
    add("--batch_size", type=int, default=64)
    add("--max_steps", type=int, default=0, help="stop after this many steps; 0: no limit")
    add("--lr", type=float, default=0.02, help="Dion learning rate (kernels, fc1)")
    add("--adamw_lr", type=float, default=0.002, help="AdamW learning rate (biases, fc2)")
    add("--rank_fraction", type=float, default=0.5)
    add("--compression_rank_fraction", type=float, default=0.25)
    add("--weight_decay", type=float, default=0.0)
    add("--lookahead", type=float, default=0.0)
    add("--model_seed", type=int, default=1)
    add("--seed", type=int, default=0, help="shuffling; 0: model_seed * 1000 + worker_index")
    add("--max_in_flight", type=int, default=2)
    add("--split_threshold", type=int, default=dion_ps.DEFAULT_SPLIT_THRESHOLD,
        help="split a Dion matrix with at least this many elements over the shards, as "
             "dion-worker does (0: never; the shards need --peer_addresses)")
    add("--synchronous", action="store_true")
    add("--dp_clip", type=float, default=0.0)
    add("--eval_interval", default="10s")
    add("--target_accuracy", type=float, default=0.0)
    add("--snapshot_interval", default="0",
        help="with --target_accuracy: weight copies this often (at least 0.5s; FirstCrossing)")
    add("--progress_interval", default="5s")
    add("--start_file", default="")
    add("--flush_timeout", default="5s")
    add("--give_up_after", default="120s", help="how long a shard may stay unreachable")
    add("--metrics_listen", default="")  # accepted; Python workers serve no metrics
    add("--torch_threads", type=int, default=1)
    for flag in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name",
                 "token_file"):
        add(f"--{flag}", default=None)
    return p.parse_args(argv)


def seconds(text):
    """'2s', '150ms', '1m', '0' as seconds (the durations dion local passes)."""
    for suffix, scale in (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix) and text[:-len(suffix)].replace(".", "", 1).isdigit():
            return float(text[:-len(suffix)]) * scale
    return float(text)


def connect(flags, model, worker_id):
    return dion_ps.RemoteOptimizer(
        model.named_parameters(), shards=flags.shards, worker_id=worker_id,
        batch_size=flags.batch_size, rank_fraction=flags.rank_fraction,
        compression_rank_fraction=flags.compression_rank_fraction, lr=flags.lr,
        adamw_lr=flags.adamw_lr, weight_decay=flags.weight_decay,
        scalar_params=SCALAR_PARAMS, split_threshold=flags.split_threshold,
        model_name="fashion-cnn", lookahead=flags.lookahead,
        max_in_flight=1 if flags.synchronous else flags.max_in_flight,
        synchronous=flags.synchronous, dp_clip=flags.dp_clip,
        seed=flags.seed or flags.model_seed * 1000 + flags.worker_index,
        tls_ca_file=flags.tls_ca_file, tls_cert_file=flags.tls_cert_file,
        tls_key_file=flags.tls_key_file, tls_server_name=flags.tls_server_name,
        token_file=flags.token_file, give_up_after=seconds(flags.give_up_after))


def wait_for_start_file(path, stop):
    while path and not os.path.exists(path):
        if stop["signal"]:
            return False
        time.sleep(0.005)
    return True


def train(flags, opt, model, data, per_epoch, test, stop):
    x, y = data
    me = flags.worker_index
    # dion-worker's epochs: per_epoch samples each, from reshuffled passes over the partition.
    epochs = dion_ps.EpochOrder(len(x), per_epoch, flags.seed or flags.model_seed * 1000 + me)
    reporter = ProgressReporter(me, opt, interval=seconds(flags.progress_interval))
    evaluating = me == 0
    crossing = FirstCrossing(model, flags.target_accuracy,
                             max(0.5, seconds(flags.snapshot_interval)) if evaluating else 0)
    eval_interval = seconds(flags.eval_interval)
    next_eval, steps = eval_interval, 0
    for epoch in range(1, flags.epochs + 1):
        order = torch.from_numpy(epochs.next())
        for i in range(0, len(order), flags.batch_size):
            if stop["signal"] or (flags.max_steps and steps >= flags.max_steps):
                return reporter
            batch = order[i:i + flags.batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            opt.step(samples=len(batch), loss=loss)
            opt.zero_grad()
            steps += 1
            reporter.step(epoch, len(batch), loss.item())
            if not evaluating:
                continue
            if opt.lookahead:
                opt.refresh(lookahead=0)
            crossing.maybe_copy(reporter.elapsed())
            if reporter.elapsed() >= next_eval:
                copied_at = reporter.elapsed()
                opt.refresh(lookahead=0)
                test_loss, accuracy = evaluate(model, *test)
                spent = reporter.elapsed() - copied_at
                for when, found_loss, found_accuracy in crossing.after_evaluation(accuracy, test):
                    reporter.evaluated(found_loss, found_accuracy, when)
                reporter.evaluated(test_loss, accuracy, copied_at)
                next_eval = reporter.elapsed() + max(eval_interval, 3 * spent)
                opt.refresh()  # the bisection and lookahead 0 changed the weights
            elif opt.lookahead:
                opt.refresh()
    return reporter


def main(argv):
    flags = parse_flags(argv)
    torch.set_num_threads(flags.torch_threads)
    stop = {"signal": 0}
    connected = {"done": False}

    def on_signal(number, frame):
        if not connected["done"]:
            sys.exit(0)  # nothing computed or sent yet
        stop["signal"] = number

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    test = load_fashion_mnist(flags.data_dir, train=False)
    model = make_model(flags.model_seed)
    if flags.mode == "evaluate":
        opt = connect(flags, model, flags.worker_id or "evaluator-0")
        test_loss, accuracy = evaluate(model, *test)
        print(format_evaluation_line(len(test[0]), test_loss, accuracy), flush=True)
        print(f"test accuracy: {100 * accuracy:.2f}%", flush=True)
        opt.close()
        return 0
    x, y = load_fashion_mnist(flags.data_dir, train=True)
    # dion-worker's split (the same on every worker: model_seed), from the same C++ code.
    parts = dion_ps.partition(y.numpy(), flags.num_workers, flags.partition,
                              flags.dirichlet_alpha, flags.model_seed, num_classes=10)
    mine = torch.from_numpy(parts[flags.worker_index])
    per_epoch = dion_ps.samples_per_epoch(len(mine), len(x), flags.num_workers,
                                          flags.synchronous)
    worker_id = flags.worker_id or f"worker-{flags.worker_index}"
    opt = connect(flags, model, worker_id)
    connected["done"] = True
    print(f"dion-worker: {worker_id} training on {len(mine)} of {len(x)} samples "
          f"({flags.partition} partition), {len(opt_shards(flags))} shard(s), "
          f"{per_epoch} samples per epoch", file=sys.stderr, flush=True)
    if not wait_for_start_file(flags.start_file, stop):
        return 0
    reporter = train(flags, opt, model, (x[mine], y[mine]), per_epoch, test, stop)
    report = opt.flush_all(timeout=seconds(flags.flush_timeout))
    if stop["signal"]:
        print(f"dion-worker: stopped by signal {stop['signal']}; flushed {report['pushes']} "
              "push(es), nothing accumulated is lost", file=sys.stderr, flush=True)
    if flags.worker_index == 0:
        copied_at = reporter.elapsed()
        opt.refresh(lookahead=0)
        test_loss, accuracy = evaluate(model, *test)
        reporter.evaluated(test_loss, accuracy, copied_at)
        print(f"test accuracy: {100 * accuracy:.2f}%", flush=True)
    reporter.finish()
    opt.close()
    return 0


def opt_shards(flags):
    return [s for s in flags.shards.split(",") if s]


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except dion_ps.DionError as error:
        print(f"dion-worker: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
