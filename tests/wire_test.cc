// Conversion between wire messages and server types (server/wire.h): tensor layout, every
// malformed tensor, the parameter table with defaults, contributions and version updates.
#include "server/wire.h"

#include <gtest/gtest.h>


#include <cstring>
#include <limits>
#include <string>

#include "common/dion.h"
#include "common/layout.h"

namespace dion {
namespace {

v1::Tensor RawTensor(std::vector<int64_t> shape, const std::vector<float>& values) {
  v1::Tensor t;
  for (int64_t d : shape) t.add_shape(d);
  t.set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
  return t;
}

void ExpectInvalid(const absl::StatusOr<Matrix>& result, absl::string_view message_part) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find(message_part), absl::string_view::npos)
      << result.status();
}

TEST(Wire, TensorIsLittleEndianFloat32RowMajor) {
  // Bytes written by hand: 1.0f = 0x3f800000, -2.0f = 0xc0000000, little-endian.
  v1::Tensor t;
  t.add_shape(2);
  t.add_shape(2);
  const unsigned char bytes[16] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x80, 0x3f};
  t.set_data(std::string(reinterpret_cast<const char*>(bytes), 16));
  const Matrix M = *TensorToMatrix(t, "t");
  EXPECT_EQ(M(0, 0), 1.0f);
  EXPECT_EQ(M(0, 1), -2.0f);  // row-major: the second value is (0, 1)
  EXPECT_EQ(M(1, 0), 0.0f);
  EXPECT_EQ(M(1, 1), 1.0f);
}

TEST(Wire, TensorRoundTripIsBitExact) {
  Matrix M = Matrix::Random(5, 7);
  M(0, 0) = -0.0f;
  M(1, 1) = std::numeric_limits<float>::denorm_min();
  v1::Tensor t;
  MatrixToTensor(M, &t);
  ASSERT_EQ(t.shape_size(), 2);
  EXPECT_EQ(t.shape(0), 5);
  EXPECT_EQ(t.shape(1), 7);
  const Matrix back = *TensorToMatrix(t, "t");
  EXPECT_EQ(std::memcmp(back.data(), M.data(), M.size() * 4), 0);
  // A strided view is written as its contiguous copy.
  Matrix big = Matrix::Random(6, 9);
  MatrixToTensor(big.block(1, 2, 3, 4), &t);
  EXPECT_EQ(*TensorToMatrix(t, "t"), Matrix(big.block(1, 2, 3, 4)));
}

TEST(Wire, OneDimensionalTensorBecomesARowMatrix) {
  const Matrix M = *TensorToMatrix(RawTensor({3}, {1, 2, 3}), "bias");
  EXPECT_EQ(M.rows(), 1);
  EXPECT_EQ(M.cols(), 3);
  v1::Tensor t;
  const int64_t shape[1] = {3};
  MatrixToTensor(M, shape, &t);
  ASSERT_EQ(t.shape_size(), 1);
  EXPECT_EQ(t.shape(0), 3);
}

TEST(Wire, RefusesMalformedTensorsNamingTheProblem) {
  ExpectInvalid(TensorToMatrix(RawTensor({2, 3}, {1, 2, 3, 4, 5}), "P"),
                "20 bytes of data for shape [2, 3], expected 24");
  ExpectInvalid(TensorToMatrix(RawTensor({}, {}), "P"), "1 or 2 dimensions");
  ExpectInvalid(TensorToMatrix(RawTensor({1, 2, 2}, {1, 2, 3, 4}), "P"), "1 or 2 dimensions");
  ExpectInvalid(TensorToMatrix(RawTensor({2, 0}, {}), "P"), "dimension < 1");
  ExpectInvalid(TensorToMatrix(RawTensor({-1, 2}, {}), "P"), "dimension < 1");
  ExpectInvalid(TensorToMatrix(RawTensor({1 << 20, 1 << 20}, {}), "P"), "2^31");
  ExpectInvalid(TensorToMatrix(RawTensor({2, 2}, {1, 2, NAN, 4}), "P"), "element (1, 0)");
  ExpectInvalid(TensorToMatrix(RawTensor({1, 2}, {1, INFINITY}), "P"), "Inf are refused");
  ExpectInvalid(TensorToMatrix(RawTensor({1, 3}, {1, 2, 3}), std::vector<int64_t>{3}, "bias"),
                "shape [1, 3], expected [3]");
}

