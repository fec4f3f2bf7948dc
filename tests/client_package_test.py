#!/usr/bin/python3
"""The installed client package, used as a program outside the tree would (ctest client_package).

  client_package_test.py --build_dir DIR --source_root DIR --server BIN --cxx COMPILER
                         [--cmake BIN] [--launcher LAUNCHER] [--generator NAME]

In a temporary directory (outside the source and build trees):
  1. `cmake --install <build_dir> --component client` into a fresh prefix;
  2. the installed headers include no gRPC, protobuf or prometheus-cpp header, and client.h
     compiles against the installed tree alone (plus Eigen and Abseil): -H lists every header
     the compiler opened, none of them gRPC's, protobuf's or a generated one;
  3. worker/client/example is configured with find_package(DionPS) against that prefix only
     and built;
  4. a dion-server from the build listens on 127.0.0.1 port 0 and the example trains against
     it: it must exit 0, and the losses it prints must fall.
Exit code 0 when every check passed, 1 otherwise.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

FORBIDDEN_INCLUDE = re.compile(r'#\s*include\s*[<"](grpcpp/|grpc/|google/protobuf/|prometheus/|'
                               r'dion/v1/|[^>"]*\.pb\.h)')
FORBIDDEN_OPENED = re.compile(r"grpc|google/protobuf|prometheus|\.pb\.h")
LOSS_LINE = re.compile(r"^step (\d+) loss ([0-9.eE+-]+)$")


def fail(message):
    print(f"FAIL {message}")
    return 1


def run(command, timeout, **kwargs):
    """Runs `command`; returns the CompletedProcess (output captured as text)."""
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    print(f"$ {' '.join(command)}  ({time.monotonic() - started:.1f} s)", flush=True)
    return done


def grep_installed_headers(include_root):
    """1 if an installed header includes a gRPC, protobuf, prometheus-cpp or generated header."""
    for directory, _, files in os.walk(include_root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if FORBIDDEN_INCLUDE.search(line):
                        return fail(f"installed {path}:{number} includes {line.strip()}")
    return 0


def start_header_compile(args, include_root, tmp):
    """Starts compiling a file that includes only the installed client.h (-H: list what is
    opened), with the installed tree and Eigen as the only include paths. Returns the Popen."""
    unit = os.path.join(tmp, "only_client_h.cc")
    with open(unit, "w", encoding="utf-8") as f:
        f.write('#include "worker/client/client.h"\n'
                "int main() {\n"
                "  dion::ClientOptions options;\n"
                "  return options.max_in_flight > 0 ? 0 : 1;\n"
                "}\n")
    eigen = subprocess.run(["pkg-config", "--cflags-only-I", "eigen3"], capture_output=True,
                           text=True, timeout=60, check=True)
    command = [args.cxx, "-std=c++20", "-fsyntax-only", "-H", f"-I{include_root}",
               *eigen.stdout.split(), unit]
    print("$ " + " ".join(command), flush=True)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_header_compile(compile_process):
    try:
        _, stderr = compile_process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        compile_process.kill()
        compile_process.communicate()
        return fail("compiling the installed client.h took over 180 s")
    if compile_process.returncode != 0:
        return fail(f"client.h does not compile against the installed headers alone:\n"
                    f"{stderr[-4000:]}")
    opened = [line.lstrip(". ") for line in stderr.splitlines() if line.startswith(".")]
    if not any(path.endswith("worker/client/client.h") for path in opened):
        return fail("the compiler's -H list does not show client.h: cannot check what it opened")
    bad = [path for path in opened if FORBIDDEN_OPENED.search(path)]
    if bad:
        return fail(f"compiling client.h opened {bad[:5]}")
    print(f"ok: installed headers are gRPC-free; client.h alone opens {len(opened)} headers")
    return 0


def build_example(args, prefix, tmp):
    build = os.path.join(tmp, "example-build")
    configure = [args.cmake, "-S", os.path.join(args.source_root, "worker", "client", "example"),
                 "-B", build, "-G", args.generator, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CXX_COMPILER={args.cxx}", f"-DCMAKE_PREFIX_PATH={prefix}",
                 "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF"]
    if args.launcher:
        configure.append(f"-DCMAKE_CXX_COMPILER_LAUNCHER={args.launcher}")
    for step in (configure, [args.cmake, "--build", build]):
        done = run(step, 240)
        if done.returncode != 0:
            fail(f"{' '.join(step)}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
            return None
    with open(os.path.join(build, "CMakeCache.txt"), encoding="utf-8") as f:
        found = [line.strip() for line in f if line.startswith("DionPS_DIR:")]
    expected = os.path.realpath(prefix)
    if not found or not os.path.realpath(found[0].split("=", 1)[1]).startswith(expected):
        fail(f"find_package(DionPS) did not use the installed prefix {prefix}: {found}")
        return None
    return os.path.join(build, "linear_regression")


def start_server(args, tmp):
    """Starts dion-server on a free port; returns (process, host:port) or (process, None)."""
    log_path = os.path.join(tmp, "server.log")
    log = open(log_path, "w+", encoding="utf-8")
    server = subprocess.Popen([args.server, "--listen=127.0.0.1:0", "--metrics_listen="],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        with open(log_path, encoding="utf-8") as f:
            match = re.search(r"serving gRPC on (\S+),", f.read())
        if match:
            return server, match.group(1)
        time.sleep(0.1)
    with open(log_path, encoding="utf-8") as f:
        print(f.read())
    return server, None


def check_training(example, address):
    trained = run([example, address], 90)
    print(trained.stdout[-3000:])
    print(trained.stderr[-3000:], file=sys.stderr)
    if trained.returncode != 0:
        return fail(f"the example exited with {trained.returncode}, expected 0")
    losses = [float(m.group(2)) for m in map(LOSS_LINE.match, trained.stdout.splitlines()) if m]
    if len(losses) < 2:
        return fail(f"expected at least two 'step N loss L' lines, got {len(losses)}")
    if not losses[-1] < 0.1 * losses[0]:
        return fail(f"the loss went from {losses[0]} to {losses[-1]}; expected a 10x fall")
    print(f"ok: the example trained, loss {losses[0]:.4f} -> {losses[-1]:.4f} "
          f"in {len(losses) - 1} reports")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build_dir", required=True)
    parser.add_argument("--source_root", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--cxx", required=True)
    parser.add_argument("--cmake", default="cmake")
    parser.add_argument("--launcher", default="")
    parser.add_argument("--generator", default="Ninja")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dion-client-package-") as tmp:
        prefix = os.path.join(tmp, "prefix")
        installed = run([args.cmake, "--install", args.build_dir, "--component", "client",
                         "--prefix", prefix], 120)
        if installed.returncode != 0:
            return fail(f"cmake --install:\n{installed.stdout}\n{installed.stderr}")
        include_root = os.path.join(prefix, "include", "dion-ps")
        if not os.path.isfile(os.path.join(include_root, "worker", "client", "client.h")):
            return fail(f"client.h was not installed under {include_root}")
        if grep_installed_headers(include_root) != 0:
            return 1
        # Compiles while the example configures (mostly waiting for pkg-config).
        header_compile = start_header_compile(args, include_root, tmp)
        example = build_example(args, prefix, tmp)
        if check_header_compile(header_compile) != 0 or example is None:
            return 1
        server, address = start_server(args, tmp)
        try:
            if address is None:
                return fail("dion-server did not report its address")
            if check_training(example, address) != 0:
                return 1
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
    print(f"PASS in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
