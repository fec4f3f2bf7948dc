// The IDX loader on files written by the test (raw and gzip, recognised by content), on
// every malformed input it must refuse with an error naming the file, and, when Debian's
// dataset-fashion-mnist is installed, on the real Fashion-MNIST files.
#include "worker/train/idx_loader.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace dion {
namespace {

using Bytes = std::vector<uint8_t>;

void AppendBigEndian(Bytes& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(value >> shift));
}

Bytes ImagesFile(uint32_t count, uint32_t rows, uint32_t cols, const Bytes& pixels,
                 uint32_t magic = 0x00000803) {
  Bytes out;
  for (uint32_t v : {magic, count, rows, cols}) AppendBigEndian(out, v);
  out.insert(out.end(), pixels.begin(), pixels.end());
  return out;
}

Bytes LabelsFile(const Bytes& labels, uint32_t magic = 0x00000801) {
  Bytes out;
  AppendBigEndian(out, magic);
  AppendBigEndian(out, static_cast<uint32_t>(labels.size()));
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

class IdxLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("idx_loader_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string WriteRaw(const std::string& name, const Bytes& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path;
  }
  std::string WriteGzip(const std::string& name, const Bytes& bytes) {
    const std::string path = (dir_ / name).string();
    gzFile file = gzopen(path.c_str(), "wb");
    EXPECT_NE(file, nullptr);
    EXPECT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    gzclose(file);
    return path;
  }
  Bytes ReadRaw(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), {});
  }

  std::filesystem::path dir_;
};

// 3 images of 2 x 2 pixels and their labels.
const Bytes kPixels = {0, 255, 51, 102, 10, 20, 30, 40, 255, 255, 0, 0};
const Bytes kLabels = {3, 0, 9};

bool Contains(const absl::Status& status, const std::string& text) {
  return std::string(status.message()).find(text) != std::string::npos;
}

TEST_F(IdxLoaderTest, LoadsRawFilesAsUnitIntervalPixels) {
  const std::string images = WriteRaw("images", ImagesFile(3, 2, 2, kPixels));
  const std::string labels = WriteRaw("labels", LabelsFile(kLabels));
  IdxLoadOptions options;
  options.normalization = kUnitIntervalPixels;
  absl::StatusOr<Dataset> data = LoadIdxDataset(images, labels, options);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->size(), 3);
  ASSERT_EQ(data->dim(), 4);
  EXPECT_EQ(data->num_classes, 10);
  EXPECT_EQ(data->labels, std::vector<int>({3, 0, 9}));
  for (int i = 0; i < 12; ++i) {
    EXPECT_FLOAT_EQ(data->features.data()[i], kPixels[i] / 255.0f) << i;
  }
}

TEST_F(IdxLoaderTest, StandardisesWithTheFashionMnistStatisticsByDefault) {
  const std::string images = WriteRaw("images", ImagesFile(3, 2, 2, kPixels));
  const std::string labels = WriteRaw("labels", LabelsFile(kLabels));
  const Dataset data = *LoadIdxDataset(images, labels);
  for (int i = 0; i < 12; ++i) {
    // One multiply-add in float versus the textbook formula: a few ulps of values <= 2.1.
    EXPECT_NEAR(data.features.data()[i], (kPixels[i] / 255.0 - 0.2860) / 0.3530, 1e-6) << i;
  }
}

TEST_F(IdxLoaderTest, DetectsGzipByContentNotByName) {
  // A gzip file without .gz and a raw file with it: the content decides.
  const std::string images = WriteGzip("images.idx", ImagesFile(3, 2, 2, kPixels));
  const std::string labels = WriteRaw("labels.gz", LabelsFile(kLabels));
  ASSERT_EQ(ReadRaw(images)[0], 0x1f);  // really compressed
  IdxLoadOptions options;
  options.normalization = kUnitIntervalPixels;
  absl::StatusOr<Dataset> data = LoadIdxDataset(images, labels, options);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->labels, std::vector<int>({3, 0, 9}));
  EXPECT_FLOAT_EQ(data->features(0, 1), 1.0f);
  EXPECT_FLOAT_EQ(data->features(2, 0), 1.0f);
}

TEST_F(IdxLoaderTest, MissingFileIsNotFoundNamingThePath) {
  const std::string labels = WriteRaw("labels", LabelsFile(kLabels));
  const std::string missing = (dir_ / "no-such-images").string();
  const absl::Status status = LoadIdxDataset(missing, labels).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(status, missing)) << status;
}

TEST_F(IdxLoaderTest, TruncatedDataIsDataLossWithExpectedAndFoundBytes) {
  Bytes file = ImagesFile(3, 2, 2, kPixels);
  file.erase(file.end() - 5, file.end());  // 7 of the 12 pixel bytes remain
  const std::string images = WriteRaw("images", file);
  const std::string labels = WriteRaw("labels", LabelsFile(kLabels));
  const absl::Status status = LoadIdxDataset(images, labels).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(status, images)) << status;
  EXPECT_TRUE(Contains(status, "12 data bytes, found 7")) << status;

  const std::string good_images = WriteRaw("good", ImagesFile(3, 2, 2, kPixels));
  const std::string short_header = WriteRaw("short", {0, 0, 8, 1, 0, 0});
  const absl::Status header_status = LoadIdxDataset(good_images, short_header).status();
  EXPECT_EQ(header_status.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(header_status, "expected a 8-byte header, found 6 bytes")) << header_status;
}

