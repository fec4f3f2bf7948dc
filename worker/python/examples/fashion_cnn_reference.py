"""The reference for fashion_cnn.py: the same CNN, trained by plain single-process PyTorch
(torch.optim.AdamW), with the same evaluation cadence, printing the time to each target.

    PYTHONPATH=build/python /usr/bin/python3 worker/python/examples/fashion_cnn_reference.py \\
        --epochs=8 --batch_size=64 --lr=0.001

Prints one line per evaluation ("eval elapsed_s=.. epoch=.. test_accuracy=..") and a last
"reference ..." line with time_to_<target> for each --targets (the time the evaluated weights
were copied, as in dion local's report), the best and the final accuracy.
"""
import argparse
import sys
import time

import torch
import torch.nn.functional as F

from fashion_cnn import FirstCrossing, evaluate, load_fashion_mnist, make_model


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--eval_interval", type=float, default=2.0, help="seconds")
    p.add_argument("--targets", default="0.90,0.91",
                   help="test accuracies; the first one is located between evaluations")
    p.add_argument("--snapshot_interval", type=float, default=0.5,
                   help="seconds between weight copies that locate the first crossing of the "
                        "first target (FirstCrossing, as fashion_cnn.py)")
    p.add_argument("--model_seed", type=int, default=1)
    p.add_argument("--torch_threads", type=int, default=1)
    flags = p.parse_args(argv)
    torch.set_num_threads(flags.torch_threads)
    x, y = load_fashion_mnist(flags.data_dir, train=True)
    test = load_fashion_mnist(flags.data_dir, train=False)
    model = make_model(flags.model_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=flags.lr, weight_decay=flags.weight_decay)
    targets = [float(t) for t in flags.targets.split(",")]
    crossing = FirstCrossing(model, targets[0], flags.snapshot_interval)
    reached = {}
    best = accuracy = 0.0
    generator = torch.Generator().manual_seed(flags.model_seed)
    start = time.monotonic()
    next_eval = flags.eval_interval
    steps_per_epoch = len(x) // flags.batch_size
    for epoch in range(flags.epochs):
        order = torch.randperm(len(x), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * flags.batch_size:(step + 1) * flags.batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = epoch == flags.epochs - 1 and step == steps_per_epoch - 1
            now = time.monotonic() - start
            crossing.maybe_copy(now)
            if now >= next_eval or last:
                _, accuracy = evaluate(model, *test)
                spent = time.monotonic() - start - now
                weights = [p.detach().clone() for p in model.parameters()]
                found = crossing.after_evaluation(accuracy, test)
                with torch.no_grad():
                    for p, w in zip(model.parameters(), weights):
                        p.copy_(w)
                for when, _, acc in found + [(now, None, accuracy)]:
                    best = max(best, acc)
                    for t in targets:
                        if acc >= t and (t not in reached or when < reached[t]):
                            reached[t] = when
                print(f"eval elapsed_s={now:.2f} epoch={epoch + (step + 1) / steps_per_epoch:.2f}"
                      f" test_accuracy={accuracy:.4f} located={found}", flush=True)
                next_eval = time.monotonic() - start + max(flags.eval_interval, 3 * spent)
    times = " ".join(f"time_to_{t:g}={reached[t]:.1f}" if t in reached else f"time_to_{t:g}=-"
                     for t in targets)
    print(f"reference epochs={flags.epochs} batch_size={flags.batch_size} lr={flags.lr} "
          f"{times} best={best:.4f} final={accuracy:.4f} "
          f"wall_s={time.monotonic() - start:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
