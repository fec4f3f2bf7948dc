#include "server/checkpoint/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/checkpoint/text_cursor.h"

namespace dion {

// Element bytes are copied straight between memory and file.
static_assert(std::endian::native == std::endian::little,
              "the .npy code assumes a little-endian host");

namespace {

constexpr absl::string_view kMagic("\x93NUMPY", 6);
constexpr int kAlign = 64;                     // numpy's ARRAY_ALIGN
constexpr int kGrowthAxisMaxDigits = 21;       // numpy's GROWTH_AXIS_MAX_DIGITS (>= 1.23)
constexpr int64_t kMaxHeaderBytes = 1 << 20;   // far beyond any header numpy writes

absl::Status DataLoss(absl::string_view source, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(source, ": ", what));
}
absl::Status Invalid(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

std::string ShapeRepr(absl::Span<const int64_t> shape) {
  if (shape.size() == 1) return absl::StrCat("(", shape[0], ",)");
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

// Byte size of the data for this dtype and shape, or an error naming `source`.
absl::StatusOr<int64_t> DataBytes(NpyDtype dtype, absl::Span<const int64_t> shape,
                                  absl::string_view source) {
  if (shape.size() != 1 && shape.size() != 2) {
    return Invalid(source, absl::StrCat("shape ", ShapeRepr(shape),
                                        " has ", shape.size(), " dimensions; expected 1-D or 2-D"));
  }
  int64_t bytes = NpyItemSize(dtype);
  for (int64_t d : shape) {
    if (d < 0) {
      return Invalid(source, absl::StrCat("negative dimension in shape ", ShapeRepr(shape)));
    }
    if (d != 0 && bytes > std::numeric_limits<int64_t>::max() / d) {
      return Invalid(source, absl::StrCat("shape ", ShapeRepr(shape), " overflows int64 bytes"));
    }
    bytes *= d;
  }
  return bytes;
}

struct HeaderDict {
  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<std::vector<int64_t>> shape;
};

// The dict of a .npy header: the Python-literal subset numpy writes.
class DictParser {
 public:
  DictParser(absl::string_view text, absl::string_view source) : in_(text), source_(source) {}

  absl::StatusOr<HeaderDict> Parse() {
    HeaderDict dict;
    if (!in_.ConsumeToken('{')) return Error("expected '{'");
    while (!in_.ConsumeToken('}')) {
      std::optional<std::string> key = QuotedString();
      if (!key) return Error("expected a quoted key");
      if (!in_.ConsumeToken(':')) return Error(absl::StrCat("expected ':' after '", *key, "'"));
      if (absl::Status s = Value(*key, dict); !s.ok()) return s;
      if (in_.ConsumeToken(',')) continue;
      if (in_.ConsumeToken('}')) break;
      return Error("expected ',' or '}'");
    }
    in_.SkipSpace();
    if (!in_.AtEnd()) return Error("unexpected text after '}'");
    if (!dict.descr) return Error("missing key 'descr'");
    if (!dict.fortran_order) return Error("missing key 'fortran_order'");
    if (!dict.shape) return Error("missing key 'shape'");
    return dict;
  }

 private:
  absl::Status Error(absl::string_view what) {
    return DataLoss(source_, absl::StrCat("malformed header dict at byte ", in_.pos(), ": ", what,
                                          " in \"", in_.text(), "\""));
  }

  // The value of `key`, stored into `dict`.
  absl::Status Value(absl::string_view key, HeaderDict& dict) {
    if (key == "descr") {
      dict.descr = QuotedString();
      if (!dict.descr) {
        // A list here is a structured dtype.
        return Invalid(source_, "unsupported dtype (not a simple type string); expected "
                                "'<f4', '<f8' or '<i8'");
      }
    } else if (key == "fortran_order") {
      if (in_.ConsumeToken("True")) {
        dict.fortran_order = true;
      } else if (in_.ConsumeToken("False")) {
        dict.fortran_order = false;
      } else {
        return Error("expected True or False for 'fortran_order'");
      }
    } else if (key == "shape") {
      dict.shape = IntTuple();
      if (!dict.shape) return Error("expected a tuple of integers for 'shape'");
    } else {
      return Error(absl::StrCat("unexpected key '", key,
                                "'; expected only 'descr', 'fortran_order', 'shape'"));
    }
    return absl::OkStatus();
  }

  // 'abc' or "abc" without escapes (numpy never writes any in these fields).
  std::optional<std::string> QuotedString() {
    in_.SkipSpace();
    std::optional<absl::string_view> body = in_.ConsumeRawQuoted("'\"");
    if (!body) return std::nullopt;
    return std::string(*body);
  }

  // (), (n,), (a, b), (a, b,) with non-negative decimal integers (an 'L' suffix is accepted,
  // as Python 2 numpy wrote it).
  std::optional<std::vector<int64_t>> IntTuple() {
    if (!in_.ConsumeToken('(')) return std::nullopt;
    std::vector<int64_t> out;
    while (!in_.ConsumeToken(')')) {
      in_.SkipSpace();
      int64_t value = 0;
      const absl::string_view digits = in_.ConsumeDigits();
      if (digits.empty() || !absl::SimpleAtoi(digits, &value)) return std::nullopt;
      in_.Consume('L');
      out.push_back(value);
      if (in_.ConsumeToken(',')) continue;
      if (in_.ConsumeToken(')')) break;
      return std::nullopt;
    }
    return out;
  }

  TextCursor in_;
  absl::string_view source_;
};

struct ParsedHeader {
  NpyDtype dtype;
  std::vector<int64_t> shape;
  int64_t data_offset;  // bytes before the element data
  int64_t data_bytes;   // bytes of element data the shape requires
};

// Magic and version: returns the size of the fixed preamble (10 or 12 bytes) and the header
// length stored in it. `bytes` holds at least the first 12 bytes of the file, or all of it.
absl::StatusOr<std::pair<int64_t, int64_t>> ParsePreamble(absl::string_view bytes,
                                                           absl::string_view source) {
  if (bytes.size() < 10) {
    return DataLoss(source, absl::StrCat("truncated: expected at least 10 bytes of .npy "
                                         "preamble, found ", bytes.size()));
  }
  if (bytes.substr(0, kMagic.size()) != kMagic) {
    return DataLoss(source, "bad magic: not a .npy file (expected \\x93NUMPY)");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  const int minor = static_cast<unsigned char>(bytes[7]);
  const auto byte = [&](int i) {
    return static_cast<int64_t>(static_cast<unsigned char>(bytes[i]));
  };
  if (major == 1 && minor == 0) return std::make_pair(int64_t{10}, byte(8) | byte(9) << 8);
  if ((major == 2 || major == 3) && minor == 0) {
    if (bytes.size() < 12) {
      return DataLoss(source, absl::StrCat("truncated: expected 12 bytes of .npy preamble, found ",
                                           bytes.size()));
    }
    return std::make_pair(int64_t{12},
                          byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24);
  }
  return Invalid(source, absl::StrCat("unsupported .npy format version ", major, ".", minor,
                                      "; expected 1.0, 2.0 or 3.0"));
}

// Parses the dict and checks it against what this reader supports.
absl::StatusOr<ParsedHeader> ParseHeaderDict(absl::string_view header, int64_t data_offset,
                                             absl::string_view source) {
  if (header.empty() || header.back() != '\n') {
    return DataLoss(source, "header does not end with a newline");
  }
  DictParser parser(header, source);
  absl::StatusOr<HeaderDict> dict = parser.Parse();
  if (!dict.ok()) return dict.status();
  ParsedHeader parsed;
  if (*dict->descr == "<f4") {
    parsed.dtype = NpyDtype::kFloat32;
  } else if (*dict->descr == "<f8") {
    parsed.dtype = NpyDtype::kFloat64;
  } else if (*dict->descr == "<i8") {
    parsed.dtype = NpyDtype::kInt64;
  } else {
    return Invalid(source, absl::StrCat("unsupported dtype '", *dict->descr,
                                        "'; expected '<f4', '<f8' or '<i8'"));
  }
  if (*dict->fortran_order) {
    return Invalid(source, "fortran_order is True; expected False (C order)");
  }
  parsed.shape = std::move(*dict->shape);
  absl::StatusOr<int64_t> bytes = DataBytes(parsed.dtype, parsed.shape, source);
  if (!bytes.ok()) return bytes.status();
  parsed.data_bytes = *bytes;
  parsed.data_offset = data_offset;
  return parsed;
}

// Sizes the array for the parsed header and returns where its element bytes go.
char* AllocateArray(const ParsedHeader& header, NpyArray* array) {
  array->dtype = header.dtype;
  array->shape = header.shape;
  const int64_t rows = array->rows(), cols = array->cols();
  switch (header.dtype) {
    case NpyDtype::kFloat32:
      array->f32.resize(rows, cols);
      return reinterpret_cast<char*>(array->f32.data());
    case NpyDtype::kFloat64:
      array->f64.resize(rows, cols);
      return reinterpret_cast<char*>(array->f64.data());
    case NpyDtype::kInt64:
      array->i64.resize(rows * cols);
      return reinterpret_cast<char*>(array->i64.data());
  }
  return nullptr;
}

absl::Status SizeMismatch(absl::string_view source, int64_t expected, int64_t found) {
  return DataLoss(source, absl::StrCat(found < expected ? "truncated" : "trailing bytes",
                                       ": expected ", expected, " data bytes, found ", found));
}

absl::Status WriteAll(int fd, absl::string_view bytes, const std::string& path) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("write ", path));
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// Reads exactly size bytes at the current offset; returns how many were available.
absl::StatusOr<int64_t> ReadUpTo(int fd, char* out, int64_t size, const std::string& path) {
  int64_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(fd, out + done, static_cast<size_t>(size - done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("read ", path));
    }
    if (n == 0) break;
    done += n;
  }
  return done;
}

absl::Status WriteNpyFile(const std::string& path, NpyDtype dtype,
                          absl::Span<const int64_t> shape, absl::string_view data) {
  absl::StatusOr<std::string> header = EncodeNpyHeader(dtype, shape);
  if (!header.ok()) return header.status();
  absl::StatusOr<int64_t> bytes = DataBytes(dtype, shape, path);
  if (!bytes.ok()) return bytes.status();
  if (*bytes != static_cast<int64_t>(data.size())) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": shape ", ShapeRepr(shape), " needs ",
                                                   *bytes, " data bytes, given ", data.size()));
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  absl::Status status = WriteAll(fd, *header, path);
  if (status.ok()) status = WriteAll(fd, data, path);
  if (::close(fd) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("close ", path));
  }
  return status;
}

}  // namespace