TEST_F(IdxLoaderTest, TruncatedGzipStreamIsDataLoss) {
  // Incompressible pixels so that cutting the compressed file loses pixel data.
  Bytes pixels(100 * 28 * 28);
  uint32_t state = 12345;
  for (uint8_t& p : pixels) p = static_cast<uint8_t>((state = state * 1664525u + 1013904223u) >> 24);
  const std::string full = WriteGzip("full.gz", ImagesFile(100, 28, 28, pixels));
  Bytes compressed = ReadRaw(full);
  compressed.resize(compressed.size() / 2);
  const std::string images = WriteRaw("cut.gz", compressed);
  const std::string labels = WriteRaw("labels", LabelsFile(Bytes(100, 1)));
  const absl::Status status = LoadIdxDataset(images, labels).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(status, images)) << status;
  EXPECT_TRUE(Contains(status, "78400 data bytes")) << status;
}

TEST_F(IdxLoaderTest, WrongMagicSaysWhatWasFoundAndExpected) {
  const std::string labels = WriteRaw("labels", LabelsFile(kLabels));
  // The labels file given as the images file.
  absl::Status status = LoadIdxDataset(labels, labels).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status, labels)) << status;
  EXPECT_TRUE(Contains(status, "magic 0x00000801 (that is a labels file)")) << status;
  EXPECT_TRUE(Contains(status, "expected 0x00000803")) << status;

  const std::string images = WriteRaw("images", ImagesFile(3, 2, 2, kPixels));
  const std::string bad = WriteRaw("bad", LabelsFile(kLabels, 0x12345678));
  status = LoadIdxDataset(images, bad).status();
  EXPECT_TRUE(Contains(status, "magic 0x12345678: expected 0x00000801")) << status;
}

TEST_F(IdxLoaderTest, RefusesCountMismatchOutOfRangeLabelsAndTrailingBytes) {
  const std::string images = WriteRaw("images", ImagesFile(3, 2, 2, kPixels));
  const std::string two_labels = WriteRaw("two", LabelsFile({1, 2}));
  absl::Status status = LoadIdxDataset(images, two_labels).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status, images) && Contains(status, two_labels)) << status;
  EXPECT_TRUE(Contains(status, "3 images") && Contains(status, "2 labels")) << status;

  const std::string big_label = WriteRaw("big", LabelsFile({1, 10, 2}));
  status = LoadIdxDataset(images, big_label).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status, big_label) && Contains(status, "label[1] = 10")) << status;

  Bytes trailing = LabelsFile(kLabels);
  trailing.push_back(0);
  const std::string long_labels = WriteRaw("long", trailing);
  status = LoadIdxDataset(images, long_labels).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status, "trailing bytes")) << status;

  // A corrupt count must not make the loader allocate gigabytes.
  const std::string huge = WriteRaw("huge", ImagesFile(0xFFFFFFFF, 28, 28, kPixels));
  status = LoadIdxDataset(huge, long_labels).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status, "implausible")) << status;
}

TEST_F(IdxLoaderTest, LoadFashionMnistFindsPlainOrGzipFilesByName) {
  WriteRaw("t10k-images-idx3-ubyte", ImagesFile(3, 2, 2, kPixels));
  WriteGzip("t10k-labels-idx1-ubyte.gz", LabelsFile(kLabels));
  absl::StatusOr<Dataset> test = LoadFashionMnist(dir_.string(), /*train=*/false);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_EQ(test->size(), 3);
  const absl::Status missing = LoadFashionMnist(dir_.string(), /*train=*/true).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing, "train-images-idx3-ubyte.gz")) << missing;
}

// The real data set from Debian's dataset-fashion-mnist, if installed. Also measures the
// pixel statistics kFashionMnistNormalization records.
TEST(FashionMnist, RealFilesHaveTheExpectedSizesAndStatistics) {
  const std::string dir(kDefaultFashionMnistDir);
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << dir << " not installed";
  IdxLoadOptions raw;
  raw.normalization = kUnitIntervalPixels;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Dataset> train = LoadFashionMnist(dir, /*train=*/true, raw);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_EQ(train->size(), 60000);
  EXPECT_EQ(train->dim(), 784);
  EXPECT_EQ(train->num_classes, 10);
  std::vector<int> counts(10, 0);
  for (int label : train->labels) ++counts[label];
  for (int c = 0; c < 10; ++c) EXPECT_EQ(counts[c], 6000) << "class " << c;
  double sum = 0.0, sum_squares = 0.0;
  const float* pixels = train->features.data();
  for (Eigen::Index i = 0; i < train->features.size(); ++i) {
    sum += pixels[i];
    sum_squares += static_cast<double>(pixels[i]) * pixels[i];
  }
  const double count = static_cast<double>(train->features.size());
  const double mean = sum / count;
  const double stddev = std::sqrt(sum_squares / count - mean * mean);
  std::printf("Fashion-MNIST train: loaded in %.3f s; pixel mean %.5f, stddev %.5f\n", seconds,
              mean, stddev);
  EXPECT_NEAR(mean, kFashionMnistNormalization.mean, 5e-4);
  EXPECT_NEAR(stddev, kFashionMnistNormalization.stddev, 5e-4);

  absl::StatusOr<Dataset> test = LoadFashionMnist(dir, /*train=*/false);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_EQ(test->size(), 10000);
  EXPECT_EQ(test->dim(), 784);
  // Standardised with the training statistics, the test set is close to mean 0, stddev 1.
  EXPECT_NEAR(test->features.mean(), 0.0, 0.02);
}

}  // namespace
}  // namespace dion
