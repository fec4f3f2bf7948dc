#include "server/checkpoint/checkpoint_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <random>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/checkpoint/npy.h"

namespace dion {
namespace {

namespace fs = std::filesystem;

constexpr absl::string_view kDirPrefix = "ckpt-";
constexpr absl::string_view kTempMarker = ".tmp-";
constexpr int kVersionDigits = 12;

// ---------------------------------------------------------------- file system helpers

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  return absl::StrCat(dir, "/", name);
}

absl::Status Errno(absl::string_view what, absl::string_view path) {
  return absl::ErrnoToStatus(errno, absl::StrCat(what, " ", path));
}

// fsync of a directory makes the entries created or renamed in it durable.
absl::Status FsyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("open directory", dir);
  absl::Status status;
  if (::fsync(fd) != 0) status = Errno("fsync directory", dir);
  ::close(fd);
  return status;
}

// Creates `path` (which must not exist), writes header then data, fsyncs, closes.
absl::Status WriteFileDurably(const std::string& path, absl::string_view header,
                              absl::string_view data) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("create", path);
  absl::Status status;
  for (absl::string_view chunk : {header, data}) {
    while (status.ok() && !chunk.empty()) {
      const ssize_t n = ::write(fd, chunk.data(), chunk.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = Errno("write", path);
        break;
      }
      chunk.remove_prefix(static_cast<size_t>(n));
    }
  }
  if (status.ok() && ::fsync(fd) != 0) status = Errno("fsync", path);
  if (::close(fd) != 0 && status.ok()) status = Errno("close", path);
  return status;
}

std::string RandomSuffix() {
  std::random_device device;
  const uint64_t bits = (static_cast<uint64_t>(device()) << 32) ^ device();
  return Fnv1a64::Hex(bits).substr(0, 8);
}

// The version of a complete checkpoint directory name ("ckpt-<digits>"), or nothing.
bool ParseDirName(absl::string_view name, uint64_t* version) {
  if (!absl::ConsumePrefix(&name, kDirPrefix) || name.empty()) return false;
  for (char c : name) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return absl::SimpleAtoi(name, version);
}

// Renames `dir` to a temporary name and removes it, so that it stops looking complete first.
absl::Status DeleteCheckpointDir(const std::string& root, const std::string& dir) {
  const std::string doomed = absl::StrCat(dir, kTempMarker, "delete-", RandomSuffix());
  if (::rename(dir.c_str(), doomed.c_str()) != 0) return Errno("rename", dir);
  if (absl::Status synced = FsyncDirectory(root); !synced.ok()) return synced;
  std::error_code error;
  fs::remove_all(doomed, error);
  if (error) return absl::InternalError(absl::StrCat("remove ", doomed, ": ", error.message()));
  return absl::OkStatus();
}

}  // namespace

std::string CheckpointDirName(uint64_t version) {
  std::string digits = absl::StrCat(version);
  if (digits.size() < kVersionDigits) digits.insert(0, kVersionDigits - digits.size(), '0');
  return absl::StrCat(kDirPrefix, digits);
}

// ---------------------------------------------------------------- writer

CheckpointWriter::CheckpointWriter(std::string root, std::string temp_path, uint64_t version)
    : root_(std::move(root)), temp_path_(std::move(temp_path)) {
  manifest_.version = version;
}

CheckpointWriter::~CheckpointWriter() { Abort(); }

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Begin(
    const std::string& root, uint64_t version) {
  std::error_code error;
  const bool root_existed = fs::is_directory(root, error);
  if (!root_existed) {
    fs::create_directories(root, error);
    if (error) {
      return absl::InternalError(absl::StrCat("create checkpoint root ", root, ": ",
                                              error.message()));
    }
    // Make the new root's own entry durable, or a crash could lose every checkpoint in it.
    const fs::path parent = fs::absolute(fs::path(root), error).parent_path();
    if (absl::Status synced = FsyncDirectory(parent.string()); !synced.ok()) return synced;
  }
  const std::string base = JoinPath(root, CheckpointDirName(version));
  for (int attempt = 0; attempt < 16; ++attempt) {
    std::string temp = absl::StrCat(base, kTempMarker, RandomSuffix());
    if (::mkdir(temp.c_str(), 0755) == 0) {
      return std::unique_ptr<CheckpointWriter>(
          new CheckpointWriter(root, std::move(temp), version));
    }
    if (errno != EEXIST) return Errno("create checkpoint directory", temp);
  }
  return absl::InternalError(absl::StrCat("no free temporary name for ", base));
}