ParamSpec DionSpec() {
  ParamSpec spec;
  spec.name = "fc1.weight";
  spec.shape = {64, 32};
  spec.optimizer = OptimizerKind::kDion;
  spec.dion.lr = 0.02;
  spec.dion.rank_fraction = 0.125;
  spec.dion.rank_multiple_of = 4;
  spec.dion.power_iters = 2;
  spec.dion.ortho.method = OrthoMethod::kCqr2;
  spec.dion.ortho.seed = 0xfedcba9876543210ull;  // does not fit a double
  spec.init.kind = InitSpec::Kind::kNormal;
  spec.init.scale = 0.02;
  spec.init.seed = 99;
  return spec;
}

void ExpectSameSpec(const ParamSpec& a, const ParamSpec& b) {
  ModelFingerprint fa{"m", {a}, {std::nullopt}};
  ModelFingerprint fb{"m", {b}, {std::nullopt}};
  const absl::Status same = CompareModelTables(fa, fb);
  EXPECT_TRUE(same.ok()) << same;
}

TEST(Wire, ParameterSpecRoundTripsForEveryOptimizer) {
  std::vector<ParamSpec> specs = {DionSpec()};
  ParamSpec adamw;
  adamw.name = "b";
  adamw.shape = {32};
  adamw.optimizer = OptimizerKind::kAdamW;
  adamw.adamw.beta2 = 0.999;
  specs.push_back(adamw);
  ParamSpec lion = adamw;
  lion.optimizer = OptimizerKind::kLion;
  lion.lion.lr = 3e-4;
  specs.push_back(lion);
  ParamSpec muon = DionSpec();
  muon.optimizer = OptimizerKind::kMuon;
  muon.muon.nesterov = false;
  muon.muon.ns_steps = 4;
  specs.push_back(muon);
  for (const ParamSpec& spec : specs) {
    v1::ParameterSpec proto;
    ParameterToProto(spec, &proto);
    const absl::StatusOr<ParameterDefinition> back = ParameterFromProto(proto);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_FALSE(back->initial_value.has_value());
    ExpectSameSpec(spec, back->spec);
    EXPECT_EQ(back->spec.rank(), spec.rank());
  }
}

TEST(Wire, UnsetHyperparametersTakeTheDefaultsOfCommon) {
  v1::ParameterSpec proto;
  proto.set_name("w");
  proto.add_shape(8);
  proto.add_shape(4);
  proto.set_optimizer(v1::OPTIMIZER_KIND_DION);
  proto.mutable_dion()->set_mu(0.9);  // only this one set
  const ParamSpec spec = ParameterFromProto(proto)->spec;
  const DionConfig defaults;
  EXPECT_EQ(spec.dion.mu, 0.9);
  EXPECT_EQ(spec.dion.lr, defaults.lr);
  EXPECT_EQ(spec.dion.rank_fraction, defaults.rank_fraction);
  EXPECT_EQ(spec.dion.ortho.method, OrthoMethod::kAuto);
  EXPECT_EQ(spec.init.kind, InitSpec::Kind::kZeros);
  // No hyper-parameter message at all: every default.
  proto.clear_dion();
  EXPECT_EQ(ParameterFromProto(proto)->spec.dion.mu, defaults.mu);
}

TEST(Wire, RefusesInconsistentParameterSpecs) {
  v1::ParameterSpec proto;
  ParameterToProto(DionSpec(), &proto);

  v1::ParameterSpec unspecified = proto;
  unspecified.set_optimizer(v1::OPTIMIZER_KIND_UNSPECIFIED);
  EXPECT_EQ(ParameterFromProto(unspecified).status().code(), absl::StatusCode::kInvalidArgument);

  v1::ParameterSpec mismatched = proto;
  mismatched.set_optimizer(v1::OPTIMIZER_KIND_ADAMW);  // still carries dion hyper-parameters
  const auto status = ParameterFromProto(mismatched).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("hyper-parameters for dion"), absl::string_view::npos);

  v1::ParameterSpec one_d_dion = proto;
  one_d_dion.clear_shape();
  one_d_dion.add_shape(64);
  EXPECT_EQ(ParameterFromProto(one_d_dion).status().code(), absl::StatusCode::kInvalidArgument);

  v1::ParameterSpec bad_value = proto;
  *bad_value.mutable_initial_value() = RawTensor({32, 64}, std::vector<float>(32 * 64, 0.f));
  const auto value_status = ParameterFromProto(bad_value).status();
  EXPECT_EQ(value_status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(value_status.message().find("expected [64, 32]"), absl::string_view::npos);

  v1::ParameterSpec good_value = proto;
  *good_value.mutable_initial_value() = RawTensor({64, 32}, std::vector<float>(64 * 32, 0.5f));
  const auto definition = ParameterFromProto(good_value);
  ASSERT_TRUE(definition.ok()) << definition.status();
  EXPECT_EQ(*definition->initial_value, Matrix::Constant(64, 32, 0.5f));
}

