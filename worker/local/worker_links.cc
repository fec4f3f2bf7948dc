#include "worker/local/worker_links.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

extern char** environ;

namespace dion {
namespace {

constexpr int kSlots = 512;  // /24s in 198.18.0.0/15
constexpr char kLockDir[] = "/run/dion-links";
constexpr char kNamespacePrefix[] = "dion-link-";

// Runs argv[0] (an absolute path) with `argv`; its stdout and stderr. Internal naming the
// command and its output when it cannot run or exits with a non-zero status.
absl::StatusOr<std::string> RunTool(const std::vector<std::string>& args) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int error = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fds[1]);
  std::string output;
  char buffer[4096];
  for (ssize_t n; error == 0 && (n = read(pipe_fds[0], buffer, sizeof(buffer))) != 0;) {
    if (n > 0) output.append(buffer, static_cast<size_t>(n));
    if (n < 0 && errno != EINTR) break;
  }
  close(pipe_fds[0]);
  const std::string command = absl::StrJoin(args, " ");
  if (error != 0) {
    return absl::InternalError(absl::StrCat("cannot run '", command, "': ", strerror(error)));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("'", command, "' failed: ",
                                            absl::StripAsciiWhitespace(output)));
  }
  return output;
}

// The first of the usual places of iproute2's `name` that is executable.
absl::StatusOr<std::string> FindTool(const std::string& name) {
  for (const char* dir : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"}) {
    const std::string path = absl::StrCat(dir, name);
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("--link_rate / --link_delay need iproute2's '", name,
                   "' (not found in /usr/sbin, /sbin, /usr/bin, /bin): apt-get install iproute2"));
}

// Whether this process has CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21), from /proc/self/status.
bool HasNetworkCapabilities() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    uint64_t caps = 0;
    if (absl::StartsWith(line, "CapEff:") &&
        absl::SimpleHexAtoi(absl::StripAsciiWhitespace(line.substr(7)), &caps)) {
      return (caps >> 12 & 1) && (caps >> 21 & 1);
    }
  }
  return false;
}

std::string HostVeth(int slot, int worker) { return absl::StrCat("dl", slot, "w", worker, "h"); }
std::string InnerVeth(int slot, int worker) { return absl::StrCat("dl", slot, "w", worker, "n"); }
std::string NamespaceName(int slot, int worker) {
  return absl::StrCat(kNamespacePrefix, slot, "-w", worker);
}

// Takes slot `slot`'s lock without waiting; the open, locked fd or -1 when another run holds it.
int LockSlot(int slot) {
  const std::string path = absl::StrCat(kLockDir, "/slot-", slot, ".lock");
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// The slots named by `ip netns list` and `ip -o link show` (namespaces and root-side veths).
std::set<int> SlotsInUse(const std::string& ip) {
  std::set<int> slots;
  const auto add = [&](absl::string_view name, absl::string_view prefix, char end) {
    if (!absl::ConsumePrefix(&name, prefix)) return;
    const size_t stop = name.find(end);
    int slot = 0;
    if (stop != absl::string_view::npos && absl::SimpleAtoi(name.substr(0, stop), &slot)) {
      slots.insert(slot);
    }
  };
  for (absl::string_view line : absl::StrSplit(RunTool({ip, "netns", "list"}).value_or(""), '\n')) {
    add(line, kNamespacePrefix, '-');
  }
  for (absl::string_view line : absl::StrSplit(RunTool({ip, "-o", "link", "show"}).value_or(""), '\n')) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::ByAnyChar(" :"), absl::SkipEmpty());
    if (fields.size() > 1) add(fields[1], "dl", 'w');
  }
  return slots;
}

// Removes slot `slot`'s veths and namespaces, for workers [0, kMaxWorkers); missing ones are
// no error. The root-side veth goes first: deleting it removes the pair at once, where a
// namespace's interfaces disappear some time after `ip netns del`.
void RemoveSlot(const std::string& ip, int slot, int workers) {
  for (int j = 0; j < workers; ++j) {
    if (access(absl::StrCat("/sys/class/net/", HostVeth(slot, j)).c_str(), F_OK) == 0) {
      (void)RunTool({ip, "link", "del", HostVeth(slot, j)});
    }
    if (access(absl::StrCat("/run/netns/", NamespaceName(slot, j)).c_str(), F_OK) == 0) {
      (void)RunTool({ip, "netns", "del", NamespaceName(slot, j)});
    }
  }
}

}  // namespace

