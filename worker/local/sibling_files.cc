// FindSiblingBinary and FindSiblingFile (worker/local/local_run.h): where `dion` finds its
// children and data files.
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/local/local_run.h"

namespace dion {

namespace fs = std::filesystem;

namespace {

// The first of `candidates` (relative to the directory of self_exe) that is a regular file
// `access` allows `mode` on.
absl::StatusOr<std::string> FindNextTo(const std::string& self_exe,
                                       const std::vector<std::string>& candidates, int mode) {
  const fs::path dir = fs::path(self_exe).parent_path();
  std::vector<std::string> looked;
  for (const std::string& candidate : candidates) {
    const fs::path path = (dir / candidate).lexically_normal();
    if (fs::is_regular_file(path) && access(path.c_str(), mode) == 0) return path.string();
    looked.push_back(path.string());
  }
  return absl::NotFoundError(absl::StrCat("not found in ", absl::StrJoin(looked, ", ")));
}

}  // namespace

absl::StatusOr<std::string> FindSiblingBinary(const std::string& self_exe,
                                              const std::string& override_path,
                                              const std::vector<std::string>& candidates) {
  if (!override_path.empty()) {
    if (access(override_path.c_str(), X_OK) == 0) return override_path;
    return absl::NotFoundError(absl::StrCat(override_path, " is not an executable file"));
  }
  return FindNextTo(self_exe, candidates, X_OK);
}

absl::StatusOr<std::string> FindSiblingFile(const std::string& self_exe,
                                            const std::vector<std::string>& candidates) {
  return FindNextTo(self_exe, candidates, R_OK);
}

}  // namespace dion
