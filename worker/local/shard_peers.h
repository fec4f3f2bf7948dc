// Every shard of a `dion local` run knows the others' addresses (dion-server
// --peer_addresses, docs/server.md "Peers"): the owners of a split parameter step together
// and reach each other there. So the shards' ports are fixed before any starts: base_port + i,
// or free loopback ports (ReserveLoopbackPorts, common/loopback_ports.h).
//
// Thread-safety: plain functions.
#ifndef DION_WORKER_LOCAL_SHARD_PEERS_H_
#define DION_WORKER_LOCAL_SHARD_PEERS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/local/local_run.h"
#include "worker/local/local_security.h"

namespace dion {

// "127.0.0.1:<port>" for each of `shards` shards: base_port + i, or free ports when base_port
// is 0. Unavailable naming the error when no port can be reserved.
absl::StatusOr<std::vector<std::string>> PlanShardAddresses(int shards, int base_port);

// The flags that let a shard reach its peers: --peer_addresses, and with `security` (may be
// null: plaintext) the CA to verify them and the peers' token.
std::vector<std::string> PeerFlags(const std::vector<std::string>& addresses,
                                   const LocalSecurity* security);

// Every shard's flags (ShardFlags; with several shards on the planned addresses, with
// PeerFlags), creating each one's checkpoint directory <run_dir>/shard-<i>/checkpoints.
absl::StatusOr<std::vector<std::vector<std::string>>> ShardCommandLines(
    const LocalRunOptions& options, const std::string& run_dir, const LocalSecurity* security);

}  // namespace dion

#endif  // DION_WORKER_LOCAL_SHARD_PEERS_H_
