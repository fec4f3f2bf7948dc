#include "worker/local/local_security.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace dion {
namespace {

namespace fs = std::filesystem;

// Runs `openssl args...` (found in PATH) with its output appended to `log`; FailedPrecondition
// with the command and the log's tail when it cannot run or fails.
absl::Status RunOpenssl(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv_strings = {"openssl"};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, "openssl", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  const std::string command = absl::StrJoin(argv_strings, " ");
  const std::string hint =
      "dion local creates a throwaway CA with the openssl command: install the Debian package "
      "'openssl' (scripts/setup.sh does), or run with --insecure";
  if (spawned != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot run '", command, "': ", strerror(spawned), "; ", hint));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  std::string output = text.str();
  if (output.size() > 2000) output = output.substr(output.size() - 2000);
  return absl::FailedPreconditionError(absl::StrCat(
      "'", command, "' failed", WIFEXITED(status) && WEXITSTATUS(status) == 127 ? " (not found)" : "",
      ": ", output, "; ", hint));
}

absl::StatusOr<std::string> RandomToken() {
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  char bytes[32];
  if (!urandom.read(bytes, sizeof(bytes))) {
    return absl::UnavailableError("cannot read 32 bytes from /dev/urandom for a token");
  }
  return absl::BytesToHexString(absl::string_view(bytes, sizeof(bytes)));
}

// Writes `text` to `path`, readable by the owner only.
absl::Status WritePrivate(const std::string& path, const std::string& text) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot create ", path));
  const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  if (!ok) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// The CA and the shards' certificate (ECDSA P-256, valid 30 days).
absl::Status CreateCertificates(const LocalSecurity& s) {
  const std::string log = s.dir + "/openssl.log";
  const std::string ca_key = s.dir + "/ca.key";
  const std::string csr = s.dir + "/server.csr";
  const std::string ext = s.dir + "/server.ext";
  const std::vector<std::string> ec = {"-newkey", "ec", "-pkeyopt",
                                       "ec_paramgen_curve:prime256v1", "-nodes"};
  std::vector<std::string> ca = {"req", "-x509"};
  ca.insert(ca.end(), ec.begin(), ec.end());
  ca.insert(ca.end(), {"-keyout", ca_key, "-out", s.ca_file, "-days", "30", "-subj",
                       "/CN=dion local throwaway CA", "-addext",
                       "basicConstraints=critical,CA:TRUE", "-addext",
                       "keyUsage=critical,keyCertSign,cRLSign"});
  if (absl::Status st = RunOpenssl(ca, log); !st.ok()) return st;
  std::vector<std::string> request = {"req"};
  request.insert(request.end(), ec.begin(), ec.end());
  request.insert(request.end(),
                 {"-keyout", s.server_key_file, "-out", csr, "-subj", "/CN=localhost"});
  if (absl::Status st = RunOpenssl(request, log); !st.ok()) return st;
  if (absl::Status st = WritePrivate(ext,
                                     "basicConstraints=CA:FALSE\n"
                                     "keyUsage=critical,digitalSignature\n"
                                     "extendedKeyUsage=serverAuth\n"
                                     "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
      !st.ok()) {
    return st;
  }
  return RunOpenssl({"x509", "-req", "-in", csr, "-CA", s.ca_file, "-CAkey", ca_key,
                     "-CAcreateserial", "-out", s.server_cert_file, "-days", "30", "-extfile",
                     ext},
                    log);
}

// One token file per holder, and the shards' tokens file naming them all.
absl::Status CreateTokens(LocalSecurity& s, int workers) {
  std::string table =
      "# dion local's throwaway tokens: <token> <role> <name> [workers=<ids>]\n";
  const auto add = [&](const std::string& role, const std::string& name,
                       const std::string& worker_id, std::string* file) -> absl::Status {
    absl::StatusOr<std::string> token = RandomToken();
    if (!token.ok()) return token.status();
    *file = absl::StrCat(s.dir, "/", name, ".token");
    absl::StrAppend(&table, *token, " ", role, " ", name,
                    worker_id.empty() ? "" : absl::StrCat(" workers=", worker_id), "\n");
    return WritePrivate(*file, *token + "\n");
  };
  if (absl::Status st = add("admin", "checkpoint", "", &s.admin_token_file); !st.ok()) return st;
  s.worker_token_files.resize(workers);
  for (int j = 0; j < workers; ++j) {
    const std::string id = absl::StrCat("worker-", j);
    if (absl::Status st = add(j == 0 ? "admin" : "worker", id, id, &s.worker_token_files[j]);
        !st.ok()) {
      return st;
    }
  }
  if (absl::Status st = add("worker", "evaluator", "evaluator-0", &s.evaluator_token_file);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = add("peer", "shards", "", &s.peer_token_file); !st.ok()) return st;
  return WritePrivate(s.tokens_file, table);
}

}  // namespace

std::vector<std::string> LocalSecurity::ServerFlags() const {
  return {absl::StrCat("--tls_cert_file=", server_cert_file),
          absl::StrCat("--tls_key_file=", server_key_file),
          absl::StrCat("--auth_tokens_file=", tokens_file)};
}

std::vector<std::string> LocalSecurity::WorkerFlags(int index) const {
  const std::string& token = index < 0 ? evaluator_token_file : worker_token_files.at(index);
  return {absl::StrCat("--tls_ca_file=", ca_file), absl::StrCat("--token_file=", token)};
}

absl::StatusOr<LocalSecurity> CreateLocalSecurity(const std::string& run_dir, int workers) {
  LocalSecurity s;
  s.dir = absl::StrCat(run_dir, "/security");
  std::error_code error;
  fs::remove_all(s.dir, error);  // an earlier run's in the same directory
  fs::create_directories(s.dir, error);
  if (error || chmod(s.dir.c_str(), 0700) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot create ", s.dir, ": ", error.message()));
  }
  s.ca_file = s.dir + "/ca.crt";
  s.server_cert_file = s.dir + "/server.crt";
  s.server_key_file = s.dir + "/server.key";
  s.tokens_file = s.dir + "/tokens.txt";
  if (absl::Status st = CreateCertificates(s); !st.ok()) return st;
  if (absl::Status st = CreateTokens(s, workers); !st.ok()) return st;
  return s;
}

}  // namespace dion
