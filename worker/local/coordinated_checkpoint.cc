#include "worker/local/coordinated_checkpoint.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/tls.h"
#include "dion/v1/dion.grpc.pb.h"

namespace dion {
namespace {

absl::Status FromGrpc(const grpc::Status& status, absl::string_view call) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  return absl::Status(static_cast<absl::StatusCode>(code >= 1 && code <= 16 ? code : 2),
                      absl::StrCat(call, ": ", status.error_message()));
}

void SetDeadline(grpc::ClientContext& context, absl::Duration deadline) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
}

// Runs `call(i)` for every shard at once and waits for all.
template <typename Call>
void ForEachShard(size_t shards, Call call) {
  std::vector<std::thread> threads;
  for (size_t i = 0; i < shards; ++i) threads.emplace_back([&call, i] { call(i); });
  for (std::thread& t : threads) t.join();
}

// The run id of the checkpoint: the given one, the one every shard that has one reports, or
// a new one. FailedPrecondition when the shards report different ones.
absl::StatusOr<std::string> ChooseRunId(const std::string& given,
                                        const std::vector<ShardCut>& shards,
                                        const std::vector<std::string>& reported) {
  if (!given.empty()) return given;
  std::map<std::string, std::vector<std::string>> by_run;
  for (size_t i = 0; i < shards.size(); ++i) {
    if (!reported[i].empty()) by_run[reported[i]].push_back(shards[i].address);
  }
  if (by_run.empty()) {
    return absl::StrCat("run-",
                        absl::FormatTime("%Y%m%d-%H%M%S", absl::Now(), absl::UTCTimeZone()));
  }
  if (by_run.size() == 1) return by_run.begin()->first;
  std::vector<std::string> runs;
  for (const auto& [run_id, addresses] : by_run) {
    runs.push_back(absl::StrCat(run_id, " (", absl::StrJoin(addresses, ", "), ")"));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "the shards report different run ids: ", absl::StrJoin(runs, "; "), "; pass --run_id"));
}

absl::Status Validate(const CoordinatedCheckpointOptions& options) {
  if (options.shards.empty()) return absl::InvalidArgumentError("no shard address given");
  std::set<std::string> seen;
  for (const std::string& address : options.shards) {
    if (address.empty()) return absl::InvalidArgumentError("an empty shard address");
    if (!seen.insert(address).second) {
      return absl::InvalidArgumentError(absl::StrCat("shard address ", address, " given twice"));
    }
  }
  if (options.deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the per-call deadline must be > 0");
  }
  return absl::OkStatus();
}

void Ask(v1::ParameterServer::Stub& stub, const CoordinatedCheckpoint& plan,
         absl::Duration deadline, ShardCut& shard) {
  grpc::ClientContext context;
  SetDeadline(context, deadline);
  v1::CheckpointRequest request;
  request.set_run_id(plan.run_id);
  request.set_cut(plan.cut);
  v1::CheckpointResponse response;
  shard.status = FromGrpc(stub.Checkpoint(&context, request, &response), "Checkpoint");
  if (!shard.status.ok()) return;
  shard.directory = response.directory();
  shard.already_written = response.already_written();
  for (const v1::ParameterVersion& v : response.versions()) {
    shard.versions.emplace_back(v.parameter(), v.version());
  }
}

// The split parameters of the layout `stub`'s shard serves; none when GetLayout fails (the
// checkpoint does not need them).
std::vector<SplitRows> SplitParameters(v1::ParameterServer::Stub& stub, absl::Duration deadline) {
  grpc::ClientContext context;
  SetDeadline(context, deadline);
  v1::GetLayoutResponse response;
  std::vector<SplitRows> split;
  if (!stub.GetLayout(&context, v1::GetLayoutRequest(), &response).ok()) return split;
  for (const v1::Layout::Placement& placement : response.layout().placements()) {
    if (placement.row_owners_size() == 0) continue;
    SplitRows rows{placement.parameter(), {}};
    for (const v1::Layout::RowOwner& o : placement.row_owners()) {
      rows.owners.push_back({static_cast<int>(o.shard()), o.row_begin(), o.row_end()});
    }
    split.push_back(std::move(rows));
  }
  return split;
}

}  // namespace

