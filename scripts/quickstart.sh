#!/usr/bin/env bash
# README's first command: installs the Debian packages, builds dion-ps (Release) and runs the
# main job, `dion local`: 2 shards and 4 workers on 127.0.0.1 training an MLP on
# Fashion-MNIST (Debian package dataset-fashion-mnist), with progress, a final report and
# run_dir/{summary.json,curves.svg}.
#
# Usage: scripts/quickstart.sh [--no-setup] [extra flags for `dion local`, see --help]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-setup" ]; then shift; else bash scripts/setup.sh; fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "${JOBS:-$(nproc)}" --target dion dion-server dion-worker
exec build/worker/dion local "$@"
