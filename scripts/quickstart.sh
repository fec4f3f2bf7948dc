#!/usr/bin/env bash
# README's first command: installs the Debian packages, builds dion-ps (Release) and runs the
# main job. Until `dion local` lands (issue #5), the main job is the Dion step benchmark:
# it times the optimizer step against its GEMM-bound time on this machine.
#
# Usage: scripts/quickstart.sh [--no-setup] [extra flags for dion_step_bench]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-setup" ]; then shift; else bash scripts/setup.sh; fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "${JOBS:-$(nproc)}"
echo "== Dion step benchmark (see docs/benchmarks.md for what the columns mean) =="
exec build/bench/dion_step_bench --shapes=1024,2048 "$@"
