#include "worker/train/idx_loader.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace dion {
namespace {

constexpr uint32_t kImagesMagic = 0x00000803;  // unsigned byte, 3 dimensions
constexpr uint32_t kLabelsMagic = 0x00000801;  // unsigned byte, 1 dimension
// Refuse headers that claim more than this many bytes: a corrupt count must not make us
// try to allocate gigabytes (Fashion-MNIST's largest file holds 47 million).
constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 31;

// An open IDX file, plain or gzip: zlib's gzread passes non-gzip files through unchanged.
class IdxFile {
 public:
  static absl::StatusOr<IdxFile> Open(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      return absl::NotFoundError(absl::StrCat("IDX file ", path, " does not exist ",
                                              "(or is not a regular file)"));
    }
    errno = 0;
    gzFile file = gzopen(path.c_str(), "rb");
    if (file == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot open IDX file ", path, ": ", std::strerror(errno)));
    }
    gzbuffer(file, 1 << 17);
    return IdxFile(path, file);
  }
  IdxFile(IdxFile&& other) noexcept : path_(std::move(other.path_)), file_(other.file_) {
    other.file_ = nullptr;
  }
  IdxFile& operator=(IdxFile&&) = delete;
  ~IdxFile() {
    if (file_ != nullptr) gzclose(file_);
  }

  const std::string& path() const { return path_; }

  // Reads up to `bytes` bytes into `out` (resized to what was read). A stream that ends
  // early is not an error here (the caller knows what it expected); a corrupt gzip stream
  // is DataLoss.
  absl::Status Read(uint64_t bytes, std::vector<uint8_t>* out) {
    out->clear();
    constexpr uint64_t kChunk = uint64_t{1} << 24;
    while (out->size() < bytes) {
      const uint64_t want = std::min(kChunk, bytes - out->size());
      const size_t old_size = out->size();
      out->resize(old_size + want);
      const int got = gzread(file_, out->data() + old_size, static_cast<unsigned>(want));
      if (got < 0) {
        int code = 0;
        const char* message = gzerror(file_, &code);
        return absl::DataLossError(absl::StrCat("IDX file ", path_, " is corrupt: ", message));
      }
      out->resize(old_size + static_cast<size_t>(got));
      if (static_cast<uint64_t>(got) < want) break;
    }
    return absl::OkStatus();
  }

  // Why the stream ended early, for a truncation message: zlib's note on a gzip stream cut
  // short ("unexpected end of file"), or nothing for a plain file.
  std::string EndNote() {
    int code = 0;
    const char* message = gzerror(file_, &code);
    if (code == Z_OK || message == nullptr || *message == '\0') return "";
    return absl::StrCat(" (", message, ")");
  }

 private:
  IdxFile(std::string path, gzFile file) : path_(std::move(path)), file_(file) {}
  std::string path_;
  gzFile file_;
};

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string Hex32(uint32_t value) { return absl::StrFormat("0x%08x", value); }

// Reads the header (magic and `dims` counts) and then exactly the payload the header
// announces, refusing wrong magic, truncation and trailing bytes.
absl::Status ReadIdx(const std::string& path, uint32_t expected_magic, int dims,
                     absl::string_view kind, std::vector<uint32_t>* shape,
                     std::vector<uint8_t>* payload) {
  absl::StatusOr<IdxFile> file = IdxFile::Open(path);
  if (!file.ok()) return file.status();
  const uint64_t header_bytes = 4 * (1 + static_cast<uint64_t>(dims));
  std::vector<uint8_t> header;
  if (absl::Status s = file->Read(header_bytes, &header); !s.ok()) return s;
  if (header.size() >= 4 && BigEndian32(header.data()) != expected_magic) {
    const uint32_t found = BigEndian32(header.data());
    std::string hint;
    if (found == kImagesMagic) hint = " (that is an images file)";
    if (found == kLabelsMagic) hint = " (that is a labels file)";
    return absl::InvalidArgumentError(absl::StrCat("IDX file ", path, " has magic ", Hex32(found),
                                                   hint, ": expected ", Hex32(expected_magic),
                                                   " for an IDX ", kind, " file"));
  }
  if (header.size() < header_bytes) {
    return absl::DataLossError(absl::StrCat("IDX file ", path, " is truncated: expected a ",
                                            header_bytes, "-byte header, found ", header.size(),
                                            " bytes", file->EndNote()));
  }
  shape->clear();
  for (int d = 0; d < dims; ++d) shape->push_back(BigEndian32(header.data() + 4 * (d + 1)));
  // Each factor is < 2^32 and the running product is checked at <= 2^31: no overflow.
  uint64_t payload_bytes = 1;
  for (uint32_t extent : *shape) {
    if (payload_bytes <= kMaxPayloadBytes) payload_bytes *= extent;
  }
  const bool empty_image = dims == 3 && ((*shape)[1] == 0 || (*shape)[2] == 0);
  if (payload_bytes > kMaxPayloadBytes || empty_image) {
    std::string dims_text;
    for (uint32_t d : *shape) absl::StrAppend(&dims_text, dims_text.empty() ? "" : " x ", d);
    return absl::InvalidArgumentError(
        absl::StrCat("IDX file ", path, " declares implausible dimensions ", dims_text,
                     ": expected at most ", kMaxPayloadBytes, " bytes and images of >= 1 x 1"));
  }
  if (absl::Status s = file->Read(payload_bytes, payload); !s.ok()) return s;
  if (payload->size() < payload_bytes) {
    return absl::DataLossError(absl::StrCat(
        "IDX file ", path, " is truncated: the header announces ", payload_bytes,
        " data bytes, found ", payload->size(), file->EndNote()));
  }
  std::vector<uint8_t> extra;
  if (absl::Status s = file->Read(1, &extra); !s.ok()) return s;
  if (!extra.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("IDX file ", path,
                                                   " has trailing bytes after the ",
                                                   payload_bytes, " data bytes its header announces"));
  }
  return absl::OkStatus();
}