absl::Status CheckpointWriter::AddChunks(absl::string_view name, absl::string_view header,
                                         absl::string_view data) {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", temp_path_, " is already committed or aborted"));
  }
  if (!IsSafeManifestFileName(name) || name == kManifestFileName) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint file name \"", name, "\" is not allowed: expected [A-Za-z0-9._+-], no "
        "leading '.', not ", kManifestFileName));
  }
  if (manifest_.Find(name) != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint file \"", name, "\" added twice"));
  }
  if (absl::Status status = WriteFileDurably(JoinPath(temp_path_, name), header, data);
      !status.ok()) {
    return status;
  }
  Fnv1a64 hash;
  hash.Update(header);
  hash.Update(data);
  manifest_.files.push_back(ManifestFile{std::string(name),
                                         static_cast<int64_t>(header.size() + data.size()),
                                         hash.digest()});
  return absl::OkStatus();
}

absl::Status CheckpointWriter::AddFile(absl::string_view name, absl::string_view bytes) {
  return AddChunks(name, bytes, absl::string_view());
}

absl::Status CheckpointWriter::AddNpy(absl::string_view name, const Matrix& m,
                                      bool one_dimensional) {
  absl::StatusOr<std::vector<int64_t>> shape = NpyShapeOf(m.rows(), m.cols(), one_dimensional);
  if (!shape.ok()) return shape.status();
  absl::StatusOr<std::string> header = EncodeNpyHeader(NpyDtype::kFloat32, *shape);
  if (!header.ok()) return header.status();
  return AddChunks(name, *header, RawBytes(m));
}

absl::Status CheckpointWriter::AddNpyFloat64(absl::string_view name, const MatrixD& m,
                                             bool one_dimensional) {
  absl::StatusOr<std::vector<int64_t>> shape = NpyShapeOf(m.rows(), m.cols(), one_dimensional);
  if (!shape.ok()) return shape.status();
  absl::StatusOr<std::string> header = EncodeNpyHeader(NpyDtype::kFloat64, *shape);
  if (!header.ok()) return header.status();
  return AddChunks(name, *header, RawBytes(m));
}

absl::Status CheckpointWriter::AddNpyInt64(absl::string_view name,
                                           absl::Span<const int64_t> values) {
  const int64_t shape[1] = {static_cast<int64_t>(values.size())};
  absl::StatusOr<std::string> header = EncodeNpyHeader(NpyDtype::kInt64, shape);
  if (!header.ok()) return header.status();
  return AddChunks(name, *header, RawBytes(values));
}

void CheckpointWriter::SetMetadata(absl::string_view key, absl::string_view value) {
  manifest_.metadata[std::string(key)] = std::string(value);
}

absl::StatusOr<std::string> CheckpointWriter::Commit() {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", temp_path_, " is already committed or aborted"));
  }
  const std::string manifest_path = JoinPath(temp_path_, kManifestFileName);
  if (absl::Status s = WriteFileDurably(manifest_path, SerializeManifest(manifest_), "");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = FsyncDirectory(temp_path_); !s.ok()) return s;
  const std::string final_path = JoinPath(root_, CheckpointDirName(manifest_.version));
  if (::rename(temp_path_.c_str(), final_path.c_str()) != 0) {
    if (errno != EEXIST && errno != ENOTEMPTY) return Errno("rename", temp_path_);
    if (ValidateCheckpoint(final_path).ok()) {
      Abort();
      return absl::AlreadyExistsError(absl::StrCat(
          "a valid checkpoint ", final_path, " already exists; versions must increase"));
    }
    const std::string aside = absl::StrCat(final_path, ".invalid-", RandomSuffix());
    if (::rename(final_path.c_str(), aside.c_str()) != 0) return Errno("rename", final_path);
    if (::rename(temp_path_.c_str(), final_path.c_str()) != 0) {
      return Errno("rename", temp_path_);
    }
  }
  finished_ = true;
  if (absl::Status s = FsyncDirectory(root_); !s.ok()) return s;
  return final_path;
}

void CheckpointWriter::Abort() {
  if (finished_) return;
  finished_ = true;
  std::error_code ignored;  // best effort: a leftover is removed by RemoveStaleTemporaries
  fs::remove_all(temp_path_, ignored);
}

// ---------------------------------------------------------------- listing and restore

absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(const std::string& root) {
  std::vector<CheckpointInfo> found;
  std::error_code error;
  if (!fs::exists(root, error)) return found;
  for (fs::directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
    uint64_t version;
    if (ParseDirName(it->path().filename().string(), &version) &&
        it->is_directory(error)) {
      found.push_back(CheckpointInfo{version, it->path().string()});
    }
  }
  if (error) return absl::InternalError(absl::StrCat("list ", root, ": ", error.message()));
  std::sort(found.begin(), found.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) {
    return a.version > b.version;
  });
  return found;
}

