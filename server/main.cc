// dion-server: one shard of the dion-ps parameter server (docs/server.md).
//
//   dion-server --listen=127.0.0.1:50051 --metrics_listen=127.0.0.1:9091
//               --checkpoint_dir=/var/lib/dion
//
// starts a single shard that waits for a model to be registered. Flags are read here and only
// here; everything below takes option structs. Exit codes: 0 after a graceful shutdown
// (SIGTERM / SIGINT: stop accepting, finish running steps, checkpoint), 1 when the server
// cannot start or the last checkpoint fails, 2 for bad flags.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/blas.h"
#include "common/cli.h"
#include "common/training_defaults.h"
#include "server/checkpoint/checkpoint_cut.h"
#include "server/dion_server.h"
#include "server/dp_flags.h"
#include "server/peer/peer_channels.h"
#include "server/shard_log.h"
#include "server/memory_budget.h"
#include "server/plaintext_warning.h"
#include "server/staleness.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "host:port of the gRPC service (ParameterServer, grpc.health.v1, reflection); port 0 "
          "picks a free port");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9091",
          "host:port serving Prometheus metrics at /metrics; empty disables them");
ABSL_FLAG(int, shard_index, 0, "this shard's index in [0, num_shards)");
ABSL_FLAG(int, num_shards, 1, "number of shards the model is spread over (same on every shard)");
ABSL_FLAG(int, max_workers, 4096,
          "distinct worker ids this shard tracks (>= 1); registering a new one beyond is "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_state_bytes, 0,
          "bytes of parameter and optimizer state (X, Dion M and Q, AdamW m and v, ...) this "
          "shard may hold; RegisterModel of a table whose parameters on this shard need more is "
          "RESOURCE_EXHAUSTED and allocates nothing. 0: half the memory limit (the cgroup "
          "memory limit when there is one, else physical memory), leaving the rest for batches, "
          "steps, broadcasts, Pull and gRPC");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "directory of checkpoints (one ckpt-* directory each); the newest valid one is "
          "restored at start; empty disables checkpoints");
ABSL_FLAG(absl::Duration, checkpoint_interval, absl::Minutes(10),
          "time between background checkpoints (e.g. 30s, 10m); 0 checkpoints only on shutdown");
ABSL_FLAG(bool, wal, true,
          "keep a write-ahead log (needs --checkpoint_dir): a registration, a new worker and an "
          "accepted contribution are on disk before they are acknowledged, and a restart "
          "replays them on top of the newest checkpoint; --nowal: a crash loses everything "
          "since the last checkpoint");
ABSL_FLAG(std::string, wal_dir, "",
          "directory of the write-ahead log (wal-<checkpoint>.log files); empty: "
          "<checkpoint_dir>/wal. Put it on the same durable volume as the checkpoints");
ABSL_FLAG(std::string, wal_sync, "always",
          "when the log reaches the disk: 'always' (an acknowledged contribution is on disk; "
          "concurrent pushes share one fdatasync), 'interval:<duration>' (e.g. interval:100ms; "
          "a machine crash loses up to that much acknowledged work, a process crash nothing), "
          "'none' (the OS writes back; a machine crash loses what it had not written)");
ABSL_FLAG(std::string, wal_recover, "strict",
          "at start, a corrupt record before the end of the log: 'strict' refuses to start, "
          "naming the file and offset; 'truncate' drops that record and everything after it "
          "(a torn last record is always cut)");
ABSL_FLAG(int, checkpoint_keep, 3,
          "number of complete checkpoints kept; the newest this many coordinated checkpoints "
          "(written by the Checkpoint RPC, e.g. from `dion checkpoint`) are kept besides");
ABSL_FLAG(uint64_t, restore_cut, 0,
          "restore the coordinated checkpoint of this cut instead of the newest checkpoint, so "
          "that every shard restarts from the same cut (docs/deploy.md, \"Restoring all shards "
          "to the same cut\"); the server refuses to start, naming the cuts it has, when the cut "
          "is not in --checkpoint_dir. The restored state is checkpointed at once; remove the "
          "flag after that start, or every restart goes back to this cut. 0: the newest valid "
          "checkpoint");
ABSL_FLAG(std::string, restore_run_id, "",
          "with --restore_cut: the run id of the cut to restore; empty: the only run that has "
          "that cut");
ABSL_FLAG(int, compute_threads, 2,
          "threads applying optimizer steps (different parameters step in parallel)");