TEST(Wire, ModelTableRefusesRepeatedNames) {
  v1::RegisterModelRequest request;
  request.set_model_name("m");
  ParameterToProto(DionSpec(), request.add_parameters());
  ParameterToProto(DionSpec(), request.add_parameters());
  const auto table = ModelTableFromProto(request);
  EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(table.status().message().find("twice"), absl::string_view::npos);
  request.mutable_parameters()->RemoveLast();
  ASSERT_TRUE(ModelTableFromProto(request).ok());
}

TEST(Wire, SplitOwnersRoundTripAndArePartOfTheTable) {
  ParamSpec split = DionSpec();
  split.split_owners = 3;
  v1::ParameterSpec proto;
  ParameterToProto(split, &proto);
  EXPECT_EQ(proto.split_owners(), 3u);
  const absl::StatusOr<ParameterDefinition> back = ParameterFromProto(proto);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->spec.split_owners, 3);

  ParamSpec other = split;
  other.split_owners = 2;
  const absl::Status differs =
      CompareModelTables({"m", {split}, {std::nullopt}}, {"m", {other}, {std::nullopt}});
  EXPECT_EQ(differs.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(differs.message().find("field split_owners is 3 in the registered table but 2"),
            absl::string_view::npos)
      << differs;
  ParamSpec zero = DionSpec(), one = DionSpec();
  one.split_owners = 1;
  ExpectSameSpec(zero, one);  // both whole

  proto.set_split_owners(kMaxSplitOwners + 1);
  const absl::Status too_many = ParameterFromProto(proto).status();
  EXPECT_EQ(too_many.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.message().find("split_owners must be in [0, 65536]"), absl::string_view::npos)
      << too_many;
}

TEST(Wire, LayoutCarriesTheRowOwnersOfSplitParameters) {
  ParamSpec split = DionSpec();  // 64 x 32: 64 rows on the tall side
  split.split_owners = 2;
  ParamSpec bias;
  bias.name = "fc1.bias";
  bias.shape = {64};
  const Layout layout = *Layout::Compute({split, bias}, 2);
  v1::Layout proto;
  LayoutToProto(layout, &proto);
  ASSERT_EQ(proto.placements_size(), 2);
  const v1::Layout::Placement& w = proto.placements(0);
  EXPECT_EQ(w.parameter(), "fc1.weight");
  EXPECT_EQ(w.shard(), 0u);
  ASSERT_EQ(w.row_owners_size(), 2);
  EXPECT_EQ(w.row_owners(0).shard(), 0u);
  EXPECT_EQ(w.row_owners(0).row_begin(), 0);
  EXPECT_EQ(w.row_owners(0).row_end(), 32);
  EXPECT_EQ(w.row_owners(1).shard(), 1u);
  EXPECT_EQ(w.row_owners(1).row_begin(), 32);
  EXPECT_EQ(w.row_owners(1).row_end(), 64);
  EXPECT_EQ(proto.placements(1).row_owners_size(), 0);
}

Contribution FactorsContribution() {
  Contribution c;
  c.worker_id = "w3";
  c.sequence = 17;
  c.parameter = "fc1.weight";
  c.base_version = 4;
  c.sample_count = 32;
  c.loss = 0.75;
  c.payload = LowRankFactors{Matrix::Random(64, 3), Matrix::Random(32, 3)};
  return c;
}

TEST(Wire, ContributionRoundTrips) {
  const Contribution c = FactorsContribution();
  v1::Contribution proto;
  ContributionToProto(c, &proto);
  const absl::StatusOr<Contribution> back = ContributionFromProto(proto);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->worker_id, "w3");
  EXPECT_EQ(back->sequence, 17u);
  EXPECT_EQ(back->base_version, 4);
  EXPECT_EQ(back->sample_count, 32);
  EXPECT_EQ(back->loss, 0.75);
  ASSERT_TRUE(back->is_low_rank());
  EXPECT_EQ(back->factors().P, c.factors().P);
  EXPECT_EQ(back->factors().R, c.factors().R);

  Contribution dense = c;
  dense.payload = Matrix(Matrix::Random(1, 5));
  const int64_t shape[1] = {5};
  ContributionToProto(dense, &proto, shape);
  ParamSpec bias;
  bias.name = "fc1.weight";
  bias.shape = {5};
  const auto dense_back = ContributionFromProto(proto, &bias);
  ASSERT_TRUE(dense_back.ok()) << dense_back.status();
  EXPECT_EQ(dense_back->gradient(), dense.gradient());
}