absl::StatusOr<CoordinatedCheckpoint> TakeCoordinatedCheckpoint(
    const CoordinatedCheckpointOptions& options) {
  if (absl::Status s = Validate(options); !s.ok()) return s;
  const size_t n = options.shards.size();
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  grpc::ChannelArguments args;
  AddTlsChannelArguments(options.tls, &args);
  std::vector<std::unique_ptr<v1::ParameterServer::Stub>> stubs;
  for (const std::string& address : options.shards) {
    stubs.push_back(
        v1::ParameterServer::NewStub(grpc::CreateCustomChannel(address, *credentials, args)));
  }
  CoordinatedCheckpoint result;
  result.shards.resize(n);
  std::vector<std::string> run_ids(n);
  std::vector<uint64_t> cuts(n, 0);
  ForEachShard(n, [&](size_t i) {
    ShardCut& shard = result.shards[i];
    shard.address = options.shards[i];
    grpc::ClientContext context;
    SetDeadline(context, options.deadline);
    v1::StatusResponse status;
    shard.status = FromGrpc(stubs[i]->Status(&context, v1::StatusRequest(), &status), "Status");
    if (!shard.status.ok()) return;
    shard.shard_index = static_cast<int>(status.shard_index());
    run_ids[i] = status.checkpoint_run_id();
    cuts[i] = status.checkpoint_cut();
    if (status.has_privacy()) {
      const v1::PrivacyStatus& p = status.privacy();
      shard.privacy = ShardPrivacy{p.noise_multiplier(), p.clip(), p.sampling_rate(),
                                   p.delta(), p.steps(), p.epsilon()};
    }
  });
  const size_t unreachable = std::count_if(result.shards.begin(), result.shards.end(),
                                           [](const ShardCut& s) { return !s.status.ok(); });
  if (unreachable > 0) {
    result.status = absl::UnavailableError(absl::StrCat(
        unreachable, " of ", n, " shards did not answer Status; no checkpoint was asked for"));
    return result;
  }
  result.split = SplitParameters(*stubs.front(), options.deadline);
  absl::StatusOr<std::string> run_id = ChooseRunId(options.run_id, result.shards, run_ids);
  if (!run_id.ok()) {
    result.status = run_id.status();
    return result;
  }
  result.run_id = *run_id;
  result.cut = *std::max_element(cuts.begin(), cuts.end()) + 1;
  ForEachShard(n, [&](size_t i) { Ask(*stubs[i], result, options.deadline, result.shards[i]); });
  const size_t failed = std::count_if(result.shards.begin(), result.shards.end(),
                                      [](const ShardCut& s) { return !s.status.ok(); });
  if (failed > 0) {
    result.status = absl::AbortedError(absl::StrCat("cut ", result.cut, " of run ", result.run_id,
                                                    " failed on ", failed, " of ", n, " shards"));
  }
  return result;
}

std::vector<std::string> CoordinatedCheckpoint::Lines() const {
  std::vector<std::string> lines;
  for (const ShardCut& s : shards) {
    const std::string who =
        s.shard_index < 0 ? s.address : absl::StrCat("shard ", s.shard_index, " ", s.address);
    if (!s.status.ok()) {
      lines.push_back(absl::StrCat(who, ": FAILED: ", s.status.ToString()));
    } else if (cut == 0) {
      lines.push_back(absl::StrCat(who, ": reachable, not asked"));
    } else {
      std::vector<int64_t> versions;
      for (const auto& [parameter, version] : s.versions) versions.push_back(version);
      std::sort(versions.begin(), versions.end());
      lines.push_back(absl::StrCat(
          who, ": cut ", cut, " of run ", run_id,
          s.already_written ? " already written in " : " written to ", s.directory, " (",
          versions.size(), versions.size() == 1 ? " parameter" : " parameters",
          versions.empty() ? "" : absl::StrCat(", versions ", versions.front(), "..",
                                               versions.back()),
          ")"));
    }
  }
  lines.push_back(status.ok() ? absl::StrCat("cut ", cut, " of run ", run_id, " on all ",
                                             shards.size(), " shards")
                              : absl::StrCat("FAILED: ", status.message()));
  return lines;
}