ABSL_FLAG(int, blas_threads, 1, "OpenBLAS threads per matrix product");
ABSL_FLAG(int, max_pending_batches, 4,
          "closed batches of one parameter that may wait for a step before pushes to it wait "
          "(backpressure: bounds the shard's memory when workers outpace the steps)");
ABSL_FLAG(int64_t, lr_schedule_samples, 0,
          "samples each parameter sees over the whole run (e.g. epochs x training-set size); "
          "with it the learning rates fall linearly over the run's last --lr_cooldown_fraction "
          "to --lr_final_scale of their value; 0: constant learning rates");
ABSL_FLAG(double, lr_cooldown_fraction, dion::defaults::kLrCooldownFraction,
          "fraction of --lr_schedule_samples at the end of the run over which the learning "
          "rates fall, in [0, 1]");
ABSL_FLAG(double, lr_final_scale, dion::defaults::kLrFinalScale,
          "learning-rate multiplier at the end of the cooldown and after it, in [0, 1]");
ABSL_FLAG(int64_t, target_samples, dion::defaults::kTargetSamples,
          "close a batch once its contributions hold this many samples; 0: no sample target");
ABSL_FLAG(int, target_workers, dion::defaults::kTargetWorkers,
          "close a batch once this many distinct workers contributed (K); 0: no worker target");
ABSL_FLAG(absl::Duration, batch_deadline, dion::defaults::kBatchDeadline,
          "close a batch this long after its first contribution; 'inf' disables the deadline");
ABSL_FLAG(int, max_batch_contributions, 1024,
          "close a batch once it holds this many contributions");
ABSL_FLAG(bool, adaptive_batching, dion::defaults::kAdaptiveBatching,
          "adapt the sample target and K to the measured arrival rate and step time");
ABSL_FLAG(std::string, staleness_policy, dion::defaults::kStalenessPolicy,
          "weight of a contribution with staleness tau: none (1), inverse (1 / (1 + tau)) or "
          "exp (exp(-tau / tau0))");
ABSL_FLAG(double, staleness_tau0, 4.0, "decay constant tau0 of the exp staleness policy (> 0)");
ABSL_FLAG(int64_t, max_staleness, dion::defaults::kMaxStaleness,
          "contributions with staleness above this are refused (STALE) and dropped by the worker "
          "(docs/protocol.md)");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20,
          "largest message a client may send; larger ones end the call with RESOURCE_EXHAUSTED");
ABSL_FLAG(int, broadcast_queue, 64,
          "versions buffered per subscriber; a subscriber that falls further behind gets full "
          "values instead");
ABSL_FLAG(bool, allow_optimizer_state_pull, false,
          "let Pull return optimizer state (include_optimizer_state: Dion's momentum, AdamW's "
          "moments, ...); an admin operation, off by default; when off such a Pull is "
          "PERMISSION_DENIED");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain of this shard: serve TLS only (with --tls_key_file); the files "
          "are re-read when they change (--tls_reload_interval), so a rotated Kubernetes "
          "Secret takes effect without a restart");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA certificates: require every client to present a certificate that chains to "
          "one of them (mutual TLS); needs --tls_cert_file");
ABSL_FLAG(absl::Duration, tls_reload_interval, absl::Seconds(10),
          "how often the TLS files are checked for changes (at least 1s)");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "bearer tokens with roles, one '<token> <role> [<name>] [workers=<id>,...] "
          "[expires=<RFC 3339 time>]' a line "
          "(roles: worker, reader, admin, peer; docs/server.md, \"Security\"); with it every "
          "call needs a token (UNAUTHENTICATED without, PERMISSION_DENIED for a role that may not "
          "make it); re-read when it changes. Health checking needs no token");
ABSL_FLAG(std::string, peer_addresses, "",
          "host:port of every shard's gRPC service, comma-separated in shard index order (its "
          "own included; exactly --num_shards of them): how the owners of a row-split "
          "parameter reach each other for the sums of its step (docs/server.md, \"Peers\"). "
          "Empty: no peers, fine while no parameter is split");
ABSL_FLAG(std::string, peer_tls_ca_file, "",
          "PEM CA the peers' certificates must chain to when this shard serves TLS; empty: "
          "--tls_client_ca_file. Peer calls present this shard's --tls_cert_file/--tls_key_file "
          "(for peers with mutual TLS), so that certificate needs client authentication too");
ABSL_FLAG(std::string, peer_tls_server_name, "",
          "name the peers' certificates must carry, instead of the host of each peer address "
          "(e.g. the headless Service name when one certificate serves every shard, as in "
          "deploy/k8s); empty: the host of the address");