TEST(Wire, RefusesMalformedContributions) {
  v1::Contribution proto;
  ContributionToProto(FactorsContribution(), &proto);

  v1::Contribution empty = proto;
  empty.clear_payload();
  EXPECT_NE(ContributionFromProto(empty).status().message().find("neither"),
            absl::string_view::npos);

  v1::Contribution ranks = proto;
  *ranks.mutable_factors()->mutable_r() = RawTensor({32, 2}, std::vector<float>(64, 1.f));
  EXPECT_NE(ContributionFromProto(ranks).status().message().find("rank r"),
            absl::string_view::npos);

  v1::Contribution nan = proto;
  std::string* data = nan.mutable_factors()->mutable_p()->mutable_data();
  const float bad = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(data->data() + 4 * 5, &bad, 4);
  const auto nan_status = ContributionFromProto(nan).status();
  EXPECT_EQ(nan_status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(nan_status.message().find("P: element (1, 2)"), absl::string_view::npos)
      << nan_status;
  EXPECT_TRUE(IsNonFiniteError(nan_status));
  EXPECT_FALSE(IsNonFiniteError(ContributionFromProto(ranks).status()));
  EXPECT_FALSE(IsNonFiniteError(ContributionFromProto(empty).status()));

  v1::Contribution loss = proto;
  loss.set_loss(std::numeric_limits<double>::infinity());
  EXPECT_NE(ContributionFromProto(loss).status().message().find("loss"),
            absl::string_view::npos);
  EXPECT_TRUE(IsNonFiniteError(ContributionFromProto(loss).status()));

  // A {1, 5} gradient for a parameter of shape {5} is refused when the spec is known.
  v1::Contribution dense = proto;
  *dense.mutable_gradient() = RawTensor({1, 5}, {1, 2, 3, 4, 5});
  ParamSpec bias;
  bias.name = "b";
  bias.shape = {5};
  EXPECT_NE(ContributionFromProto(dense, &bias).status().message().find("expected [5]"),
            absl::string_view::npos);
}

TEST(Wire, VersionUpdateRoundTripsBothContents) {
  VersionUpdate step;
  step.parameter = "fc1.weight";
  step.version = 12;
  step.checksum = 0x0123456789abcdefull;
  step.content = LowRankStep{0.999f, 0.01f, Matrix::Random(64, 4), Matrix::Random(32, 4), true};
  v1::VersionUpdate proto;
  const int64_t shape[2] = {32, 64};
  VersionUpdateToProto(step, shape, &proto);
  const VersionUpdate back = *VersionUpdateFromProto(proto);
  EXPECT_EQ(back.version, 12);
  EXPECT_EQ(back.checksum, 0x0123456789abcdefull);
  ASSERT_TRUE(back.is_low_rank());
  const LowRankStep& s = std::get<LowRankStep>(back.content);
  EXPECT_EQ(s.decay, 0.999f);
  EXPECT_EQ(s.scale, 0.01f);
  EXPECT_TRUE(s.transposed);
  EXPECT_EQ(s.P, std::get<LowRankStep>(step.content).P);

  VersionUpdate full;
  full.parameter = "b";
  full.version = 3;
  full.content = Matrix(Matrix::Random(1, 6));
  const int64_t bias_shape[1] = {6};
  VersionUpdateToProto(full, bias_shape, &proto);
  EXPECT_EQ(proto.value().shape_size(), 1);
  EXPECT_EQ(std::get<Matrix>(VersionUpdateFromProto(proto)->content),
            std::get<Matrix>(full.content));
}

TEST(Wire, SnapshotCarriesTheOptimizerStateWhenAsked) {
  ParameterSnapshot snapshot;
  snapshot.spec = DionSpec();
  snapshot.version = 7;
  snapshot.checksum = 42;
  snapshot.X = Matrix::Random(64, 32);
  v1::ParameterValue proto;
  SnapshotToProto(snapshot, &proto);
  EXPECT_EQ(proto.optimizer_state_case(), v1::ParameterValue::OPTIMIZER_STATE_NOT_SET);
  DionState state = InitDionState(64, 32, 4, 1);
  state.step = 7;
  snapshot.state = state;
  SnapshotToProto(snapshot, &proto);
  ASSERT_TRUE(proto.has_dion());
  EXPECT_EQ(proto.dion().step(), 7);
  EXPECT_EQ(*TensorToMatrix(proto.dion().q(), "Q"), state.Q);
  EXPECT_EQ(*TensorToMatrix(proto.dion().momentum(), "M"), state.M);
  EXPECT_EQ(*TensorToMatrix(proto.value(), "X"), snapshot.X);
}

}  // namespace
}  // namespace dion