absl::string_view NpyDescr(NpyDtype dtype) {
  switch (dtype) {
    case NpyDtype::kFloat32: return "<f4";
    case NpyDtype::kFloat64: return "<f8";
    case NpyDtype::kInt64: return "<i8";
  }
  return "?";
}

int NpyItemSize(NpyDtype dtype) { return dtype == NpyDtype::kFloat32 ? 4 : 8; }

absl::StatusOr<std::string> EncodeNpyHeader(NpyDtype dtype, absl::Span<const int64_t> shape) {
  absl::StatusOr<int64_t> bytes = DataBytes(dtype, shape, "npy header");
  if (!bytes.ok()) return bytes.status();
  // Exactly numpy 1.24's _write_array_header: sorted keys, repr values, spare spaces so the
  // first axis can grow in place, then spaces and '\n' up to the 64-byte boundary.
  std::string dict = absl::StrCat("{'descr': '", NpyDescr(dtype), "', 'fortran_order': False, ",
                                  "'shape': ", ShapeRepr(shape), ", }");
  dict.append(kGrowthAxisMaxDigits - absl::StrCat(shape[0]).size(), ' ');
  const int64_t preamble = 10;  // magic (6) + version (2) + uint16 length (2)
  const int64_t with_newline = static_cast<int64_t>(dict.size()) + 1;
  const int64_t pad = kAlign - (preamble + with_newline) % kAlign;
  const int64_t header_len = with_newline + pad;
  if (header_len > 0xFFFF) {
    return absl::InvalidArgumentError("npy header longer than format 1.0 allows");
  }
  std::string out(kMagic);
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(header_len & 0xFF));
  out.push_back(static_cast<char>(header_len >> 8));
  out.append(dict);
  out.append(pad, ' ');
  out.push_back('\n');
  return out;
}

