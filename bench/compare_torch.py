#!/usr/bin/env -S /usr/bin/python3
"""The C++ Dion step against the same step written in PyTorch (float32, CPU).

Runs bench/dion_step_bench with --json for the given shapes and ranks, then times the Dion
step below in PyTorch at the same n, r and thread count, with the orthonormalization done
two ways: torch.linalg.qr (Householder, the reference's simple variant) and Cholesky QR
(torch.linalg.cholesky + torch.linalg.solve_triangular). Prints a markdown table of median
times and the ratios C++ / PyTorch. Like the C++ bench, it also times the four matmuls of
the step in the same repetitions (the PyTorch GEMM-bound): both sides run the same sgemm of
the same OpenBLAS, so dividing each side's step by its own GEMM-bound gives a C++ / PyTorch
ratio that load from other processes on a shared machine hardly skews, and
GEMM-bound / PyTorch step is the floor no implementation of these four GEMMs can beat.

Run it with Debian's interpreter, which has torch (the `python3` on PATH may not):
    /usr/bin/python3 bench/compare_torch.py --bench build-bench/bench/dion_step_bench
If torch cannot be imported, only the C++ part runs and the script still exits 0.

Both sides use the same OpenBLAS (Debian's torch links libblas.so.3, which is
openblas-pthread here), so its thread count is set explicitly on both sides: --threads is
passed to the C++ bench, and in this process, through ctypes, to openblas_set_num_threads of
the OpenBLAS torch loaded. torch's own intra-op (OpenMP) pool is timed at two sizes: equal to
--threads, and 1. With both pools at 2 threads on a 2-core machine, libgomp's spinning
workers compete with OpenBLAS's and the step gets several times slower, so the ratio is taken
against the faster of the two configurations (the fair baseline), and both are printed.
"""

import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", default="build/bench/dion_step_bench",
                   help="path of the dion_step_bench binary (relative: to cwd, else to the repo)")
    p.add_argument("--shapes", default="1024,2048,4096", help="comma-separated n (n x n)")
    p.add_argument("--rank_fractions", default="0.25,0.0625", help="comma-separated fractions")
    p.add_argument("--ranks", default="", help="explicit ranks instead of fractions")
    p.add_argument("--reps", type=int, default=7, help="repetitions for n < 4096 (median)")
    p.add_argument("--large_reps", type=int, default=5, help="repetitions for n >= 4096")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for both sides (OpenBLAS and torch)")
    p.add_argument("--method", default="auto", help="ortho method of the C++ step")
    p.add_argument("--cpp_json", default="",
                   help="read the C++ results from this file instead of running the bench")
    p.add_argument("--torch_threads", default="",
                   help="comma-separated torch intra-op thread counts to try (default: threads,1)")
    p.add_argument("--target", type=float, default=0.8, help="target C++ / PyTorch ratio")
    return p.parse_args()


def find_bench(path):
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(REPO, path)


def run_cpp(args, shapes):
    """The C++ bench's JSON for `shapes` (a comma-separated string), or --cpp_json's rows."""
    if args.cpp_json:
        with open(args.cpp_json) as f:
            cpp = json.load(f)
        wanted = {int(x) for x in shapes.split(",") if x}
        cpp["rows"] = [row for row in cpp["rows"] if row["n"] in wanted]
        return cpp
    bench = find_bench(args.bench)
    if not os.access(bench, os.X_OK):
        sys.exit(f"compare_torch: no executable bench at {bench}; build it with "
                 f"`ninja -C <build dir> dion_step_bench` and pass --bench")
    cmd = [bench, "--json", "--muon=false", f"--shapes={shapes}",
           f"--rank_fractions={args.rank_fractions}", f"--ranks={args.ranks}",
           f"--reps={args.reps}", f"--large_reps={args.large_reps}",
           f"--threads={args.threads}", f"--method={args.method}"]
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def set_openblas_threads(threads):
    """Sets the thread count of every OpenBLAS loaded in this process; returns what it reports."""
    libs = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "openblas" in path and ".so" in path:
                libs.add(path)
    reported = []
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_set_num_threads(ctypes.c_int(threads))
            reported.append(lib.openblas_get_num_threads())
        except (OSError, AttributeError):
            pass
    return reported