absl::StatusOr<int64_t> ParseLinkRate(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  absl::string_view number = lower;
  double scale = 1;
  for (const auto& [suffix, factor] : {std::pair{"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9},
                                       {"bit", 1.0}}) {
    if (absl::ConsumeSuffix(&number, suffix)) {
      scale = factor;
      break;
    }
  }
  double value = 0;
  if (lower.empty() || lower == "0") return 0;
  if (!absl::SimpleAtod(number, &value) || !(value * scale >= 64e3 && value * scale <= 40e9)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "link rate '", text,
        "': expected a rate per direction between 64kbit and 40gbit such as 20mbit, 100mbit or "
        "1gbit (decimal units, as tc's; kbit, mbit, gbit, bit), or 0 for none"));
  }
  return static_cast<int64_t>(value * scale + 0.5);
}

std::string FormatLinkRate(int64_t rate_bits) {
  if (rate_bits % 1000000000 == 0) return absl::StrCat(rate_bits / 1000000000, "gbit");
  if (rate_bits % 1000000 == 0) return absl::StrCat(rate_bits / 1000000, "mbit");
  if (rate_bits % 1000 == 0) return absl::StrCat(rate_bits / 1000, "kbit");
  return absl::StrCat(rate_bits, "bit");
}

std::string LinkAddress(int slot, int worker, bool root_side) {
  return absl::StrCat("198.", 18 + slot / 256, ".", slot % 256, ".",
                      4 * worker + (root_side ? 1 : 2));
}

WorkerLinks::WorkerLinks(int workers, const LinkSpec& spec, std::string ip, std::string tc,
                         int slot, int lock_fd)
    : workers_(workers), spec_(spec), ip_(std::move(ip)), tc_(std::move(tc)), slot_(slot),
      lock_fd_(lock_fd) {}

absl::Status CheckLinkPrerequisites() {
  if (!HasNetworkCapabilities()) {
    return absl::FailedPreconditionError(
        "--link_rate / --link_delay need root (CAP_NET_ADMIN and CAP_SYS_ADMIN): they put each "
        "worker in a network namespace of its own behind a shaped veth pair; run dion local as "
        "root, or without them");
  }
  for (const char* tool : {"ip", "tc"}) {
    if (absl::StatusOr<std::string> found = FindTool(tool); !found.ok()) return found.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<WorkerLinks>> WorkerLinks::Create(
    int workers, const LinkSpec& spec, const std::vector<std::string>& shard_addresses) {
  if (workers < 1 || workers > kMaxWorkers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--link_rate / --link_delay: ", workers, " workers; expected 1..", kMaxWorkers));
  }
  if (absl::Status s = CheckLinkPrerequisites(); !s.ok()) return s;
  absl::StatusOr<std::string> ip = FindTool("ip");
  if (!ip.ok()) return ip.status();
  absl::StatusOr<std::string> tc = FindTool("tc");
  if (!tc.ok()) return tc.status();
  mkdir(kLockDir, 0700);
  for (int leftover : SlotsInUse(*ip)) {  // of runs that died: nobody holds their lock
    if (const int fd = LockSlot(leftover); fd >= 0) {
      RemoveSlot(*ip, leftover, kMaxWorkers);
      close(fd);
    }
  }
  int slot = 0;
  int fd = -1;
  for (; slot < kSlots && (fd = LockSlot(slot)) < 0; ++slot) {
  }
  if (fd < 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "no free link slot in ", kLockDir, " (", kSlots, " runs with links at once?)"));
  }
  std::unique_ptr<WorkerLinks> links(new WorkerLinks(workers, spec, *ip, *tc, slot, fd));
  for (int j = 0; j < workers; ++j) {
    if (absl::Status s = links->AddLink(j); !s.ok()) return s;  // the destructor cleans up
  }
  if (absl::Status s = links->StartRelay(shard_addresses); !s.ok()) return s;
  return links;
}

