#include "server/checkpoint/checkpoint_encoding.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/checkpoint/checkpoint_manifest.h"

namespace dion {
namespace {

constexpr absl::string_view kDedupHeader =
    "# dion-ps dedup state: <parameter index> <worker id, escaped> <floor>:<forced floor> "
    "<accepted sequences above the floor>...\n";

}  // namespace

std::string TensorFile(absl::string_view stem, absl::string_view suffix) {
  return absl::StrCat(stem, ".", suffix, ".npy");
}

std::string ParameterKey(size_t i, absl::string_view field) {
  return absl::StrCat("parameter.", i, ".", field);
}

std::vector<StateTensor> StateTensors(const ParamSpec& spec, OptimizerState& state,
                                      RowBlock rows) {
  const int64_t m = spec.rows(), n = spec.cols();
  return std::visit(
      [&](auto& s) -> std::vector<StateTensor> {
        using T = std::decay_t<decltype(s)>;
        if constexpr (std::is_same_v<T, DionState>) {
          const int64_t held_m = rows.size() > 0 && m >= n ? rows.size() : m;
          const int64_t held_n = rows.size() > 0 && m < n ? rows.size() : n;
          return {{"M", &s.M, held_m, held_n}, {"Q", &s.Q, std::min(m, n), spec.rank()}};
        } else if constexpr (std::is_same_v<T, AdamWState>) {
          return {{"adam_m", &s.m, m, n}, {"adam_v", &s.v, m, n}};
        } else if constexpr (std::is_same_v<T, LionState>) {
          return {{"lion_m", &s.m, m, n}};
        } else {
          return {{"M", &s.M, m, n}};
        }
      },
      state);
}

OptimizerState EmptyState(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kDion: return DionState{};
    case OptimizerKind::kAdamW: return AdamWState{};
    case OptimizerKind::kLion: return LionState{};
    case OptimizerKind::kMuon: return MuonState{};
  }
  return AdamWState{};
}

int64_t StateStep(const OptimizerState& state) {
  return std::visit([](const auto& s) { return s.step; }, state);
}

std::string Escape(absl::string_view name) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (size_t i = 0; i < name.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    const bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                      (c >= '0' && c <= '9') || c == '_' || c == '-' || (c == '.' && i > 0);
    if (keep) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('+');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

absl::StatusOr<std::string> Unescape(absl::string_view escaped) {
  std::string out;
  for (size_t i = 0; i < escaped.size(); ++i) {
    if (escaped[i] != '+') {
      out.push_back(escaped[i]);
      continue;
    }
    int value = 0;
    if (i + 2 >= escaped.size()) {
      return absl::InvalidArgumentError(absl::StrCat("truncated escape in '", escaped, "'"));
    }
    for (int k = 1; k <= 2; ++k) {
      const char h = escaped[i + k];
      const int digit = h >= '0' && h <= '9' ? h - '0' : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (digit < 0) {
        return absl::InvalidArgumentError(absl::StrCat("bad escape in '", escaped, "'"));
      }
      value = value * 16 + digit;
    }
    out.push_back(static_cast<char>(value));
    i += 2;
  }
  return out;
}

std::string FileStem(absl::string_view name) {
  std::string stem = Escape(name);
  if (stem.size() <= kMaxFileStem) return stem;
  stem.resize(kMaxFileStem - 18);
  return absl::StrCat(stem, "++", Fnv1a64::Hex(Fnv1a64::Of(name)));
}

std::string SerializeDedupState(const std::vector<std::vector<WorkerDedupState>>& dedup) {
  std::string text(kDedupHeader);
  for (size_t i = 0; i < dedup.size(); ++i) {
    for (const WorkerDedupState& worker : dedup[i]) {
      absl::StrAppend(&text, i, " ", Escape(worker.worker_id), " ", worker.floor, ":",
                      worker.forced_floor);
      for (uint64_t sequence : worker.seen) absl::StrAppend(&text, " ", sequence);
      text.push_back('\n');
    }
  }
  return text;
}

absl::StatusOr<std::vector<std::vector<WorkerDedupState>>> ParseDedupState(
    absl::string_view text, size_t parameters) {
  std::vector<std::vector<WorkerDedupState>> dedup(parameters);
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (line.empty() || line[0] == '#') continue;
    const auto error = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": ", what));
    };
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    size_t index = 0;
    if (fields.size() < 3 || !absl::SimpleAtoi(fields[0], &index) || index >= parameters) {
      return error(absl::StrCat("expected '<parameter index below ", parameters,
                                "> <worker> <floor>:<forced floor> <sequences>...'"));
    }
    WorkerDedupState worker;
    absl::StatusOr<std::string> id = Unescape(fields[1]);
    if (!id.ok() || id->empty()) return error("bad worker id");
    worker.worker_id = *std::move(id);
    // "<floor>:<forced floor>", or "<floor>" from before forced floors (forced floor 0).
    const std::vector<absl::string_view> floors = absl::StrSplit(fields[2], ':');
    if (floors.size() > 2 || !absl::SimpleAtoi(floors[0], &worker.floor) ||
        (floors.size() == 2 && !absl::SimpleAtoi(floors[1], &worker.forced_floor)) ||
        worker.forced_floor > worker.floor) {
      return error(absl::StrCat("bad floor '", fields[2],
                                "', expected <floor>:<forced floor <= floor>"));
    }
    for (size_t k = 3; k < fields.size(); ++k) {
      uint64_t sequence = 0;
      if (!absl::SimpleAtoi(fields[k], &sequence) || sequence < worker.floor ||
          (!worker.seen.empty() && sequence <= worker.seen.back())) {
        return error("sequences must be increasing integers at or above the floor");
      }
      worker.seen.push_back(sequence);
    }
    if (!dedup[index].empty() && dedup[index].back().worker_id >= worker.worker_id) {
      return error("workers of a parameter must be listed once, sorted by id");
    }
    dedup[index].push_back(std::move(worker));
  }
  return dedup;
}

}  // namespace dion
