#!/usr/bin/env bash
# Sets up, builds and runs every test of dion-ps: the Release build, the Python client's pytest
# suite, then the same C++ suite under AddressSanitizer + UndefinedBehaviorSanitizer. This is
# README's test command and exactly what CI runs (.ci/run).
#
# Usage: scripts/test.sh [--no-setup] [--no-asan] [--no-tsan]
#   Build trees: build/ (Release), build-asan/ (ASan+UBSan: every test but the few labelled
#   release_only, tests/ctest_schedule.cmake) and build-tsan/ (ThreadSanitizer: the
#   concurrency-relevant tests only). JOBS=N sets parallelism.
#   The `fault` test (SIGKILLs a shard 10 times under load, tests/wal_fault_test.cc, ~10 s)
#   runs in the Release and ASan trees, capped by its own ctest TIMEOUT (150 s).
set -euo pipefail
cd "$(dirname "$0")/.."

setup=1; asan=1; tsan=1
for arg in "$@"; do
  case "$arg" in
    --no-setup) setup=0 ;;
    --no-asan) asan=0 ;;
    --no-tsan) tsan=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument '$arg' (expected --no-setup, --no-asan, --no-tsan)" >&2
       exit 2 ;;
  esac
done
jobs="${JOBS:-$(nproc)}"
[ "$setup" = 1 ] && bash scripts/setup.sh

stage() { printf '\n=== %s ===\n' "$*"; }

stage "Release build"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
stage "Release tests"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 300

# ---- The Python client dion_ps (worker/python, docs/python.md): pytest against dion-server
# shards spawned from build/, with the interpreter the extension was built for.
stage "Python client tests (tests/python)"
if [ ! -d build/python/dion_ps ] || [ ! -s build/python/interpreter ]; then
  echo "test.sh: build/python/dion_ps was not built (pybind11-dev and python3-dev missing?" \
       "scripts/setup.sh installs them)" >&2
  exit 1
fi
python="$(cat build/python/interpreter)"
DION_BUILD_DIR="$PWD/build" timeout 300 "$python" -m pytest tests/python -q \
  -p no:cacheprovider -p no:hypothesispytest
# ---- end of the Python client tests

if [ "$asan" = 1 ]; then
  stage "AddressSanitizer + UBSan build"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS=-O1 \
    -DDION_SANITIZE=address -DDION_BUILD_BENCH=OFF >/dev/null
  cmake --build build-asan -j "$jobs"
  stage "AddressSanitizer + UBSan tests"
  # Label release_only: slow under ASan and reaching no code the other ASan tests do not
  # (tests/ctest_schedule.cmake says why each one); they ran in the Release stage above.
  echo "Left to the Release stage (label release_only):"
  ctest --test-dir build-asan -N -L release_only | sed -n 's/^ *Test *#[0-9]*: /  /p'
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 600 -LE release_only
fi
if [ "$tsan" = 1 ]; then
  # The batcher and the store are where the shard's locks live; the integration tests drive
  # the whole server (gRPC handlers, compute pool, broadcaster) from concurrent clients; the
  # worker client tests drive the client's link threads (acks, subscription, reconnects).
  # worker_training_test trains through two shards and two clients: every thread of the
  # system at once. wal_log_file_test: the log's group commit (8 appending threads);
  # shard_wal_test: the shard writing its log from pushes, deadlines and compute threads;
  # shard_checkpoint_test: checkpoints cut and written while pushes and steps go on;
  # server_security_test: token checks and tokens-file reloads from gRPC's handler threads;
  # dion_rows_test: the owners of a split matrix stepping on their own threads, summing
  # through one in-process reduction group.
  tsan_targets=(batcher_test parameter_store_test server_shard_test server_service_test
                server_bad_input_test server_concurrency_test server_protocol_test
                server_metrics_endpoint_test server_slow_subscriber_test server_binary_test
                step_queue_test push_accounting_test
                backoff_test gradient_accumulator_test replica_test worker_client_test
                worker_training_test wal_log_file_test shard_wal_test shard_checkpoint_test
                server_security_test dion_rows_test)
  # --- peer reductions (server/peer/): owners' threads, gRPC handlers waiting in the hub.
  tsan_targets+=(peer_reduce_test)
  # --- the low-rank update kernel's threads sharing one strip counter (common/lowrank_update.cc).
  tsan_targets+=(lowrank_update_test)
  # --- split parameters served by 2-3 shards: leader compute threads, followers' StepRows
  # handlers and staging, all meeting in the reductions.
  tsan_targets+=(split_serving_test)
  # ---
  stage "ThreadSanitizer build (${tsan_targets[*]})"
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDION_SANITIZE=thread -DDION_BUILD_BENCH=OFF >/dev/null
  cmake --build build-tsan -j "$jobs" --target "${tsan_targets[@]}"
  stage "ThreadSanitizer tests"
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp"
  # OpenBLAS on one thread: its pool hands results back through spin flags TSan cannot see, so
  # its threads' memsets of C "race" with the caller reading C after the GEMM returned (20 of 20
  # runs of WorkerClient.NeverSendsASequenceTwiceOnOnePushStream on a quiet machine). On the
  # caller's thread the same memsets stay visible and ordered. tests/tsan.supp says more.
  export OPENBLAS_NUM_THREADS=1
  tsan_tests='^(Batcher|ParameterStore|Shard|Server|StepQueue|PushAccounting|Backoff'
  tsan_tests+='|GradientAccumulator|Replica'
  tsan_tests+='|WorkerClient|WorkerTraining|WalLogFile|ShardWal|SecurityTest'
  tsan_tests+='|Split|OrthonormalizeRows|OrthogonalityErrorRows)'
  # --- peer reductions (server/peer/).
  tsan_tests+='|^Peer(Reduce|Security)Test|^ReduceHubReplay'
  # --- the low-rank update kernel on 1, 2, 3 and 8 threads.
  tsan_tests+='|^LowRankUpdate\.ThreadCountChangesNoBit$'
  # ---
  ctest --test-dir build-tsan --output-on-failure -j "$jobs" --timeout 600 -R "$tsan_tests" \
    -L 'unit|integration'
fi
stage "all tests passed"
