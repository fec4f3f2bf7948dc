#include "server/checkpoint/checkpoint_cut.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/checkpoint/checkpoint_encoding.h"

namespace dion {
namespace {

constexpr size_t kMaxRunIdBytes = 128;

absl::StatusOr<CheckpointManifest> ReadManifestOnly(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/", kManifestFileName);
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return ParseManifest(text.str(), path);
}

// The owned parameters' versions recorded in a shard checkpoint's metadata (empty when the
// keys are missing: such a checkpoint fails ReadShardCheckpoint anyway).
std::vector<std::pair<std::string, int64_t>> ReadVersions(const CheckpointManifest& manifest) {
  std::vector<std::pair<std::string, int64_t>> versions;
  const auto get = [&](const std::string& key) -> const std::string* {
    auto it = manifest.metadata.find(key);
    return it == manifest.metadata.end() ? nullptr : &it->second;
  };
  size_t parameters = 0;
  const std::string* count = get("parameters");
  if (count == nullptr || !absl::SimpleAtoi(*count, &parameters)) return versions;
  for (size_t i = 0; i < parameters; ++i) {
    const std::string* name = get(ParameterKey(i, "name"));
    const std::string* text = get(ParameterKey(i, "version"));
    int64_t version = 0;
    if (name == nullptr || text == nullptr || !absl::SimpleAtoi(*text, &version)) return {};
    versions.emplace_back(*name, version);
  }
  return versions;
}

// Every checkpoint under root whose manifest parses and carries a run id, newest first.
absl::StatusOr<std::vector<CutEntry>> ListTagged(const std::string& root) {
  absl::StatusOr<std::vector<CheckpointInfo>> checkpoints = ListCheckpoints(root);
  if (!checkpoints.ok()) return checkpoints.status();
  std::vector<CutEntry> entries;
  for (const CheckpointInfo& info : *checkpoints) {
    absl::StatusOr<CheckpointManifest> manifest = ReadManifestOnly(info.path);
    if (!manifest.ok()) continue;
    absl::StatusOr<CutTag> tag = ReadCutTag(*manifest);
    if (!tag.ok() || tag->run_id.empty()) continue;
    entries.push_back({info, *std::move(tag), ReadVersions(*manifest)});
  }
  return entries;
}

CutCheckpoint ToCutCheckpoint(const CutEntry& entry) {
  return {entry.info.path, entry.info.version, entry.tag, entry.versions, false};
}

}  // namespace

absl::Status ValidateRunId(absl::string_view run_id) {
  const bool allowed = std::all_of(run_id.begin(), run_id.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
  if (run_id.empty() || run_id.size() > kMaxRunIdBytes || !allowed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "run id '", absl::CHexEscape(run_id.substr(0, kMaxRunIdBytes)), "'",
        run_id.size() > kMaxRunIdBytes ? "... " : " ", "(", run_id.size(),
        " bytes) must be 1 to ", kMaxRunIdBytes, " bytes of [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateCutRequest(const CutTag& tag) {
  if (absl::Status s = ValidateRunId(tag.run_id); !s.ok()) return s;
  if (tag.cut < 1) {
    return absl::InvalidArgumentError(
        "cut must be >= 1 (the global checkpoint sequence; 0 means no cut)");
  }
  return absl::OkStatus();
}

absl::StatusOr<CutTag> ReadCutTag(const CheckpointManifest& manifest) {
  CutTag tag;
  if (auto it = manifest.metadata.find(std::string(kRunIdKey)); it != manifest.metadata.end()) {
    if (absl::Status s = ValidateRunId(it->second); !s.ok()) {
      return absl::DataLossError(absl::StrCat("metadata '", kRunIdKey, "': ", s.message()));
    }
    tag.run_id = it->second;
  }
  if (auto it = manifest.metadata.find(std::string(kCutKey)); it != manifest.metadata.end()) {
    if (!absl::SimpleAtoi(it->second, &tag.cut) || tag.cut == 0 || tag.run_id.empty()) {
      return absl::DataLossError(absl::StrCat("metadata '", kCutKey, "' is '", it->second,
                                              "', expected an integer >= 1 with a run id"));
    }
  }
  return tag;
}

absl::StatusOr<std::vector<CutEntry>> ListCuts(const std::string& root) {
  absl::StatusOr<std::vector<CutEntry>> tagged = ListTagged(root);
  if (!tagged.ok()) return tagged.status();
  std::vector<CutEntry> cuts;
  for (CutEntry& entry : *tagged) {
    if (entry.tag.cut >= 1) cuts.push_back(std::move(entry));
  }
  return cuts;
}

std::string DescribeCuts(const std::vector<CutEntry>& cuts) {
  std::map<std::string, std::vector<uint64_t>> by_run;
  for (const CutEntry& entry : cuts) by_run[entry.tag.run_id].push_back(entry.tag.cut);
  std::vector<std::string> runs;
  for (auto& [run_id, list] : by_run) {
    std::sort(list.begin(), list.end());
    list.erase(std::unique(list.begin(), list.end()), list.end());
    runs.push_back(absl::StrCat("run ", run_id, list.size() == 1 ? ": cut " : ": cuts ",
                                absl::StrJoin(list, ", ")));
  }
  return runs.empty() ? "none" : absl::StrJoin(runs, "; ");
}

void CutIndex::Load(const std::string& root) {
  absl::StatusOr<std::vector<CutEntry>> tagged = ListTagged(root);
  MutexLock lock(&mu_);
  if (!tagged.ok()) return;
  for (auto it = tagged->rbegin(); it != tagged->rend(); ++it) RecordLocked(ToCutCheckpoint(*it));
}

absl::StatusOr<std::optional<CutCheckpoint>> CutIndex::Check(const CutTag& tag) const {
  std::optional<CutCheckpoint> newest = Find(tag.run_id);
  if (!newest.has_value() || tag.cut > newest->tag.cut) return std::nullopt;
  if (tag.cut < newest->tag.cut) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cut ", tag.cut, " of run ", tag.run_id, " is below cut ", newest->tag.cut,
        " already written for that run (", newest->path, "): cuts only grow"));
  }
  newest->already_written = true;
  return newest;
}