absl::Status WorkerLinks::AddLink(int j) {
  const std::string ns = NamespaceName(slot_, j);
  const std::string host = HostVeth(slot_, j);
  const std::string inner = InnerVeth(slot_, j);
  std::vector<std::vector<std::string>> commands = {
      {ip_, "netns", "add", ns},
      {ip_, "link", "add", host, "type", "veth", "peer", "name", inner},
      {ip_, "link", "set", inner, "netns", ns},
      {ip_, "addr", "add", LinkAddress(slot_, j, true) + "/30", "dev", host},
      {ip_, "link", "set", host, "up"},
      {ip_, "-n", ns, "addr", "add", LinkAddress(slot_, j, false) + "/30", "dev", inner},
      {ip_, "-n", ns, "link", "set", inner, "up"},
      {ip_, "-n", ns, "link", "set", "lo", "up"}};
  if (spec_.rate_bits > 0) {
    // The bucket holds 2 ms at the rate, at least 32 KiB (more than a 64 KiB GSO packet needs
    // to pass unsegmented only at rates >= 256 Mbit/s); a packet waits at most 50 ms.
    const int64_t burst = std::max<int64_t>(32 * 1024, spec_.rate_bits / 8 / 500);
    const std::vector<std::string> tbf = {"root",  "tbf", "rate", absl::StrCat(spec_.rate_bits, "bit"),
                                          "burst", absl::StrCat(burst), "latency", "50ms"};
    std::vector<std::string> out = {tc_, "qdisc", "add", "dev", host};
    std::vector<std::string> in = {tc_, "-n", ns, "qdisc", "add", "dev", inner};
    out.insert(out.end(), tbf.begin(), tbf.end());
    in.insert(in.end(), tbf.begin(), tbf.end());
    commands.push_back(out);
    commands.push_back(in);
  }
  for (const std::vector<std::string>& command : commands) {
    if (absl::StatusOr<std::string> ran = RunTool(command); !ran.ok()) {
      return absl::InternalError(absl::StrCat("setting up the link of worker ", j, ": ",
                                              ran.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status WorkerLinks::StartRelay(const std::vector<std::string>& shard_addresses) {
  std::vector<LinkRelay::Route> routes;
  shard_ports_.clear();
  for (const std::string& address : shard_addresses) {
    absl::string_view port = address;
    if (!absl::ConsumePrefix(&port, "127.0.0.1:")) {
      return absl::FailedPreconditionError(
          absl::StrCat("links lead to shards on 127.0.0.1; a shard is at ", address));
    }
    shard_ports_.emplace_back(port);
  }
  for (int j = 0; j < workers_; ++j) {
    for (const std::string& port : shard_ports_) {
      routes.push_back({absl::StrCat(LinkAddress(slot_, j, true), ":", port),
                        absl::StrCat("127.0.0.1:", port), j});
    }
  }
  // Enough queue for the bytes in flight over the delay at the rate (or at 10 Gbit/s), and no
  // more: a link is a wire, not a FIFO, and what waits here is latency the link itself would
  // not add (4 MiB, the earlier floor, held 1.6 s of data at 20 Mbit/s: replicas that stale,
  // and broadcasts the shard could no longer conflate, docs/server.md). The floor of 256 KiB
  // keeps the link busy between the relay's reads (the kernel's socket buffers come on top).
  const double rate = spec_.rate_bits > 0 ? spec_.rate_bits : 1e10;
  const int64_t max_queued = std::max<int64_t>(
      256 << 10, static_cast<int64_t>(2 * rate / 8 * absl::ToDoubleSeconds(spec_.delay)));
  absl::StatusOr<std::unique_ptr<LinkRelay>> relay =
      LinkRelay::Start(routes, workers_, spec_.delay, max_queued);
  if (!relay.ok()) return relay.status();
  relay_ = *std::move(relay);
  return absl::OkStatus();
}

std::vector<std::string> WorkerLinks::ShardAddresses(int worker) const {
  std::vector<std::string> addresses;
  for (const std::string& port : shard_ports_) {
    addresses.push_back(absl::StrCat(LinkAddress(slot_, worker, true), ":", port));
  }
  return addresses;
}

std::vector<std::string> WorkerLinks::ExecPrefix(int worker) const {
  return {ip_, "netns", "exec", Namespace(worker)};
}

std::string WorkerLinks::Namespace(int worker) const { return NamespaceName(slot_, worker); }

void WorkerLinks::PutBehindLink(int worker, ChildSpec* child) const {
  std::vector<std::string> args = ExecPrefix(worker);
  args.erase(args.begin());  // the binary
  args.push_back(child->binary);
  args.insert(args.end(), child->args.begin(), child->args.end());
  args.push_back("--tls_server_name=localhost");  // ignored without --tls_ca_file
  child->binary = ip_;
  child->args = std::move(args);
}

std::string WorkerLinks::Describe() const {
  return absl::StrCat("links: each worker in a network namespace of its own (", Namespace(0),
                      workers_ > 1 ? absl::StrCat(" .. ", Namespace(workers_ - 1)) : "", "), ",
                      spec_.rate_bits > 0 ? FormatLinkRate(spec_.rate_bits) : "unlimited",
                      " each way (tc tbf), ", absl::FormatDuration(spec_.delay),
                      " added one-way delay (relay on ", LinkAddress(slot_, 0, true), ".. )");
}

std::string WorkerLinks::ByteReport(const std::string& prefix) const {
  std::vector<std::string> lines;
  for (int j = 0; j < workers_; ++j) {
    lines.push_back(absl::StrCat(prefix, "link of worker-", j, ": ", bytes_sent(j),
                                 " bytes sent, ", bytes_received(j), " bytes received"));
  }
  if (relay_ != nullptr && !relay_->Resets().empty()) {
    lines.push_back(absl::StrCat(prefix, "link relay reset connections: ", relay_->Resets()));
  }
  return absl::StrJoin(lines, "\n");
}

WorkerLinks::~WorkerLinks() {
  relay_.reset();
  RemoveSlot(ip_, slot_, workers_);
  close(lock_fd_);
}

}  // namespace dion