ABSL_FLAG(std::string, peer_token_file, "",
          "file whose first line is the bearer token this shard sends to its peers; needed "
          "with --auth_tokens_file, where the peers list it with role peer (needs TLS)");
ABSL_FLAG(absl::Duration, peer_timeout, absl::Seconds(5),
          "deadline of one reduction between the owners of a row-split parameter (> 0); an "
          "owner whose part does not arrive in time fails the step for every owner with "
          "DEADLINE_EXCEEDED naming it");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "on SIGTERM/SIGINT, how long running calls get to finish before they are cancelled; "
          "with the write-ahead log, also the deadline of the last checkpoint, which is left "
          "to the log (replayed at the next start) when it cannot be written by then");

namespace {

absl::Status WalOptionsFromFlags(dion::ShardOptions& shard) {
  if (!absl::GetFlag(FLAGS_wal)) return absl::OkStatus();
  if (shard.checkpoint_dir.empty()) {
    if (!absl::GetFlag(FLAGS_wal_dir).empty()) {
      return absl::InvalidArgumentError(
          "--wal_dir needs --checkpoint_dir: checkpoints are what truncate the log");
    }
    return absl::OkStatus();  // no durability asked for at all
  }
  shard.wal_dir = absl::GetFlag(FLAGS_wal_dir).empty()
                      ? absl::StrCat(shard.checkpoint_dir, "/wal")
                      : absl::GetFlag(FLAGS_wal_dir);
  absl::StatusOr<dion::LogSync> sync = dion::ParseLogSync(absl::GetFlag(FLAGS_wal_sync));
  if (!sync.ok()) return sync.status();
  shard.wal_sync = *sync;
  const std::string recover = absl::GetFlag(FLAGS_wal_recover);
  if (recover != "strict" && recover != "truncate") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--wal_recover must be 'strict' or 'truncate', got '", recover, "'"));
  }
  shard.wal_recover =
      recover == "strict" ? dion::RecoverMode::kStrict : dion::RecoverMode::kTruncate;
  return absl::OkStatus();
}