absl::StatusOr<std::string> EncodeNpy(NpyDtype dtype, absl::Span<const int64_t> shape,
                                      absl::string_view data) {
  absl::StatusOr<int64_t> bytes = DataBytes(dtype, shape, "EncodeNpy");
  if (!bytes.ok()) return bytes.status();
  if (*bytes != static_cast<int64_t>(data.size())) {
    return absl::InvalidArgumentError(absl::StrCat("EncodeNpy: shape ", ShapeRepr(shape),
                                                   " needs ", *bytes, " data bytes, given ",
                                                   data.size()));
  }
  absl::StatusOr<std::string> out = EncodeNpyHeader(dtype, shape);
  if (!out.ok()) return out.status();
  out->append(data.data(), data.size());
  return out;
}

absl::string_view RawBytes(const Matrix& m) {
  return absl::string_view(reinterpret_cast<const char*>(m.data()), m.size() * sizeof(float));
}
absl::string_view RawBytes(const MatrixD& m) {
  return absl::string_view(reinterpret_cast<const char*>(m.data()), m.size() * sizeof(double));
}
absl::string_view RawBytes(absl::Span<const int64_t> values) {
  return absl::string_view(reinterpret_cast<const char*>(values.data()),
                           values.size() * sizeof(int64_t));
}