class TorchTimes:
    """Medians and minima (seconds) of the PyTorch step and of its GEMM-bound."""

    def __init__(self, step, gemm):
        self.step, self.step_min = statistics.median(step), min(step)
        self.gemm = statistics.median(gemm)

    @property
    def ratio(self):  # step / GEMM-bound, measured side by side in this process
        return self.step / self.gemm


def time_torch(torch, n, r, reps, ortho, seed=1):
    """Times the PyTorch Dion step (state persisting across reps after a warm-up) and, in the
    same repetitions, the four matmuls it consists of, as the C++ bench does for its step."""
    lr, mu, wd, eps = 0.01, 0.95, 0.01, 1e-8
    decay, scale = 1.0 - lr * wd, lr * math.sqrt(n / n)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n, generator=gen) * 0.02
    M = torch.zeros(n, n)
    Q = torch.randn(n, r, generator=gen)

    def step(G, Q):
        B = M.add_(G)                                # B = M + G, in place
        P = ortho(B @ Q)                             # P = orthonormalize(B Q)
        R = B.T @ P                                  # R = B^T P
        M.addmm_(P, R.T, alpha=-(1.0 - mu))          # M = B - (1 - mu) P R^T
        Q = R / (R.norm(dim=0) + eps)                # Q = colnorm(R)
        X.mul_(decay).addmm_(P, Q.T, alpha=-scale)   # X = decay X - scale P Q^T
        return Q

    # GEMM-bound operands of their own, so the step's state is not disturbed. The X update
    # is timed as one addmm_ with beta = decay, the single sgemm the C++ step uses.
    Bg = torch.randn(n, n, generator=gen)
    Mg, Xg = torch.zeros(n, n), torch.zeros(n, n)
    Qg = torch.randn(n, r, generator=gen)
    Pg, Rg = torch.empty(n, r), torch.empty(n, r)

    def seconds(f):
        start = time.perf_counter()
        f()
        return time.perf_counter() - start

    def gemms():
        return (seconds(lambda: torch.matmul(Bg, Qg, out=Pg))
                + seconds(lambda: torch.matmul(Bg.T, Pg, out=Rg))
                + seconds(lambda: Mg.addmm_(Pg, Rg.T, alpha=-(1.0 - mu)))
                + seconds(lambda: Xg.addmm_(Pg, Qg.T, beta=decay, alpha=-scale)))

    step_times, gemm_times = [], []
    for rep in range(-1, reps):  # rep -1 is the warm-up
        G = torch.randn(n, n, generator=gen)
        start = time.perf_counter()
        Q = step(G, Q)
        elapsed = time.perf_counter() - start
        gemm = gemms()
        if rep >= 0:
            step_times.append(elapsed)
            gemm_times.append(gemm)
        del G
    return TorchTimes(step_times, gemm_times)


def ortho_qr(torch):
    return lambda P: torch.linalg.qr(P, mode="reduced")[0]


def ortho_cholesky_qr(torch):
    def f(P):
        U = torch.linalg.cholesky(P.T @ P, upper=True)               # P^T P = U^T U
        return torch.linalg.solve_triangular(U, P, upper=True, left=False)  # P U^{-1}
    return f


def ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def main():
    args = parse_args()
    try:
        import torch
    except ImportError as e:
        torch = None
        print(f"compare_torch: PyTorch is not importable ({e}); run this script with "
              f"/usr/bin/python3 (Debian python3-torch). Only the C++ bench runs.",
              file=sys.stderr)

    shapes = [x.strip() for x in args.shapes.split(",") if x.strip()]
    if torch is None:
        cpp = run_cpp(args, ",".join(shapes))
        print(f"Dion step, float32, C++ (ortho {cpp['method']}, OpenBLAS threads "
              f"{cpp['threads']}), medians\n")
        print("| n | r | C++ step ms | C++ GEMM-bound ms | step / GEMM |")
        print("|---|---|---|---|---|")
        for row in cpp["rows"]:
            print(f"| {row['n']} | {row['r']} | {ms(row['step_s'])} | {ms(row['gemm_bound_s'])} "
                  f"| {row['ratio']:.3f} |")
        return 0

    torch_threads = ([int(x) for x in args.torch_threads.split(",") if x]
                     or sorted({args.threads, 1}, reverse=True))
    blas_threads = set_openblas_threads(args.threads)
    torch.set_grad_enabled(False)
    methods = [("qr", ortho_qr(torch)), ("cholesky qr", ortho_cholesky_qr(torch))]
    # Shape by shape, C++ then PyTorch, so that a change in the load of a shared machine
    # between the two sides stays small.
    results, cpp = [], None
    for shape in shapes:
        cpp = run_cpp(args, shape)
        for row in cpp["rows"]:
            n, r, reps = row["n"], row["r"], row["reps"]
            times = {}  # (method, torch threads) -> median seconds
            for name, ortho in methods:
                for tt in torch_threads:
                    torch.set_num_threads(tt)
                    print(f"torch n={n} r={r} ortho={name} torch_threads={tt} reps={reps} ...",
                          file=sys.stderr, flush=True)
                    times[(name, tt)] = time_torch(torch, n, r, reps, ortho)
            results.append((row, times))
    print(f"Dion step, float32, C++ (ortho {cpp['method']}, OpenBLAS threads {cpp['threads']}) "
          f"vs PyTorch {torch.__version__} (OpenBLAS threads {blas_threads}), medians\n")

    def best(times, name):  # the faster torch thread configuration for this method
        return min((t for (m, _), t in times.items() if m == name), key=lambda t: t.step)

    def verdict(x):
        return "met" if x <= args.target else f"missed by {(x / args.target - 1) * 100:.0f}%"

    print("Raw: C++ step median / PyTorch step median. Normalised: (C++ step / C++ GEMM-bound) /"
          " (PyTorch step / PyTorch GEMM-bound); each side's GEMM-bound is timed in the same\n"
          "repetitions as its step, so load from other processes cancels (both run the same\n"
          "OpenBLAS sgemm). Floor: PyTorch GEMM-bound / PyTorch step, the least ratio any step\n"
          "doing these four GEMMs can reach.\n")
    print("| n | r | C++ step ms | C++ step / GEMM | PyTorch qr ms | PyTorch qr step / GEMM "
          "| PyTorch Cholesky QR ms | PyTorch CQR step / GEMM | C++ / PyTorch qr: raw, normalised "
          f"| C++ / PyTorch CQR: raw, normalised | target <= {args.target} (normalised; qr / CQR) "
          "| floor (qr / CQR) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row, times in results:
        qr, cqr = best(times, "qr"), best(times, "cholesky qr")
        cpp_ratio = row["step_s"] / row["gemm_bound_s"]
        cells = []
        for t in (qr, cqr):
            cells.append(f"{row['step_s'] / t.step:.3f}, {cpp_ratio / t.ratio:.3f}")
        print(f"| {row['n']} | {row['r']} | {ms(row['step_s'])} | {cpp_ratio:.3f} "
              f"| {ms(qr.step)} | {qr.ratio:.3f} | {ms(cqr.step)} | {cqr.ratio:.3f} "
              f"| {cells[0]} | {cells[1]} "
              f"| {verdict(cpp_ratio / qr.ratio)} / {verdict(cpp_ratio / cqr.ratio)} "
              f"| {1 / qr.ratio:.3f} / {1 / cqr.ratio:.3f} |")
    print("\nPyTorch medians by torch intra-op threads: step ms (GEMM-bound ms timed beside it);"
          " the table above uses the faster configuration\n")
    cols = [(name, tt) for name, _ in methods for tt in torch_threads]
    print("| n | r | " + " | ".join(f"{name}, torch threads {tt}" for name, tt in cols)
          + " | C++ step ms (GEMM-bound ms) |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for row, times in results:
        print(f"| {row['n']} | {row['r']} | "
              + " | ".join(f"{ms(times[c].step)} ({ms(times[c].gemm)})" for c in cols)
              + f" | {ms(row['step_s'])} ({ms(row['gemm_bound_s'])}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
