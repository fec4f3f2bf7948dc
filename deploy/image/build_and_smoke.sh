#!/usr/bin/env bash
# Builds the dion-server and dion-worker images of deploy/docker/Dockerfile without a Docker
# engine or registry, runs them with podman on loopback and checks them (docs/deploy.md,
# "Proof without Docker"):
#   1. base image: debootstrap a minimal Debian bookworm root from the apt archive this machine
#      uses, import it as localhost/bookworm-min:latest (cached: skipped when it exists);
#   2. podman build both targets with --build-arg BASE=localhost/bookworm-min:latest;
#   3. inspect: non-root user, exec-form entrypoint, no compiler in the runtime image;
#   4. run dion-server from its image on 127.0.0.1 the way deploy/k8s runs it (read-only root,
#      all capabilities dropped, no new privileges, checkpoints on a volume) and pass the gRPC
#      health check (deploy/image/grpc_health_check.py), from outside and with the copy in the
#      image (deploy/k8s's exec probe);
#   5. train 200 steps with dion-worker from its image against it (synthetic task), check the
#      shard's /metrics shows the versions advancing;
#   6. podman stop (SIGTERM to the shard, PID 1 of its container): exit code 0, a final
#      checkpoint on the volume.
# Prints the wall time of every step. Needs root, podman, buildah, debootstrap, runc and
# python3-grpcio (scripts/setup.sh --with-deploy) and the Debian archive (for debootstrap and
# the apt-get of the image builds). ctest label deploy_image (configure with
# -DDION_DEPLOY_IMAGE_TEST=ON); not part of the default test run.
#
# Usage: deploy/image/build_and_smoke.sh [--rebuild-base] [--reuse-images] [--remove-images]
#   --reuse-images  skip the builds when both images exist (iterating on the run steps)
#   DION_IMAGE_WORK   work directory (default /var/tmp/dion-image): rootfs, context, volume
#   DION_DEBIAN_MIRROR  archive for debootstrap (default: the first URIs of apt's sources)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${DION_IMAGE_WORK:-/var/tmp/dion-image}"
base_image=localhost/bookworm-min:latest
server_image=localhost/dion-server:smoke
worker_image=localhost/dion-worker:smoke
rebuild_base=0; remove_images=0; reuse_images=0
for arg in "$@"; do
  case "$arg" in
    --rebuild-base) rebuild_base=1 ;;
    --reuse-images) reuse_images=1 ;;
    --remove-images) remove_images=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "build_and_smoke: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

# The sandbox refuses crun's cgroup handling and raising rlimits: runc, cgroupfs, fixed limits.
podman=(podman --runtime runc --cgroup-manager=cgroupfs)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
python=/usr/bin/python3

timings=()
t_start=0
begin() { t_start="$(date +%s%N)"; printf '\n=== %s ===\n' "$1"; current="$1"; }
end() {
  local ms=$((($(date +%s%N) - t_start) / 1000000))
  timings+=("$(printf '%-58s %5d.%d s' "$current" $((ms / 1000)) $((ms % 1000 / 100)))")
}
summary() {
  printf '\n=== timings ===\n'
  printf '%s\n' "${timings[@]}"
}
fail() { echo "FAIL: $*" >&2; summary; exit 1; }