namespace {

constexpr char kCheckpointUsage[] =
    "dion checkpoint: a coordinated checkpoint of every shard (docs/deploy.md, \"Restoring all "
    "shards to the same cut\").\n"
    "  dion checkpoint --shards=host:port,host:port,... [--run_id=ID] [--deadline=60s]\n"
    "Reads every shard's newest cut (Status), picks the maximum plus one and asks every shard "
    "for a checkpoint of that cut with the same run id (Checkpoint RPC). One line per shard.\n"
    "  --shards    the shards' gRPC addresses, comma-separated (as dion-worker --shards)\n"
    "  --run_id    1-128 bytes of [A-Za-z0-9._-]; default: the run id the shards report, or a\n"
    "              new run-<UTC date>-<time> when none has one\n"
    "  --deadline  per call (Status, Checkpoint); a checkpoint of a large shard takes seconds\n"
    "  --tls_ca_file, --tls_cert_file, --tls_key_file, --tls_server_name, --token_file\n"
    "              as dion-worker's: TLS to the shards and the bearer token (Checkpoint needs\n"
    "              an admin token on shards started with --auth_tokens_file)\n"
    "Exit codes: 0 when every shard wrote (or already had) the cut; 1 otherwise; 2 for bad "
    "arguments.";

}  // namespace

int CheckpointCommand(const std::vector<std::string>& args) {
  CoordinatedCheckpointOptions options;
  const auto bad = [](const std::string& message) {
    std::fprintf(stderr, "dion checkpoint: bad flags: %s (see dion checkpoint --help)\n",
                 message.c_str());
    return 2;
  };
  for (const std::string& arg : args) {
    const std::pair<std::string, std::string> flag =
        absl::StrSplit(absl::StripPrefix(absl::StripPrefix(arg, "-"), "-"),
                       absl::MaxSplits('=', 1));
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") {
      std::printf("%s\n", kCheckpointUsage);
      return 0;
    } else if (!absl::StartsWith(arg, "-") || !absl::StrContains(arg, '=')) {
      return bad(absl::StrCat("expected --name=value, got '", arg, "'"));
    } else if (flag.first == "shards") {
      options.shards = absl::StrSplit(flag.second, ',', absl::SkipWhitespace());
    } else if (flag.first == "run_id") {
      options.run_id = flag.second;
    } else if (flag.first == "tls_ca_file") {
      options.tls.ca_file = flag.second;
    } else if (flag.first == "tls_cert_file") {
      options.tls.cert_file = flag.second;
    } else if (flag.first == "tls_key_file") {
      options.tls.key_file = flag.second;
    } else if (flag.first == "tls_server_name") {
      options.tls.server_name = flag.second;
    } else if (flag.first == "token_file") {
      options.tls.token_file = flag.second;
    } else if (flag.first == "deadline") {
      if (!absl::ParseDuration(flag.second, &options.deadline)) {
        return bad(absl::StrCat("--deadline: '", flag.second, "' is not a duration (e.g. 60s)"));
      }
    } else {
      return bad(absl::StrCat("unknown flag --", flag.first));
    }
  }
  absl::StatusOr<CoordinatedCheckpoint> taken = TakeCoordinatedCheckpoint(options);
  if (!taken.ok()) return bad(std::string(taken.status().message()));
  for (const std::string& line : taken->Lines()) std::printf("dion checkpoint: %s\n", line.c_str());
  std::fflush(stdout);
  return taken->status.ok() ? 0 : 1;
}

}  // namespace dion