absl::StatusOr<std::vector<int64_t>> NpyShapeOf(int64_t rows, int64_t cols,
                                                bool one_dimensional) {
  if (!one_dimensional) return std::vector<int64_t>{rows, cols};
  if (rows != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a 1-D .npy array needs a 1 x n matrix, got ", rows, " x ", cols));
  }
  return std::vector<int64_t>{cols};
}

absl::Status WriteNpy(const std::string& path, const Matrix& m, bool one_dimensional) {
  absl::StatusOr<std::vector<int64_t>> shape = NpyShapeOf(m.rows(), m.cols(), one_dimensional);
  if (!shape.ok()) return shape.status();
  return WriteNpyFile(path, NpyDtype::kFloat32, *shape, RawBytes(m));
}

absl::Status WriteNpyFloat64(const std::string& path, const MatrixD& m, bool one_dimensional) {
  absl::StatusOr<std::vector<int64_t>> shape = NpyShapeOf(m.rows(), m.cols(), one_dimensional);
  if (!shape.ok()) return shape.status();
  return WriteNpyFile(path, NpyDtype::kFloat64, *shape, RawBytes(m));
}

absl::Status WriteNpyInt64(const std::string& path, absl::Span<const int64_t> values) {
  const int64_t shape[1] = {static_cast<int64_t>(values.size())};
  return WriteNpyFile(path, NpyDtype::kInt64, shape, RawBytes(values));
}

