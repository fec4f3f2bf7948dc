#!/usr/bin/python3
"""What the Python client adds to a training step of the Fashion-MNIST CNN
(worker/python/examples/fashion_cnn.py), over the C++ client's own Client::Submit.

One dion-server shard on 127.0.0.1 (from the build tree), one RemoteOptimizer over the CNN,
--steps local steps of --batch_size random images after --warmup. Per step it times the
forward and backward pass, opt.step() (gradient views, the binding, Client::Submit, the
replica copied into the torch parameters) and opt.zero_grad(); the binding reports how long
Client::Submit itself took. The Python overhead is step + zero_grad - Submit; the figure is its
median over the steps as a fraction of the median whole training step (forward, backward, step,
zero_grad). It also reports the median of refresh() alone (the replica copy, which a C++
trainer's CopyWeights does too).

Usage (Debian's interpreter, for python3-torch):
  /usr/bin/python3 bench/python_step_overhead.py --build build --steps 300
"""
import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time


def start_shard(server, directory):
    log = open(os.path.join(directory, "server.log"), "w+")
    process = subprocess.Popen(
        [server, "--listen=127.0.0.1:0", "--metrics_listen=", f"--checkpoint_dir={directory}",
         "--wal_sync=none"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        log.seek(0)
        match = re.search(r"serving gRPC on (\S+?),", log.read())
        if match:
            return process, match.group(1)
        time.sleep(0.02)
    process.kill()
    raise RuntimeError("dion-server did not start")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default="build", help="the build tree (dion-server, python/)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=64)
    flags = p.parse_args(argv)
    build = pathlib.Path(flags.build).resolve()
    sys.path.insert(0, str(build / "python"))
    root = pathlib.Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "worker" / "python" / "examples"))
    import torch
    import torch.nn.functional as F
    import dion_ps
    from fashion_cnn import SCALAR_PARAMS, make_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        server, address = start_shard(str(build / "server" / "dion-server"), directory)
        try:
            model = make_model(1)
            opt = dion_ps.RemoteOptimizer(
                model.named_parameters(), shards=[address], worker_id="bench",
                batch_size=flags.batch_size, rank_fraction=0.5, compression_rank_fraction=0.25,
                lr=0.02, adamw_lr=0.002, scalar_params=SCALAR_PARAMS, model_name="bench-cnn")
            g = torch.Generator().manual_seed(0)
            x = torch.randn(flags.batch_size, 1, 28, 28, generator=g)
            y = torch.randint(0, 10, (flags.batch_size,), generator=g)
            rows = {"fb": [], "step": [], "zero": [], "submit": [], "refresh": []}
            for i in range(flags.warmup + flags.steps):
                t0 = time.perf_counter()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                t1 = time.perf_counter()
                opt.step(loss=loss)
                t2 = time.perf_counter()
                opt.zero_grad()
                t3 = time.perf_counter()
                opt.refresh()
                t4 = time.perf_counter()
                if i >= flags.warmup:
                    rows["fb"].append(t1 - t0)
                    rows["step"].append(t2 - t1)
                    rows["zero"].append(t3 - t2)
                    rows["submit"].append(opt.last_submit_seconds)
                    rows["refresh"].append(t4 - t3)
            opt.close()
        finally:
            server.kill()
            server.wait()
    whole = [a + b + c for a, b, c in zip(rows["fb"], rows["step"], rows["zero"])]
    overhead = [b + c - s for b, c, s in zip(rows["step"], rows["zero"], rows["submit"])]
    med = {k: statistics.median(v) * 1e3 for k, v in rows.items()}
    print(f"steps={flags.steps} batch_size={flags.batch_size} (medians, ms)")
    print(f"  forward+backward   {med['fb']:8.3f}")
    print(f"  opt.step()         {med['step']:8.3f}   of which Client::Submit "
          f"{med['submit']:.3f}")
    print(f"  opt.zero_grad()    {med['zero']:8.3f}")
    print(f"  refresh() alone    {med['refresh']:8.3f}   (the replica copy)")
    print(f"  training step      {statistics.median(whole) * 1e3:8.3f}")
    print(f"  python overhead    {statistics.median(overhead) * 1e3:8.3f}   "
          f"= {statistics.median(overhead) / statistics.median(whole):.4f} of a training step")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