remove_containers() {  # one by one: podman rm gives up on all names if one does not exist
  local c
  for c in dion-smoke-server dion-smoke-worker; do
    "${podman[@]}" rm -f -i -t 0 "$c" >/dev/null 2>&1 || true
  done
}
cleanup() {
  remove_containers
  if [ "$remove_images" = 1 ]; then
    "${podman[@]}" rmi -f "$server_image" "$worker_image" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

begin "requirements"
[ "$(id -u)" = 0 ] || fail "must run as root (podman with runc and cgroupfs, debootstrap)"
for tool in podman buildah debootstrap runc; do
  command -v "$tool" >/dev/null || fail "$tool not found: scripts/setup.sh --with-deploy"
done
"$python" -c 'import grpc' 2>/dev/null || fail "python3-grpcio not installed: scripts/setup.sh --with-deploy"
mkdir -p "$work"
echo "podman $("${podman[@]}" --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), work directory $work"
end

# ---- 1. base image --------------------------------------------------------------------------
if [ "$rebuild_base" = 1 ]; then
  "${podman[@]}" rmi -f "$base_image" >/dev/null 2>&1 || true
  rm -rf "$work/rootfs"
fi
if ! "${podman[@]}" image exists "$base_image"; then
  if [ ! -f "$work/rootfs/.dion-complete" ]; then
    mirror="${DION_DEBIAN_MIRROR:-}"
    if [ -z "$mirror" ]; then
      mirror="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
    fi
    if [ -z "$mirror" ]; then
      mirror="$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
    fi
    [ -n "$mirror" ] || fail "no Debian archive found in apt's sources; set DION_DEBIAN_MIRROR"
    begin "debootstrap --variant=minbase bookworm"
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log"; fail "debootstrap failed (log: $work/debootstrap.log)"; }
    touch "$work/rootfs/.dion-complete"
    du -sh "$work/rootfs"
    end
  fi
  begin "podman import (base image $base_image)"
  tar -C "$work/rootfs" --exclude=./.dion-complete -c . | "${podman[@]}" import - "$base_image"
  end
else
  echo "base image $base_image exists (--rebuild-base to make it again)"
fi

# ---- 2. build -------------------------------------------------------------------------------
begin "build context (repository without .git and build trees)"
rm -rf "$work/context" && mkdir -p "$work/context"
tar -C "$root" --exclude=./.git --exclude='./build' --exclude='./build-*' \
    --exclude='*/node_modules' --exclude='*/__pycache__' -c . | tar -C "$work/context" -x
du -sh "$work/context"
end
build() {  # target image
  "${podman[@]}" build --network=host "${limits[@]}" --build-arg BASE="$base_image" \
    -f "$work/context/deploy/docker/Dockerfile" --target "$1" -t "$2" "$work/context"
}
if [ "$reuse_images" = 1 ] && "${podman[@]}" image exists "$server_image" \
    && "${podman[@]}" image exists "$worker_image"; then
  echo "--reuse-images: using the existing $server_image and $worker_image"
else
begin "podman build --target dion-server (compiles the project)"
build dion-server "$server_image" > "$work/build-server.log" 2>&1 \
  || { tail -30 "$work/build-server.log"; fail "podman build dion-server (log: $work/build-server.log)"; }
end
begin "podman build --target dion-worker (build stage cached)"
build dion-worker "$worker_image" > "$work/build-worker.log" 2>&1 \
  || { tail -30 "$work/build-worker.log"; fail "podman build dion-worker (log: $work/build-worker.log)"; }
end
fi

# ---- 3. inspect -----------------------------------------------------------------------------
begin "inspect images"
for image in "$server_image" "$worker_image"; do
  user="$("${podman[@]}" image inspect --format '{{.Config.User}}' "$image")"
  entrypoint="$("${podman[@]}" image inspect --format '{{json .Config.Entrypoint}}' "$image")"
  size="$("${podman[@]}" image inspect --format '{{.Size}}' "$image")"
  echo "$image: user $user, entrypoint $entrypoint, $((size / 1000000)) MB"
  [ "$user" = "65532:65532" ] || fail "$image runs as '$user', expected 65532:65532"
  [[ "$entrypoint" == '["/usr/local/bin/'* ]] || fail "$image entrypoint $entrypoint is not exec form"
  "${podman[@]}" run --rm --network=host "${limits[@]}" --entrypoint /usr/bin/test "$image" \
    ! -e /usr/bin/c++ -a ! -e /usr/include/grpcpp || fail "$image carries a compiler or headers"
done
# --help exits 1 (Abseil's convention); it must print the flags, which needs every library.
for image in "$server_image" "$worker_image"; do
  out="$("${podman[@]}" run --rm --network=host "${limits[@]}" "$image" --help 2>&1 || true)"
  grep -q 'Flags from' <<< "$out" || { echo "$out" | tail -5; fail "--help fails in $image"; }
done
end

# ---- 4. run the shard, health check ---------------------------------------------------------
read -r grpc_port metrics_port < <("$python" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
volume="$work/volume"
rm -rf "$volume" && mkdir -p "$volume" && chown 65532:65532 "$volume"
begin "podman run dion-server; gRPC health check"
remove_containers  # left over by an interrupted run
"${podman[@]}" run -d --name dion-smoke-server --network=host "${limits[@]}" \
  --read-only --cap-drop=ALL --security-opt=no-new-privileges --tmpfs /tmp \
  -v "$volume:/var/lib/dion" "$server_image" \
  "--listen=127.0.0.1:$grpc_port" "--metrics_listen=127.0.0.1:$metrics_port" \
  --checkpoint_dir=/var/lib/dion/checkpoints --checkpoint_interval=0 > /dev/null \
  || fail "podman run dion-server"
"$python" "$root/deploy/image/grpc_health_check.py" "127.0.0.1:$grpc_port" --wait 60 \
  || { "${podman[@]}" logs dion-smoke-server; fail "gRPC health check"; }
"${podman[@]}" exec dion-smoke-server /usr/bin/python3 /usr/local/bin/grpc_health_check.py \
  "127.0.0.1:$grpc_port" || fail "the image's own probe (deploy/k8s exec probe)"
end

# ---- 5. train against it from the worker image ----------------------------------------------
metric() {  # the largest value of a metric family on the shard's /metrics
  "$python" - "$metrics_port" "$1" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
values = [float(l.split()[-1]) for l in text.splitlines() if l.startswith(sys.argv[2])]
print(max(values) if values else "none")
EOF
}
begin "podman run dion-worker: 200 steps, synthetic task"
"${podman[@]}" run --rm --name dion-smoke-worker --network=host "${limits[@]}" \
  --read-only --cap-drop=ALL --security-opt=no-new-privileges --tmpfs /tmp "$worker_image" \
  "--shards=127.0.0.1:$grpc_port" --dataset=synthetic --max_steps=200 --progress_interval=1s \
  > "$work/worker.log" 2>&1 || { cat "$work/worker.log"; fail "dion-worker from its image"; }
tail -2 "$work/worker.log"
version="$(metric 'dion_parameter_version{')"
echo "shard: dion_parameter_version max = $version"
[ "$version" != none ] && [ "${version%.*}" -gt 0 ] || fail "the shard's versions did not advance"
end

# ---- 6. SIGTERM -----------------------------------------------------------------------------
begin "podman stop (SIGTERM) -> checkpoint, exit 0"
"${podman[@]}" stop --time 60 dion-smoke-server > /dev/null
code="$("${podman[@]}" inspect --format '{{.State.ExitCode}}' dion-smoke-server)"
"${podman[@]}" logs dion-smoke-server 2>&1 | tail -4
[ "$code" = 0 ] || fail "dion-server exited $code after SIGTERM, expected 0"
ls -d "$volume"/checkpoints/ckpt-* > /dev/null 2>&1 || fail "no checkpoint in the volume"
echo "exit code $code; checkpoints: $(cd "$volume/checkpoints" && echo ckpt-*)"
end

summary
echo "build_and_smoke: all checks passed"