absl::StatusOr<dion::ServerOptions> OptionsFromFlags() {
  dion::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  options.service.allow_optimizer_state = absl::GetFlag(FLAGS_allow_optimizer_state_pull);
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  options.tls.reload_interval = absl::GetFlag(FLAGS_tls_reload_interval);
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  absl::StatusOr<std::vector<std::string>> peers =
      dion::ParsePeerAddresses(absl::GetFlag(FLAGS_peer_addresses),
                               absl::GetFlag(FLAGS_num_shards));
  if (!peers.ok()) return peers.status();
  options.peer.addresses = *std::move(peers);
  options.peer.tls_ca_file = absl::GetFlag(FLAGS_peer_tls_ca_file);
  options.peer.tls_server_name = absl::GetFlag(FLAGS_peer_tls_server_name);
  options.peer.token_file = absl::GetFlag(FLAGS_peer_token_file);
  options.peer.timeout = absl::GetFlag(FLAGS_peer_timeout);

  dion::ShardOptions& shard = options.shard;
  shard.store.shard_index = absl::GetFlag(FLAGS_shard_index);
  shard.store.num_shards = absl::GetFlag(FLAGS_num_shards);
  shard.store.max_workers = absl::GetFlag(FLAGS_max_workers);
  shard.batcher.dp = dion::DpOptionsFromFlags();
  const dion::StateBudget budget = dion::ResolveStateBudget(
      absl::GetFlag(FLAGS_max_state_bytes), {.physical_bytes = dion::PhysicalMemoryBytes()});
  shard.store.max_state_bytes = budget.bytes;
  std::fprintf(stderr, "dion-server: %s\n", budget.description.c_str());
  if (std::optional<std::string> warning =
          dion::PlaintextWarning(options.listen, !options.tls.cert_file.empty())) {
    std::fprintf(stderr, "dion-server: %s\n", warning->c_str());
  }
  shard.compute_threads = absl::GetFlag(FLAGS_compute_threads);
  shard.max_pending_batches = absl::GetFlag(FLAGS_max_pending_batches);
  shard.store.lr_schedule.total_samples = absl::GetFlag(FLAGS_lr_schedule_samples);
  shard.store.lr_schedule.cooldown_fraction = absl::GetFlag(FLAGS_lr_cooldown_fraction);
  shard.store.lr_schedule.final_scale = absl::GetFlag(FLAGS_lr_final_scale);
  shard.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  shard.checkpoint_interval = absl::GetFlag(FLAGS_checkpoint_interval);
  shard.checkpoint_keep_last = absl::GetFlag(FLAGS_checkpoint_keep);
  if (absl::Status s = WalOptionsFromFlags(shard); !s.ok()) return s;
  shard.restore_cut = absl::GetFlag(FLAGS_restore_cut);
  shard.restore_run_id = absl::GetFlag(FLAGS_restore_run_id);
  if (!shard.restore_run_id.empty()) {
    if (shard.restore_cut == 0) {
      return absl::InvalidArgumentError("--restore_run_id needs --restore_cut");
    }
    if (absl::Status s = dion::ValidateRunId(shard.restore_run_id); !s.ok()) return s;
  }
  shard.broadcaster.queue_capacity = absl::GetFlag(FLAGS_broadcast_queue);

  dion::BatcherOptions& batcher = shard.batcher;
  batcher.target_samples = absl::GetFlag(FLAGS_target_samples);
  batcher.target_workers = absl::GetFlag(FLAGS_target_workers);
  batcher.deadline = absl::GetFlag(FLAGS_batch_deadline);
  batcher.max_contributions = absl::GetFlag(FLAGS_max_batch_contributions);
  batcher.adaptive = absl::GetFlag(FLAGS_adaptive_batching);
  absl::StatusOr<dion::StalenessKind> kind =
      dion::ParseStalenessKind(absl::GetFlag(FLAGS_staleness_policy));
  if (!kind.ok()) return kind.status();
  batcher.staleness.kind = *kind;
  batcher.staleness.tau0 = absl::GetFlag(FLAGS_staleness_tau0);
  batcher.staleness.max_staleness = absl::GetFlag(FLAGS_max_staleness);

  if (absl::GetFlag(FLAGS_blas_threads) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("blas_threads must be >= 1, got ", absl::GetFlag(FLAGS_blas_threads)));
  }
  if (absl::Status s = dion::ValidateServerOptions(options); !s.ok()) return s;
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  dion::ParseCommandLineOrExit(
      argc, argv,
      {"dion-server", "server/main.cc",
       "One shard of the dion-ps parameter server.\n"
       "  dion-server --listen=127.0.0.1:50051 --metrics_listen=127.0.0.1:9091 "
       "--checkpoint_dir=DIR\nstarts a single shard that waits for a model to be registered."});
  absl::StatusOr<dion::ServerOptions> options = OptionsFromFlags();
  if (!options.ok()) return dion::BadFlags("dion-server", options.status().message());
  if (absl::Status s = dion::SetBlasThreads(absl::GetFlag(FLAGS_blas_threads)); !s.ok()) {
    std::fprintf(stderr, "dion-server: note: --blas_threads=%d: %s\n",
                 absl::GetFlag(FLAGS_blas_threads), std::string(s.message()).c_str());
  }

  // Block the termination signals in every thread (gRPC's included, created below) and wait
  // for them on this one, so shutdown runs as ordinary code rather than in a signal handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<dion::DionServer>> server = dion::DionServer::Start(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "dion-server: cannot start: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr,
               "dion-server: shard %d of %d serving gRPC on %s, %s%s, metrics on %s, "
               "checkpoints %s, write-ahead log %s\n",
               options->shard.store.shard_index, options->shard.store.num_shards,
               (*server)->address().c_str(),
               options->tls.cert_file.empty()        ? "plaintext"
               : options->tls.client_ca_file.empty() ? "TLS"
                                                     : "mutual TLS",
               options->auth_tokens_file.empty() ? "" : " with tokens",
               options->metrics_listen.empty()
                   ? "disabled"
                   : absl::StrCat(options->metrics_listen.substr(
                                      0, options->metrics_listen.rfind(':')),
                                  ":", (*server)->metrics_port())
                         .c_str(),
               options->shard.checkpoint_dir.empty() ? "disabled"
                                                     : options->shard.checkpoint_dir.c_str(),
               options->shard.wal_dir.empty() ? "disabled" : options->shard.wal_dir.c_str());

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::fprintf(stderr, "dion-server: %s received, shutting down\n",
               signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  absl::Status status = (*server)->Shutdown();
  if (!status.ok()) {
    std::fprintf(stderr, "dion-server: last checkpoint failed: %s\n", status.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "dion-server: stopped\n");
  return 0;
}
