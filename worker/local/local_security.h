// The throwaway security of one `dion local` run: a CA, a certificate for the shards
// (127.0.0.1 and localhost) and bearer tokens, created in <run_dir>/security with the `openssl`
// command, so that the main job runs the shards with TLS and tokens like a cluster does.
// `dion local --insecure` skips it.
//
// Tokens (random, 256 bits, in files readable by the owner only):
//   - worker 0 holds an admin token restricted to its worker id: it registers the model table;
//   - the other workers hold worker tokens, each restricted to its own worker id (they wait,
//     retrying, until worker 0 has registered the table);
//   - the evaluator holds a worker token restricted to its id;
//   - the coordinated checkpoint at the end uses an admin token.
//
// Thread-safety: none needed; CreateLocalSecurity is called once by the supervisor.
#ifndef DION_WORKER_LOCAL_LOCAL_SECURITY_H_
#define DION_WORKER_LOCAL_LOCAL_SECURITY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dion {

struct LocalSecurity {
  std::string dir;  // <run_dir>/security
  std::string ca_file;
  std::string server_cert_file;
  std::string server_key_file;
  std::string tokens_file;                     // the shards' --auth_tokens_file
  std::string admin_token_file;                // the coordinated checkpoint's
  std::vector<std::string> worker_token_files;  // by worker index
  std::string evaluator_token_file;
  std::string peer_token_file;  // role peer: what the shards present to each other

  std::vector<std::string> ServerFlags() const;
  // Flags of worker `index`, or of the evaluator when index < 0.
  std::vector<std::string> WorkerFlags(int index) const;
};

// Creates the CA, the shards' certificate and the tokens for `workers` workers in
// <run_dir>/security (mode 0700). FailedPrecondition naming the command and its output when
// `openssl` is missing or fails (the message says to install the Debian package `openssl` or
// to run with --insecure).
absl::StatusOr<LocalSecurity> CreateLocalSecurity(const std::string& run_dir, int workers);

}  // namespace dion

#endif  // DION_WORKER_LOCAL_LOCAL_SECURITY_H_
