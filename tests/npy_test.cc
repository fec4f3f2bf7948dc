// Tests of server/checkpoint/npy.h: bit-exact round trips, numpy-compatible headers, precise errors for
// every malformed file, and interoperability with the real numpy (when /usr/bin/python3 has it).
#include "server/checkpoint/npy.h"

#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/rng.h"
#include "gtest/gtest.h"

namespace dion {
namespace {

// Passes if `text` contains `part`; on failure prints both (no gmock: tests link gtest only).
::testing::AssertionResult Contains(absl::string_view text, absl::string_view part) {
  if (absl::StrContains(text, part)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}


class NpyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "npy_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::system(absl::StrCat("rm -rf '", dir_, "'").c_str()); }

  std::string Path(absl::string_view name) const { return absl::StrCat(dir_, "/", name); }

  static std::string Slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  static void Spit(const std::string& path, absl::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

  // A matrix with awkward values: random normals plus signed zero, denormal, inf and NaN
  // payloads, so "bit-identical" means more than "approximately equal".
  static Matrix Awkward(int rows, int cols, uint64_t seed) {
    Matrix m(rows, cols);
    Rng rng(seed);
    for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.Normal());
    if (m.size() >= 4) {
      m.data()[0] = -0.0f;
      m.data()[1] = std::numeric_limits<float>::denorm_min();
      m.data()[2] = std::numeric_limits<float>::infinity();
      m.data()[3] = std::numeric_limits<float>::quiet_NaN();
    }
    return m;
  }

  static bool BitIdentical(const Matrix& a, const Matrix& b) {
    return a.rows() == b.rows() && a.cols() == b.cols() &&
           (a.size() == 0 || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  }

  static bool HaveNumpy() {
    return std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
  }
  // Runs a Python snippet with /usr/bin/python3; returns its exit status.
  int Python(const std::string& script) {
    const std::string file = Path("script.py");
    Spit(file, script);
    return std::system(absl::StrCat("/usr/bin/python3 '", file, "'").c_str());
  }

  std::string dir_;
};

TEST_F(NpyTest, RoundTripsFloat32MatrixBitIdentically) {
  const Matrix m = Awkward(7, 5, 1);
  ASSERT_TRUE(WriteNpy(Path("m.npy"), m).ok());
  absl::StatusOr<NpyArray> read = ReadNpy(Path("m.npy"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->dtype, NpyDtype::kFloat32);
  EXPECT_EQ(read->shape, (std::vector<int64_t>{7, 5}));
  EXPECT_TRUE(BitIdentical(read->f32, m));
}

TEST_F(NpyTest, RoundTripsOneDimensionalAsOneRowMatrix) {
  const Matrix v = Awkward(1, 9, 2);
  ASSERT_TRUE(WriteNpy(Path("v.npy"), v, /*one_dimensional=*/true).ok());
  absl::StatusOr<NpyArray> read = ReadNpy(Path("v.npy"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->shape, (std::vector<int64_t>{9}));
  EXPECT_TRUE(BitIdentical(read->f32, v));
}

TEST_F(NpyTest, RoundTripsEmptyShapes) {
  for (auto [rows, cols, one_dimensional] :
       {std::tuple{0, 3, false}, std::tuple{3, 0, false}, std::tuple{0, 0, false},
        std::tuple{1, 0, true}, std::tuple{1, 1, true}}) {
    const Matrix m = Matrix::Constant(rows, cols, 2.5f);
    const std::string path = Path(absl::StrCat("e", rows, "x", cols, ".npy"));
    ASSERT_TRUE(WriteNpy(path, m, one_dimensional).ok());
    absl::StatusOr<Matrix> read = ReadNpyMatrix(path);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_TRUE(BitIdentical(*read, m)) << rows << " x " << cols;
  }
}

TEST_F(NpyTest, RoundTripsFloat64AndInt64) {
  MatrixD d(2, 3);
  d << 1.0, -2.5, 1e300, std::numeric_limits<double>::denorm_min(), -0.0, 3.0;
  ASSERT_TRUE(WriteNpyFloat64(Path("d.npy"), d).ok());
  absl::StatusOr<NpyArray> read_d = ReadNpy(Path("d.npy"));
  ASSERT_TRUE(read_d.ok()) << read_d.status();
  EXPECT_EQ(read_d->dtype, NpyDtype::kFloat64);
  EXPECT_EQ(std::memcmp(read_d->f64.data(), d.data(), sizeof(double) * 6), 0);

  const std::vector<int64_t> ints = {0, -1, std::numeric_limits<int64_t>::max(),
                                     std::numeric_limits<int64_t>::min()};
  ASSERT_TRUE(WriteNpyInt64(Path("i.npy"), ints).ok());
  absl::StatusOr<NpyArray> read_i = ReadNpy(Path("i.npy"));
  ASSERT_TRUE(read_i.ok()) << read_i.status();
  EXPECT_EQ(read_i->dtype, NpyDtype::kInt64);
  EXPECT_EQ(read_i->shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(read_i->i64, ints);
}

TEST_F(NpyTest, DataStartsAtMultipleOf64Bytes) {
  // Shapes whose repr lengths differ, so the padding differs.
  for (std::vector<int64_t> shape : {std::vector<int64_t>{1}, {12345678901}, {3, 4},
                                     {123456789, 987654321}, {0, 0}}) {
    for (NpyDtype dtype : {NpyDtype::kFloat32, NpyDtype::kFloat64, NpyDtype::kInt64}) {
      absl::StatusOr<std::string> header = EncodeNpyHeader(dtype, shape);
      ASSERT_TRUE(header.ok()) << header.status();
      EXPECT_EQ(header->size() % 64, 0u) << *header;
      EXPECT_EQ(header->back(), '\n');
      const size_t header_len = static_cast<unsigned char>((*header)[8]) |
                                static_cast<unsigned char>((*header)[9]) << 8;
      EXPECT_EQ(10 + header_len, header->size());
    }
  }
}

TEST_F(NpyTest, DecodesInMemoryImage) {
  const Matrix m = Awkward(3, 2, 3);
  absl::StatusOr<std::string> bytes = EncodeNpy(NpyDtype::kFloat32, {3, 2}, RawBytes(m));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<NpyArray> decoded = DecodeNpy(*bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(BitIdentical(decoded->f32, m));
  EXPECT_EQ(EncodeNpy(NpyDtype::kFloat32, {3, 3}, RawBytes(m)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(NpyTest, TruncatedFileNamesPathAndByteCounts) {
  ASSERT_TRUE(WriteNpy(Path("t.npy"), Matrix::Ones(4, 8)).ok());
  const std::string full = Slurp(Path("t.npy"));
  Spit(Path("t.npy"), full.substr(0, full.size() - 28));
  absl::StatusOr<NpyArray> read = ReadNpy(Path("t.npy"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(read.status().message(), Path("t.npy")));
  EXPECT_TRUE(Contains(read.status().message(), "truncated: expected 128 data bytes, found 100"));

  // Cut inside the header, and inside the preamble.
  Spit(Path("t.npy"), full.substr(0, 40));
  EXPECT_TRUE(Contains(ReadNpy(Path("t.npy")).status().message(), "truncated: expected a header"));
  Spit(Path("t.npy"), full.substr(0, 5));
  EXPECT_TRUE(Contains(ReadNpy(Path("t.npy")).status().message(), "truncated"));
}

TEST_F(NpyTest, TrailingBytesAreRefused) {
  ASSERT_TRUE(WriteNpy(Path("t.npy"), Matrix::Ones(2, 2)).ok());
  Spit(Path("t.npy"), Slurp(Path("t.npy")) + "xyz");
  EXPECT_TRUE(Contains(ReadNpy(Path("t.npy")).status().message(),
                       "expected 16 data bytes, found 19"));
}

TEST_F(NpyTest, WrongMagicIsRefused) {
  ASSERT_TRUE(WriteNpy(Path("m.npy"), Matrix::Ones(2, 2)).ok());
  std::string bytes = Slurp(Path("m.npy"));
  bytes[1] = 'X';
  Spit(Path("m.npy"), bytes);
  absl::StatusOr<NpyArray> read = ReadNpy(Path("m.npy"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(read.status().message(), Path("m.npy")));
  EXPECT_TRUE(Contains(read.status().message(), "bad magic"));
}

TEST_F(NpyTest, UnsupportedVersionIsRefused) {
  ASSERT_TRUE(WriteNpy(Path("m.npy"), Matrix::Ones(2, 2)).ok());
  std::string bytes = Slurp(Path("m.npy"));
  bytes[6] = '\x04';
  Spit(Path("m.npy"), bytes);
  EXPECT_TRUE(Contains(ReadNpy(Path("m.npy")).status().message(),
                       "unsupported .npy format version 4.0"));
}

// Rewrites the header dict of a valid 2 x 3 float32 file, keeping the header length (the
// padding spaces absorb the difference), and returns the reader's error.
class NpyHeaderEditTest : public NpyTest {
 protected:
  absl::Status ReadWithHeaderEdit(absl::string_view from, absl::string_view to) {
    EXPECT_TRUE(WriteNpy(Path("h.npy"), Matrix::Ones(2, 3)).ok());
    std::string bytes = Slurp(Path("h.npy"));
    const size_t at = bytes.find(std::string(from));
    EXPECT_NE(at, std::string::npos) << from;
    bytes.replace(at, from.size(), std::string(to));
    const size_t newline = bytes.find('\n');
    if (to.size() > from.size()) {
      bytes.erase(newline - (to.size() - from.size()), to.size() - from.size());
    } else {
      bytes.insert(newline, from.size() - to.size(), ' ');
    }
    Spit(Path("h.npy"), bytes);
    return ReadNpy(Path("h.npy")).status();
  }
};

TEST_F(NpyHeaderEditTest, WrongDtypeIsRefusedWithExpectation) {
  absl::Status status = ReadWithHeaderEdit("'<f4'", "'<i4'");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), Path("h.npy")));
  EXPECT_TRUE(Contains(status.message(),
                       "unsupported dtype '<i4'; expected '<f4', '<f8' or '<i8'"));
  EXPECT_TRUE(Contains(ReadWithHeaderEdit("'<f4'", "'>f4'").message(), "'>f4'"));
}

TEST_F(NpyHeaderEditTest, FortranOrderIsRefused) {
  absl::Status status = ReadWithHeaderEdit("False, 'shape'", "True,  'shape'");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), Path("h.npy")));
  EXPECT_TRUE(Contains(status.message(), "fortran_order is True; expected False"));
}

TEST_F(NpyHeaderEditTest, MalformedOrUnsupportedShapeIsRefused) {
  EXPECT_TRUE(Contains(ReadWithHeaderEdit("(2, 3)", "(2, 3, ").message(), "malformed header"));
  EXPECT_TRUE(Contains(ReadWithHeaderEdit("(2, 3)", "(1,2,3)").message(),
                       "3 dimensions; expected 1-D or 2-D"));
  EXPECT_TRUE(Contains(ReadWithHeaderEdit("'shape'", "'shope'").message(), "unexpected key"));
  EXPECT_TRUE(Contains(ReadWithHeaderEdit("(2, 3)", "(2, 4)").message(),
                       "truncated: expected 32 data bytes, found 24"));
}

TEST_F(NpyTest, ReadNpyMatrixNarrowsFloat64OnlyWhenAsked) {
  ASSERT_TRUE(WriteNpyFloat64(Path("d.npy"), MatrixD::Constant(2, 2, 0.1)).ok());
  absl::StatusOr<Matrix> refused = ReadNpyMatrix(Path("d.npy"));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(refused.status().message(), "'<f8'; expected '<f4'"));
  absl::StatusOr<Matrix> narrowed = ReadNpyMatrix(Path("d.npy"), /*allow_float64=*/true);
  ASSERT_TRUE(narrowed.ok()) << narrowed.status();
  EXPECT_EQ((*narrowed)(1, 1), 0.1f);
}

TEST_F(NpyTest, MissingFileIsNotFound) {
  absl::StatusOr<NpyArray> read = ReadNpy(Path("absent.npy"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(read.status().message(), Path("absent.npy")));
}

TEST_F(NpyTest, OneDimensionalWriteNeedsOneRow) {
  EXPECT_EQ(WriteNpy(Path("x.npy"), Matrix::Ones(2, 2), true).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(NpyTest, NumpyLoadsWhatWeWrite) {
  if (!HaveNumpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy is not available";
  Matrix m(3, 4);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 4; ++j) m(i, j) = 0.5f * static_cast<float>(i * 4 + j) - 1.0f;
  }
  ASSERT_TRUE(WriteNpy(Path("m.npy"), m).ok());
  ASSERT_TRUE(WriteNpy(Path("v.npy"), m.row(1), /*one_dimensional=*/true).ok());
  ASSERT_TRUE(WriteNpyInt64(Path("i.npy"), std::vector<int64_t>{7, -8, 1LL << 40}).ok());
  ASSERT_TRUE(WriteNpyFloat64(Path("d.npy"), MatrixD::Constant(2, 1, 1.0 / 3.0)).ok());
  // Exact comparisons: every value is exactly representable, and numpy must see the same bits.
  const std::string script = absl::StrReplaceAll(R"(
import numpy as np, sys
m = np.load('DIR/m.npy'); v = np.load('DIR/v.npy')
i = np.load('DIR/i.npy'); d = np.load('DIR/d.npy')
want = (0.5 * np.arange(12, dtype=np.float32) - 1).reshape(3, 4)
ok = (m.dtype == np.float32 and m.shape == (3, 4) and m.flags.c_contiguous
      and np.array_equal(m, want) and v.shape == (4,) and np.array_equal(v, want[1])
      and i.dtype == np.int64 and i.tolist() == [7, -8, 1 << 40]
      and d.dtype == np.float64 and d.shape == (2, 1) and (d == 1.0 / 3.0).all())
sys.exit(0 if ok else 1)
)", {{"DIR", dir_}});
  EXPECT_EQ(Python(script), 0);
}

TEST_F(NpyTest, ReadsWhatNumpySavesAndWritesTheSameBytes) {
  if (!HaveNumpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy is not available";
  const std::string script = absl::StrReplaceAll(R"(
import numpy as np
np.save('DIR/a.npy', (np.arange(15, dtype=np.float32) * 0.25 - 2).reshape(5, 3))
np.save('DIR/b.npy', np.arange(6, dtype=np.float64) / 8)
np.save('DIR/c.npy', np.array([3, -4, 2**62], dtype=np.int64))
np.save('DIR/f.npy', np.asfortranarray(np.ones((2, 3), dtype=np.float32)))
)", {{"DIR", dir_}});
  ASSERT_EQ(Python(script), 0);

  absl::StatusOr<NpyArray> a = ReadNpy(Path("a.npy"));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->shape, (std::vector<int64_t>{5, 3}));
  for (int k = 0; k < 15; ++k) EXPECT_EQ(a->f32.data()[k], k * 0.25f - 2.0f) << k;
  // Our writer produces numpy's exact bytes for the same array (header included).
  EXPECT_EQ(*EncodeNpy(NpyDtype::kFloat32, a->shape, RawBytes(a->f32)), Slurp(Path("a.npy")));

  absl::StatusOr<NpyArray> b = ReadNpy(Path("b.npy"));
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->shape, (std::vector<int64_t>{6}));
  for (int k = 0; k < 6; ++k) EXPECT_EQ(b->f64.data()[k], k / 8.0) << k;
  EXPECT_EQ(*EncodeNpy(NpyDtype::kFloat64, b->shape, RawBytes(b->f64)), Slurp(Path("b.npy")));

  absl::StatusOr<NpyArray> c = ReadNpy(Path("c.npy"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->i64, (std::vector<int64_t>{3, -4, int64_t{1} << 62}));

  EXPECT_TRUE(Contains(ReadNpy(Path("f.npy")).status().message(), "fortran_order is True"));
}

}  // namespace
}  // namespace dion
