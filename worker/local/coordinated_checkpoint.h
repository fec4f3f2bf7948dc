// `dion checkpoint`: one coordinated checkpoint of every shard (docs/deploy.md, "Restoring all
// shards to the same cut"). Reads each shard's newest cut with Status, picks cut = the maximum
// plus one, and asks every shard at once for a checkpoint of that cut with the same run id
// (the Checkpoint RPC, proto/dion/v1/dion.proto). No gRPC type appears here.
//
// Thread-safety: TakeCoordinatedCheckpoint keeps no state and is safe to call concurrently.
#ifndef DION_WORKER_LOCAL_COORDINATED_CHECKPOINT_H_
#define DION_WORKER_LOCAL_COORDINATED_CHECKPOINT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls_config.h"

namespace dion {

struct CoordinatedCheckpointOptions {
  std::vector<std::string> shards;  // host:port of every shard
  // The run id; empty: the one the shards report (they must agree), or a new one
  // ("run-<UTC date>-<time>") when none reports one.
  std::string run_id;
  absl::Duration deadline = absl::Seconds(60);  // per call
  TlsClientConfig tls;  // TLS and the (admin) token; plaintext by default
};

// A shard's differential privacy (StatusResponse.privacy, docs/privacy.md).
struct ShardPrivacy {
  double noise_multiplier = 0;
  double clip = 0;
  double sampling_rate = 0;
  double delta = 0;
  int64_t steps = 0;
  double epsilon = 0;
};

// What one shard answered.
struct ShardCut {
  std::string address;
  int shard_index = -1;  // from its Status; -1 when Status failed
  absl::Status status;   // of the Status call, then of the Checkpoint call
  std::string directory;
  bool already_written = false;
  std::vector<std::pair<std::string, int64_t>> versions;
  std::optional<ShardPrivacy> privacy;  // from its Status; none when it adds no noise
};

// A parameter split by rows over several shards (docs/protocol.md, "Layout"): its owners'
// rows [row_begin, row_end) of the tall side, in row order.
struct SplitRows {
  struct Owner {
    int shard = 0;
    int64_t row_begin = 0;
    int64_t row_end = 0;
  };
  std::string parameter;
  std::vector<Owner> owners;
};

struct CoordinatedCheckpoint {
  std::string run_id;
  uint64_t cut = 0;  // 0: not asked (a Status call failed, or the run ids disagree)
  std::vector<ShardCut> shards;  // in the order of the options' shards
  absl::Status status;           // OK when every shard wrote (or had) the cut
  // The split parameters of the layout (GetLayout of the first shard, when every shard
  // answered Status), in table order; empty when none is split or GetLayout failed.
  std::vector<SplitRows> split;

  // One line per shard, then a summary line.
  std::vector<std::string> Lines() const;
};

// Takes the checkpoint. InvalidArgument (and nothing is called) for no shards, an empty or
// duplicate address or a deadline <= 0; every other failure is in the result (a malformed
// run id is the shards' INVALID_ARGUMENT).
absl::StatusOr<CoordinatedCheckpoint> TakeCoordinatedCheckpoint(
    const CoordinatedCheckpointOptions& options);

// `dion checkpoint [--shards=host:port,...] [--run_id=ID] [--deadline=60s] [--tls_ca_file=F]
// [--tls_cert_file=F --tls_key_file=F] [--tls_server_name=N] [--token_file=F]` with `args` the
// arguments after the subcommand: prints CoordinatedCheckpoint::Lines() on stdout and returns
// the exit code, 0 only when every shard wrote (or had) the cut; 1 when one did not; 2 for bad
// arguments. (Parsed here, not by Abseil flags: `dion local` owns --shards as a count.)
int CheckpointCommand(const std::vector<std::string>& args);

}  // namespace dion

#endif  // DION_WORKER_LOCAL_COORDINATED_CHECKPOINT_H_