absl::StatusOr<NpyArray> DecodeNpy(absl::string_view bytes, absl::string_view source) {
  absl::StatusOr<std::pair<int64_t, int64_t>> preamble = ParsePreamble(bytes, source);
  if (!preamble.ok()) return preamble.status();
  const auto [preamble_bytes, header_len] = *preamble;
  const int64_t data_offset = preamble_bytes + header_len;
  if (static_cast<int64_t>(bytes.size()) < data_offset) {
    return DataLoss(source, absl::StrCat("truncated: expected a header of ", header_len,
                                         " bytes, found ", bytes.size() - preamble_bytes));
  }
  absl::StatusOr<ParsedHeader> header =
      ParseHeaderDict(bytes.substr(preamble_bytes, header_len), data_offset, source);
  if (!header.ok()) return header.status();
  const int64_t found = static_cast<int64_t>(bytes.size()) - data_offset;
  if (found != header->data_bytes) return SizeMismatch(source, header->data_bytes, found);
  NpyArray array;
  char* out = AllocateArray(*header, &array);
  if (header->data_bytes > 0) std::memcpy(out, bytes.data() + data_offset, header->data_bytes);
  return array;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  // Closes fd on every return path.
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};

  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("stat ", path));
  if (!S_ISREG(st.st_mode)) return Invalid(path, "not a regular file");
  const int64_t file_size = st.st_size;

  char preamble_buf[12];
  absl::StatusOr<int64_t> got = ReadUpTo(fd, preamble_buf, sizeof(preamble_buf), path);
  if (!got.ok()) return got.status();
  absl::StatusOr<std::pair<int64_t, int64_t>> preamble =
      ParsePreamble(absl::string_view(preamble_buf, *got), path);
  if (!preamble.ok()) return preamble.status();
  const auto [preamble_bytes, header_len] = *preamble;
  if (header_len > kMaxHeaderBytes) {
    return DataLoss(path, absl::StrCat("header length ", header_len, " exceeds the ",
                                       kMaxHeaderBytes, "-byte limit"));
  }
  const int64_t data_offset = preamble_bytes + header_len;
  if (file_size < data_offset) {
    return DataLoss(path, absl::StrCat("truncated: expected a header of ", header_len,
                                       " bytes, found ",
                                       std::max<int64_t>(0, file_size - preamble_bytes)));
  }
  // Re-read the header from its start (the 12-byte buffer may already hold part of it).
  std::string header_text(header_len, '\0');
  if (::lseek(fd, preamble_bytes, SEEK_SET) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("seek ", path));
  }
  got = ReadUpTo(fd, header_text.data(), header_len, path);
  if (!got.ok()) return got.status();
  if (*got != header_len) {
    return DataLoss(path, absl::StrCat("truncated: expected a header of ", header_len,
                                       " bytes, found ", *got));
  }
  absl::StatusOr<ParsedHeader> header = ParseHeaderDict(header_text, data_offset, path);
  if (!header.ok()) return header.status();
  // Checked before allocating, so a corrupt shape cannot ask for a huge buffer.
  if (file_size - data_offset != header->data_bytes) {
    return SizeMismatch(path, header->data_bytes, file_size - data_offset);
  }
  NpyArray array;
  char* out = AllocateArray(*header, &array);
  got = ReadUpTo(fd, out, header->data_bytes, path);
  if (!got.ok()) return got.status();
  // The file may shrink between fstat and read.
  if (*got != header->data_bytes) return SizeMismatch(path, header->data_bytes, *got);
  return array;
}

absl::StatusOr<Matrix> ReadNpyMatrix(const std::string& path, bool allow_float64) {
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  if (!array.ok()) return array.status();
  switch (array->dtype) {
    case NpyDtype::kFloat32:
      return std::move(array->f32);
    case NpyDtype::kFloat64:
      if (allow_float64) return Matrix(array->f64.cast<float>());
      break;
    case NpyDtype::kInt64:
      break;
  }
  return Invalid(path, absl::StrCat("dtype '", NpyDescr(array->dtype), "'; expected '<f4'",
                                    allow_float64 ? " or '<f8'" : ""));
}

}  // namespace dion
