#!/usr/bin/env python3
"""Checks the lock annotations (ABSL_GUARDED_BY, ABSL_EXCLUSIVE_LOCKS_REQUIRED, ...) of the
production sources with clang's -Wthread-safety analysis.

The project builds with g++, for which the annotations are empty macros: without this check
nothing verifies that a field marked GUARDED_BY(mu_) is only touched with mu_ held. This runs
clang++ -fsyntax-only (no code generation) on every .cc under server/, common/ and worker/,
with the flags of the build's compile_commands.json, and fails on any thread-safety warning or
compile error (other clang warnings are ignored).

Usage: thread_safety_check.py BUILD_DIR SOURCE_ROOT
Exits 77 (ctest: skipped) when clang++ is not installed.
"""

import concurrent.futures
import json
import os
import shlex
import shutil
import subprocess
import sys

DIRS = ("server", "common", "worker")
LAUNCHERS = ("ccache", "sccache", "distcc")
CLANG_FLAGS = ["-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety",
               "-Wno-unknown-warning-option"]


def clang_args(entry):
    """The build's flags minus the compiler (and a launcher such as ccache before it), output,
    compile-only and warning options (g++'s warning set is not clang's; only the
    thread-safety group matters here)."""
    args = entry["arguments"] if "arguments" in entry else shlex.split(entry["command"])
    while args and os.path.basename(args[0]) in LAUNCHERS:
        args = args[1:]
    args = args[1:]  # the compiler
    kept = []
    skip_next = False
    for a in args:
        if skip_next:
            skip_next = False
            continue
        if a == "-o":
            skip_next = True
            continue
        if a == "-c" or a.startswith("-W"):
            continue
        kept.append(a)
    return kept


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} BUILD_DIR SOURCE_ROOT")
    build_dir, root = sys.argv[1], os.path.realpath(sys.argv[2])
    clang = shutil.which("clang++")
    if clang is None:
        print("clang++ not found: the thread-safety analysis is skipped (apt-get install clang)")
        sys.exit(77)
    db_path = os.path.join(build_dir, "compile_commands.json")
    try:
        with open(db_path) as f:
            db = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"cannot read {db_path}: {e} (configure with CMAKE_EXPORT_COMPILE_COMMANDS=ON)")
    prefixes = tuple(os.path.join(root, d) + os.sep for d in DIRS)
    entries = [e for e in db
               if os.path.realpath(e["file"]).startswith(prefixes) and e["file"].endswith(".cc")]
    if not entries:
        sys.exit(f"no sources under {', '.join(DIRS)} of {root} in {db_path}")

    def check(entry):
        cmd = [clang] + CLANG_FLAGS + clang_args(entry)
        r = subprocess.run(cmd, cwd=entry["directory"], capture_output=True, text=True)
        return entry["file"], r.returncode, r.stderr

    jobs = int(os.environ.get("JOBS", os.cpu_count() or 1))
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        for path, code, err in pool.map(check, entries):
            # A compile error, or a thread-safety finding (other clang warnings do not count).
            if code != 0 or "-Wthread-safety" in err:
                failed += 1
                print(f"--- {os.path.relpath(path, root)} (clang++ exit {code})\n{err}")
    print(f"thread-safety analysis: {len(entries)} files, {failed} with findings")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
