#!/usr/bin/env bash
# Installs every Debian bookworm package dion-ps needs to build, test and run.
# Idempotent and non-interactive; safe to run again. Must run as root (or via sudo).
#
# Usage: scripts/setup.sh [--with-bench] [--with-deploy] [--build-only]
#   --with-bench   also install the optional packages used by bench/ (python3-torch, now in
#                  the default set for the Python client's tests)
#   --with-deploy  also install what deploy/image/build_and_smoke.sh needs to build and run the
#                  container images without a Docker engine (podman, buildah, debootstrap,
#                  runc; ~150 MB; python3-grpcio, which it also needs, is in the default set)
#   --build-only   only what compiling dion-server and dion-worker needs (the container build
#                  stage, deploy/docker/Dockerfile): no test, CI or deploy-check tools
# Besides Debian packages, the default installs the offline Kubernetes schema validator for
# the deploy tests (deploy/tools/install_validators.sh: npm packages into ~/.cache).
set -euo pipefail

# Compiling dion-server, dion-worker and dion.
build_packages=(
  build-essential cmake ninja-build pkg-config ca-certificates
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libeigen3-dev libopenblas-dev liblapacke-dev
  prometheus-cpp-dev zlib1g-dev
)
packages=(
  "${build_packages[@]}" git
  # dion local's throwaway CA and certificates (worker/local/local_security.h).
  openssl
  # dion local --link_rate / --link_delay: ip netns, veth pairs and tc tbf
  # (worker/local/worker_links.h; tests/worker_links_test.cc runs them as root).
  iproute2
  libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist python3 python3-numpy
  # dion_ps, the Python client (worker/python, docs/python.md) and its tests (tests/python).
  python3-dev pybind11-dev python3-torch python3-pytest
  # deploy/ checks (ctest -L deploy): promtool and the prometheus server (prometheus, ~100 MB),
  # yamllint, python3-grpcio (deploy_health_probe: the shards' TLS health probe).
  prometheus yamllint python3-grpcio
)
bench_packages=(python3-torch)
deploy_packages=(podman buildah debootstrap runc uidmap)

with_bench=0; with_deploy=0; build_only=0
for arg in "$@"; do
  case "$arg" in
    --with-bench) with_bench=1 ;;
    --with-deploy) with_deploy=1 ;;
    --build-only) build_only=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --with-bench, --with-deploy," \
            "--build-only)" >&2; exit 2 ;;
  esac
done
if [ "$build_only" = 1 ]; then packages=("${build_packages[@]}"); fi
if [ "$with_bench" = 1 ]; then packages+=("${bench_packages[@]}"); fi
if [ "$with_deploy" = 1 ]; then packages+=("${deploy_packages[@]}"); fi

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
# node and npm for the validator: the machine image may already carry them (node 20 here);
# otherwise Debian's (node 18; validate_k8s.mjs was only checked on node 20).
if [ "$build_only" = 0 ] && ! command -v npm >/dev/null; then
  for p in nodejs npm; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
fi
if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup.sh: all ${#packages[@]} packages already installed"
else
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ "$build_only" = 0 ]; then
  bash "$(dirname "$0")/../deploy/tools/install_validators.sh"
fi
