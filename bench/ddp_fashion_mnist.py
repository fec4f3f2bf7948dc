#!/usr/bin/python3
"""One rank of PyTorch DDP (gloo) on Fashion-MNIST: the baseline of bench/slow_link_bench.py.

The MLP of dion-worker (784-<hidden>-10, ReLU, softmax cross-entropy; --hidden 256,128 is
dion-worker's default), the IDX files and pixel normalisation of bench/torch_fashion_mnist.py,
AdamW (betas 0.9/0.95, weight decay 0.01). Each epoch every rank trains on its 1/world of a
permutation shared by all ranks (DistributedSampler's split). --powersgd_rank R > 0 registers
the PowerSGD communication hook (torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook) at
rank R with error feedback and warm start, after --powersgd_start plain all-reduce steps.

Rank 0 evaluates on the test set every --eval_every steps (excluded from its training clock;
the other ranks wait in their next all-reduce) and tells the others whether to stop: after
--epochs, or once the training clock passed --time_limit seconds, or at the target with
--stop_at_target. Rank 0 prints a JSON summary on its last line (prefix "summary ").

Run with Debian's python3 (python3-torch 1.13): /usr/bin/python3 bench/ddp_fashion_mnist.py
--rank 0 --world_size 4 --master 127.0.0.1:29500
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_fashion_mnist import load  # noqa: E402  (the same data and normalisation)


def mlp(hidden):
    layers, width = [], 784
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world_size", type=int, default=4)
    parser.add_argument("--master", required=True, help="host:port of rank 0's rendezvous")
    parser.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--hidden", default="256,128")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=128, help="samples per rank and step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--powersgd_rank", type=int, default=0, help="0: dense all-reduce")
    parser.add_argument("--powersgd_start", type=int, default=10)
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.88)
    parser.add_argument("--time_limit", type=float, default=1e9, help="training seconds")
    parser.add_argument("--stop_at_target", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(1)
    host, port = args.master.rsplit(":", 1)
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=args.rank,
                            world_size=args.world_size)
    torch.manual_seed(args.seed)
    # One gradient bucket: with several, the PowerSGD hook's collectives of different buckets
    # reach gloo in different orders on different ranks ("op.preamble.length <= op.nbytes").
    dist._DEFAULT_FIRST_BUCKET_BYTES = 256 << 20
    model = torch.nn.parallel.DistributedDataParallel(
        mlp([int(h) for h in args.hidden.split(",")]), bucket_cap_mb=256)
    if args.powersgd_rank > 0:
        state = powerSGD.PowerSGDState(
            process_group=None, matrix_approximation_rank=args.powersgd_rank,
            start_powerSGD_iter=args.powersgd_start, use_error_feedback=True, warm_start=True)
        model.register_comm_hook(state, powerSGD.powerSGD_hook)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=args.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_train, y_train = load(args.data_dir, True)
    x_test, y_test = (load(args.data_dir, False) if args.rank == 0 else (None, None))

    def evaluate():
        model.eval()
        with torch.no_grad():
            logits = model.module(x_test)
            accuracy = (logits.argmax(dim=1) == y_test).float().mean().item()
        model.train()
        return accuracy

    n = len(x_train)
    per_rank = n // args.world_size
    generator = torch.Generator().manual_seed(args.seed)
    train_seconds, step, curve = 0.0, 0, []
    time_to_target = epochs_to_target = None
    stop = torch.zeros(1)
    dist.barrier()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(n, generator=generator)[args.rank:per_rank * args.world_size:
                                                      args.world_size]
        for begin in range(0, per_rank - args.batch_size + 1, args.batch_size):
            start = time.perf_counter()
            index = order[begin:begin + args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x_train[index]), y_train[index]).backward()
            optimizer.step()
            train_seconds += time.perf_counter() - start
            step += 1
            if step % args.eval_every != 0:
                continue
            if args.rank == 0:
                accuracy = evaluate()
                samples = step * args.batch_size * args.world_size
                curve.append({"step": step, "epochs": samples / n,
                              "train_seconds": train_seconds, "test_accuracy": accuracy})
                if time_to_target is None and accuracy >= args.target:
                    time_to_target, epochs_to_target = train_seconds, samples / n
                stop[0] = float(train_seconds > args.time_limit or
                                (args.stop_at_target and time_to_target is not None))
            start = time.perf_counter()
            dist.broadcast(stop, 0)
            train_seconds += time.perf_counter() - start
            if stop[0] > 0:
                break
        if stop[0] > 0:
            break
    if args.rank == 0:
        accuracy = evaluate()
        print("summary " + json.dumps({
            "framework": "ddp", "powersgd_rank": args.powersgd_rank, "hidden": args.hidden,
            "batch_size": args.batch_size, "lr": args.lr, "world_size": args.world_size,
            "steps": step, "epochs": step * args.batch_size * args.world_size / n,
            "train_seconds": train_seconds, "stopped_early": bool(stop[0] > 0),
            "final_test_accuracy": accuracy, "target": args.target,
            "time_to_target_seconds": time_to_target, "epochs_to_target": epochs_to_target,
            "curve": curve}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
