#!/usr/bin/python3
"""PyTorch baseline for `dion local`: the same MLP on Fashion-MNIST, single process, AdamW.

Trains 784-256-128-10 (ReLU, softmax cross-entropy) with AdamW (lr 1e-3, batch 128 by
default) on the same IDX files and the same pixel normalisation as dion-worker
(worker/train/idx_loader.h: mean 0.2860, stddev 0.3530), evaluates on the test set every
--eval_every steps, and prints the time at which test accuracy first reached --target.
Evaluation time is excluded from the training clock; data loading is excluded too (dion local
reports both its wall time and its time to the target from the workers' own clock).

Output: one line per evaluation, then a JSON summary on the last line (prefix "summary ").

Run with Debian's python3 (python3-torch, python3-numpy): /usr/bin/python3 bench/torch_fashion_mnist.py
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

import numpy as np
import torch


def read_idx(path):
    """Reads an IDX file, gzip or raw (detected from the first two bytes)."""
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = data[3]
    if magic not in (0x00000803, 0x00000801):
        sys.exit(f"{path}: magic 0x{magic:08x}, expected 0x00000803 or 0x00000801")
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if array.size != int(np.prod(shape)):
        sys.exit(f"{path}: {array.size} bytes of data, expected {int(np.prod(shape))}")
    return array.reshape(shape)


def find(data_dir, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    sys.exit(f"{data_dir}: neither {stem} nor {stem}.gz exists (Debian: dataset-fashion-mnist)")


def load(data_dir, train):
    prefix = "train" if train else "t10k"
    images = read_idx(find(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(data_dir, f"{prefix}-labels-idx1-ubyte"))
    x = (images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.2860) / 0.3530
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--eval_every", type=int, default=100, help="steps between evaluations")
    parser.add_argument("--target", type=float, default=0.88, help="test accuracy to time")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the same single-core budget as one worker)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stop_at_target", action="store_true",
                        help="stop as soon as the target accuracy is reached")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train = load(args.data_dir, True)
    x_test, y_test = load(args.data_dir, False)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=args.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()

    def evaluate():
        model.eval()
        with torch.no_grad():
            logits = model(x_test)
            loss = loss_fn(logits, y_test).item()
            accuracy = (logits.argmax(dim=1) == y_test).float().mean().item()
        model.train()
        return loss, accuracy

    train_seconds = 0.0
    step = 0
    time_to_target = None
    epochs_to_target = None  # passes over the training set at the first evaluation >= target
    curve = []
    n = len(x_train)
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(n)
        for begin in range(0, n, args.batch_size):
            start = time.perf_counter()
            index = order[begin:begin + args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[index]), y_train[index])
            loss.backward()
            optimizer.step()
            train_seconds += time.perf_counter() - start
            step += 1
            if step % args.eval_every == 0:
                test_loss, accuracy = evaluate()
                curve.append({"step": step, "epoch": epoch, "train_seconds": train_seconds,
                              "test_loss": test_loss, "test_accuracy": accuracy})
                print(f"step={step} epoch={epoch} train_s={train_seconds:.2f} "
                      f"test_loss={test_loss:.4f} test_accuracy={accuracy:.4f}", flush=True)
                if time_to_target is None and accuracy >= args.target:
                    time_to_target = train_seconds
                    epochs_to_target = step * args.batch_size / n
                    if args.stop_at_target:
                        break
        if args.stop_at_target and time_to_target is not None:
            break
    test_loss, accuracy = evaluate()
    summary = {"framework": "pytorch", "torch_version": torch.__version__,
               "threads": args.threads, "batch_size": args.batch_size, "lr": args.lr,
               "steps": step, "train_seconds": train_seconds,
               "final_test_accuracy": accuracy, "final_test_loss": test_loss,
               "target": args.target, "time_to_target_seconds": time_to_target,
               "epochs_to_target": epochs_to_target,
               "curve": curve}
    print("summary " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