absl::StatusOr<CheckpointManifest> ValidateCheckpoint(const std::string& dir) {
  const auto bad = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat("checkpoint ", dir, ": ", what));
  };
  const std::string manifest_path = JoinPath(dir, kManifestFileName);
  std::string text;
  {
    std::error_code error;
    if (!fs::is_regular_file(manifest_path, error)) {
      return bad(absl::StrCat("missing ", kManifestFileName));
    }
    const int fd = ::open(manifest_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return bad(Errno("open", manifest_path).message());
    char buffer[1 << 14];
    ssize_t n;
    while ((n = ::read(fd, buffer, sizeof(buffer))) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0) text.append(buffer, static_cast<size_t>(n));
    }
    ::close(fd);
    if (n < 0) return bad(Errno("read", manifest_path).message());
  }
  absl::StatusOr<CheckpointManifest> manifest = ParseManifest(text, manifest_path);
  if (!manifest.ok()) return manifest.status();
  uint64_t dir_version;
  if (ParseDirName(fs::path(dir).filename().string(), &dir_version) &&
      dir_version != manifest->version) {
    return bad(absl::StrCat("manifest records version ", manifest->version,
                            ", the directory name says ", dir_version));
  }
  std::vector<char> buffer(1 << 20);
  for (const ManifestFile& file : manifest->files) {
    const std::string path = JoinPath(dir, file.name);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return bad(absl::StrCat(file.name, " listed in the manifest is missing"));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      return bad(Errno("stat", path).message());
    }
    if (st.st_size != file.bytes) {
      const int64_t size = st.st_size;
      ::close(fd);
      return bad(absl::StrCat(file.name, ": ", size < file.bytes ? "truncated" : "wrong size",
                              ": manifest records ", file.bytes, " bytes, found ", size));
    }
    Fnv1a64 hash;
    int64_t total = 0;
    ssize_t n;
    while ((n = ::read(fd, buffer.data(), buffer.size())) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0) {
        hash.Update(absl::string_view(buffer.data(), static_cast<size_t>(n)));
        total += n;
      }
    }
    ::close(fd);
    if (n < 0 || total != file.bytes) {
      return bad(absl::StrCat(file.name, ": read ", total, " of ", file.bytes, " bytes"));
    }
    if (hash.digest() != file.fnv1a64) {
      return bad(absl::StrCat(file.name, ": checksum mismatch: manifest records fnv1a64 ",
                              Fnv1a64::Hex(file.fnv1a64), ", computed ",
                              Fnv1a64::Hex(hash.digest())));
    }
  }
  return manifest;
}

absl::StatusOr<RestorePoint> FindNewestValidCheckpoint(const std::string& root) {
  absl::StatusOr<std::vector<CheckpointInfo>> checkpoints = ListCheckpoints(root);
  if (!checkpoints.ok()) return checkpoints.status();
  if (checkpoints->empty()) {
    return absl::NotFoundError(absl::StrCat("no checkpoint in ", root));
  }
  RestorePoint point;
  for (const CheckpointInfo& info : *checkpoints) {
    absl::StatusOr<CheckpointManifest> manifest = ValidateCheckpoint(info.path);
    if (manifest.ok()) {
      point.checkpoint = info;
      point.manifest = *std::move(manifest);
      return point;
    }
    point.skipped.push_back(absl::StrCat("skipped ", manifest.status().message()));
  }
  return absl::DataLossError(absl::StrCat("no valid checkpoint in ", root, ": ",
                                          absl::StrJoin(point.skipped, "; ")));
}

absl::StatusOr<int> RemoveStaleTemporaries(const std::string& root) {
  std::vector<fs::path> stale;
  std::error_code error;
  if (!fs::exists(root, error)) return 0;
  for (fs::directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    if (absl::StartsWith(name, kDirPrefix) && absl::StrContains(name, kTempMarker)) {
      stale.push_back(it->path());
    }
  }
  if (error) return absl::InternalError(absl::StrCat("list ", root, ": ", error.message()));
  for (const fs::path& path : stale) {
    fs::remove_all(path, error);
    if (error) {
      return absl::InternalError(absl::StrCat("remove ", path.string(), ": ", error.message()));
    }
  }
  return static_cast<int>(stale.size());
}

absl::StatusOr<int> PruneCheckpoints(const std::string& root, int keep_last,
                                     absl::Span<const uint64_t> also_keep) {
  if (keep_last < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep_last must be >= 1 (the newest checkpoint is never deleted), got ",
                     keep_last));
  }
  absl::StatusOr<std::vector<CheckpointInfo>> checkpoints = ListCheckpoints(root);
  if (!checkpoints.ok()) return checkpoints.status();
  int deleted = 0;
  for (size_t i = keep_last; i < checkpoints->size(); ++i) {
    const uint64_t version = (*checkpoints)[i].version;
    if (std::find(also_keep.begin(), also_keep.end(), version) != also_keep.end()) continue;
    if (absl::Status s = DeleteCheckpointDir(root, (*checkpoints)[i].path); !s.ok()) return s;
    ++deleted;
  }
  return deleted;
}

}  // namespace dion