std::optional<CutCheckpoint> CutIndex::Find(absl::string_view run_id) const {
  MutexLock lock(&mu_);
  auto it = newest_by_run_.find(std::string(run_id));
  if (it == newest_by_run_.end()) return std::nullopt;
  return it->second;
}

void CutIndex::Record(const CutCheckpoint& written) {
  MutexLock lock(&mu_);
  RecordLocked(written);
}

void CutIndex::RecordLocked(const CutCheckpoint& written) {
  if (written.tag.run_id.empty()) return;
  last_run_id_ = written.tag.run_id;
  if (written.tag.cut == 0) return;
  present_[written.sequence] = written.tag;
  if (written.sequence >= newest_sequence_) {
    newest_sequence_ = written.sequence;
    newest_ = written.tag;
  }
  CutCheckpoint& run = newest_by_run_[written.tag.run_id];
  if (written.tag.cut >= run.tag.cut) {
    run = written;
    run.already_written = false;
  }
}

void CutIndex::KeepOnly(const std::vector<CheckpointInfo>& present) {
  std::map<uint64_t, CutTag> kept;
  MutexLock lock(&mu_);
  for (const CheckpointInfo& info : present) {
    if (auto it = present_.find(info.version); it != present_.end()) kept.insert(*it);
  }
  present_ = std::move(kept);
}

std::string CutIndex::last_run_id() const {
  MutexLock lock(&mu_);
  return last_run_id_;
}

CutTag CutIndex::newest() const {
  MutexLock lock(&mu_);
  return newest_;
}

std::vector<uint64_t> CutIndex::NewestSequences(size_t n) const {
  MutexLock lock(&mu_);
  std::vector<uint64_t> sequences;
  for (auto it = present_.rbegin(); it != present_.rend() && sequences.size() < n; ++it) {
    sequences.push_back(it->first);
  }
  return sequences;
}

}  // namespace dion
