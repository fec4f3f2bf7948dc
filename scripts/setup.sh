#!/usr/bin/env bash
# Installs every Debian bookworm package dion-ps needs to build, test and run.
# Idempotent and non-interactive; safe to run again. Must run as root (or via sudo).
#
# Usage: scripts/setup.sh [--with-bench]
#   --with-bench  also install the optional packages used by bench/ (python3-torch, numpy)
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libeigen3-dev libopenblas-dev liblapacke-dev
  prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev zlib1g-dev
  dataset-fashion-mnist python3 python3-numpy
)
bench_packages=(python3-torch)

with_bench=0
for arg in "$@"; do
  case "$arg" in
    --with-bench) with_bench=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --with-bench)" >&2; exit 2 ;;
  esac
done
if [ "$with_bench" = 1 ]; then packages+=("${bench_packages[@]}"); fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "setup.sh: must run as root to install packages (or install sudo)" >&2; exit 1; fi
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup.sh: all ${#packages[@]} packages already installed"
  exit 0
fi
echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