// `dir/name` if it exists, else `dir/name.gz`, else NotFound naming both.
absl::StatusOr<std::string> FindIdxFile(absl::string_view dir, absl::string_view name) {
  const std::string plain = (std::filesystem::path(std::string(dir)) / std::string(name)).string();
  const std::string gz = plain + ".gz";
  std::error_code ec;
  if (std::filesystem::is_regular_file(plain, ec)) return plain;
  if (std::filesystem::is_regular_file(gz, ec)) return gz;
  return absl::NotFoundError(absl::StrCat("neither ", plain, " nor ", gz, " exists"));
}

}  // namespace

absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path,
                                       const std::string& labels_path,
                                       const IdxLoadOptions& options) {
  if (options.num_classes < 1 || options.num_classes > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_classes = ", options.num_classes, ": expected 1..256 (labels are bytes)"));
  }
  if (!(options.normalization.stddev > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("pixel normalization stddev = ",
                                                   options.normalization.stddev,
                                                   ": expected > 0"));
  }
  std::vector<uint32_t> image_shape, label_shape;
  std::vector<uint8_t> pixels, label_bytes;
  if (absl::Status s = ReadIdx(images_path, kImagesMagic, 3, "images", &image_shape, &pixels);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadIdx(labels_path, kLabelsMagic, 1, "labels", &label_shape,
                               &label_bytes);
      !s.ok()) {
    return s;
  }
  if (image_shape[0] != label_shape[0]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IDX images file ", images_path, " holds ", image_shape[0], " images but labels file ",
        labels_path, " holds ", label_shape[0], " labels: expected the same count"));
  }
  Dataset data;
  data.num_classes = options.num_classes;
  data.labels.resize(label_shape[0]);
  for (size_t i = 0; i < label_bytes.size(); ++i) {
    if (label_bytes[i] >= options.num_classes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "IDX labels file ", labels_path, " has label[", i, "] = ", int{label_bytes[i]},
          ": expected < num_classes = ", options.num_classes));
    }
    data.labels[i] = label_bytes[i];
  }
  const int64_t n = image_shape[0];
  const int64_t d = int64_t{image_shape[1]} * image_shape[2];
  data.features.resize(n, d);
  // x = (byte / 255 - mean) / stddev, folded into one multiply-add per pixel.
  const float scale = 1.0f / (255.0f * options.normalization.stddev);
  const float shift = -options.normalization.mean / options.normalization.stddev;
  float* out = data.features.data();
  for (size_t i = 0; i < pixels.size(); ++i) out[i] = static_cast<float>(pixels[i]) * scale + shift;
  return data;
}

absl::StatusOr<Dataset> LoadFashionMnist(absl::string_view dir, bool train,
                                         const IdxLoadOptions& options) {
  const absl::string_view prefix = train ? "train" : "t10k";
  absl::StatusOr<std::string> images = FindIdxFile(dir, absl::StrCat(prefix, "-images-idx3-ubyte"));
  if (!images.ok()) return images.status();
  absl::StatusOr<std::string> labels = FindIdxFile(dir, absl::StrCat(prefix, "-labels-idx1-ubyte"));
  if (!labels.ok()) return labels.status();
  return LoadIdxDataset(*images, *labels, options);
}

}  // namespace dion
