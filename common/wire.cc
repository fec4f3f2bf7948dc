#include "common/wire.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dion {
namespace {

static_assert(std::endian::native == std::endian::little,
              "tensors travel as little-endian float32; add a byte swap for this host");

constexpr int64_t kMaxElements = 2147483647;  // 2^31 - 1, as ValidateParamSpec

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status CheckFinite(const Matrix& M, absl::string_view what) {
  if (M.allFinite()) return absl::OkStatus();
  for (int64_t i = 0; i < M.rows(); ++i) {
    for (int64_t j = 0; j < M.cols(); ++j) {
      if (!std::isfinite(M(i, j))) {
        return NonFiniteError(absl::StrCat(what, ": element (", i, ", ", j, ") is ", M(i, j),
                                           "; NaN and Inf are refused"));
      }
    }
  }
  return absl::OkStatus();
}

// The tensor rule of the file comment; `expected_shape` (unless empty) must match exactly, and
// the values are checked for NaN and Inf only with PayloadValues::kCheck.
absl::StatusOr<Matrix> DecodeTensor(const v1::Tensor& tensor,
                                    absl::Span<const int64_t> expected_shape,
                                    absl::string_view what, PayloadValues values) {
  const auto& shape = tensor.shape();
  if (!expected_shape.empty() &&
      !std::equal(shape.begin(), shape.end(), expected_shape.begin(), expected_shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", ShapeString(shape),
                                                   ", expected ", ShapeString(expected_shape)));
  }
  if (shape.empty() || shape.size() > 2) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", ShapeString(shape),
                                                   " must have 1 or 2 dimensions"));
  }
  int64_t elements = 1;
  for (int64_t d : shape) {
    if (d < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shape ", ShapeString(shape), " has a dimension < 1"));
    }
    if (d > kMaxElements / elements) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": shape ", ShapeString(shape), " has more than 2^31 - 1 elements"));
    }
    elements *= d;
  }
  const int64_t expected_bytes = 4 * elements;
  if (static_cast<int64_t>(tensor.data().size()) != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", tensor.data().size(), " bytes of data for shape ", ShapeString(shape),
        ", expected ", expected_bytes, " (float32)"));
  }
  const int64_t rows = shape.size() == 2 ? shape[0] : 1;
  const int64_t cols = shape[shape.size() - 1];
  Matrix M(rows, cols);
  std::memcpy(M.data(), tensor.data().data(), expected_bytes);
  if (values == PayloadValues::kCheck) {
    if (absl::Status s = CheckFinite(M, what); !s.ok()) return s;
  }
  return M;
}

absl::StatusOr<OrthoMethod> OrthoMethodFromProto(v1::OrthoMethod method) {
  switch (method) {
    case v1::ORTHO_METHOD_UNSPECIFIED:
    case v1::ORTHO_METHOD_AUTO: return OrthoMethod::kAuto;
    case v1::ORTHO_METHOD_QR: return OrthoMethod::kQr;
    case v1::ORTHO_METHOD_CQR: return OrthoMethod::kCqr;
    case v1::ORTHO_METHOD_CQR2: return OrthoMethod::kCqr2;
    case v1::ORTHO_METHOD_RCQR: return OrthoMethod::kRcqr;
    default: break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown orthonormalization method ", static_cast<int>(method)));
}

v1::OrthoMethod OrthoMethodToProto(OrthoMethod method) {
  switch (method) {
    case OrthoMethod::kAuto: return v1::ORTHO_METHOD_AUTO;
    case OrthoMethod::kQr: return v1::ORTHO_METHOD_QR;
    case OrthoMethod::kCqr: return v1::ORTHO_METHOD_CQR;
    case OrthoMethod::kCqr2: return v1::ORTHO_METHOD_CQR2;
    case OrthoMethod::kRcqr: return v1::ORTHO_METHOD_RCQR;
  }
  return v1::ORTHO_METHOD_UNSPECIFIED;
}

absl::StatusOr<InitSpec::Kind> InitKindFromProto(v1::InitKind kind) {
  switch (kind) {
    case v1::INIT_KIND_UNSPECIFIED:
    case v1::INIT_KIND_ZEROS: return InitSpec::Kind::kZeros;
    case v1::INIT_KIND_NORMAL: return InitSpec::Kind::kNormal;
    case v1::INIT_KIND_KAIMING: return InitSpec::Kind::kKaiming;
    case v1::INIT_KIND_EXPLICIT:
      // GetLayout's marker for an explicit value it does not send; registering its output
      // verbatim must not silently start such a parameter from zeros.
      return absl::InvalidArgumentError(
          "init kind EXPLICIT only marks, in GetLayout, a parameter registered with an "
          "initial_value; to register one, set initial_value instead");
    default: break;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown init kind ", static_cast<int>(kind)));
}

v1::InitKind InitKindToProto(InitSpec::Kind kind) {
  switch (kind) {
    case InitSpec::Kind::kZeros: return v1::INIT_KIND_ZEROS;
    case InitSpec::Kind::kNormal: return v1::INIT_KIND_NORMAL;
    case InitSpec::Kind::kKaiming: return v1::INIT_KIND_KAIMING;
  }
  return v1::INIT_KIND_UNSPECIFIED;
}

// Unset optional fields keep the defaults already in `config`.
void DionFromProto(const v1::DionHyperparameters& h, DionConfig& c) {
  if (h.has_lr()) c.lr = h.lr();
  if (h.has_mu()) c.mu = h.mu();
  if (h.has_weight_decay()) c.weight_decay = h.weight_decay();
  if (h.has_eps()) c.eps = h.eps();
  if (h.has_power_iters()) c.power_iters = h.power_iters();
  if (h.has_rank_fraction()) c.rank_fraction = h.rank_fraction();
  if (h.has_rank_multiple_of()) c.rank_multiple_of = h.rank_multiple_of();
  if (h.has_ortho_oversample()) c.ortho.oversample = h.ortho_oversample();
  if (h.has_ortho_seed()) c.ortho.seed = h.ortho_seed();
}

void AdamWFromProto(const v1::AdamWHyperparameters& h, AdamWConfig& c) {
  if (h.has_lr()) c.lr = h.lr();
  if (h.has_beta1()) c.beta1 = h.beta1();
  if (h.has_beta2()) c.beta2 = h.beta2();
  if (h.has_eps()) c.eps = h.eps();
  if (h.has_weight_decay()) c.weight_decay = h.weight_decay();
}

void LionFromProto(const v1::LionHyperparameters& h, LionConfig& c) {
  if (h.has_lr()) c.lr = h.lr();
  if (h.has_beta1()) c.beta1 = h.beta1();
  if (h.has_beta2()) c.beta2 = h.beta2();
  if (h.has_weight_decay()) c.weight_decay = h.weight_decay();
}

void MuonFromProto(const v1::MuonHyperparameters& h, MuonConfig& c) {
  if (h.has_lr()) c.lr = h.lr();
  if (h.has_mu()) c.mu = h.mu();
  if (h.has_nesterov()) c.nesterov = h.nesterov();
  if (h.has_weight_decay()) c.weight_decay = h.weight_decay();
  if (h.has_ns_steps()) c.ns_steps = h.ns_steps();
}

// The optimizer whose hyper-parameter message is set, if any.
std::optional<OptimizerKind> HyperparameterKind(const v1::ParameterSpec& proto) {
  switch (proto.hyperparameters_case()) {
    case v1::ParameterSpec::kDion: return OptimizerKind::kDion;
    case v1::ParameterSpec::kAdamw: return OptimizerKind::kAdamW;
    case v1::ParameterSpec::kLion: return OptimizerKind::kLion;
    case v1::ParameterSpec::kMuon: return OptimizerKind::kMuon;
    case v1::ParameterSpec::HYPERPARAMETERS_NOT_SET: break;
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<Matrix> TensorToMatrix(const v1::Tensor& tensor, absl::string_view what) {
  return DecodeTensor(tensor, {}, what, PayloadValues::kCheck);
}

absl::StatusOr<Matrix> TensorToMatrix(const v1::Tensor& tensor,
                                      absl::Span<const int64_t> expected_shape,
                                      absl::string_view what) {
  return DecodeTensor(tensor, expected_shape, what, PayloadValues::kCheck);
}

void MatrixToTensor(ConstMatrixRef M, v1::Tensor* tensor) {
  const int64_t shape[2] = {M.rows(), M.cols()};
  MatrixToTensor(M, shape, tensor);
}

void MatrixToTensor(ConstMatrixRef M, absl::Span<const int64_t> shape, v1::Tensor* tensor) {
  tensor->clear_shape();
  for (int64_t d : shape) tensor->add_shape(d);
  std::string* data = tensor->mutable_data();
  if (M.size() == 0) {
    data->clear();
  } else if (M.outerStride() == M.cols()) {
    // One copy; resize-then-memcpy would write every byte twice (zero fill first).
    data->assign(reinterpret_cast<const char*>(M.data()), sizeof(float) * M.size());
  } else {
    data->resize(sizeof(float) * M.size());
    const size_t row_bytes = sizeof(float) * M.cols();
    for (int64_t i = 0; i < M.rows(); ++i) {
      std::memcpy(data->data() + i * row_bytes, M.row(i).data(), row_bytes);
    }
  }
}

absl::StatusOr<OptimizerKind> OptimizerKindFromProto(v1::OptimizerKind kind) {
  switch (kind) {
    case v1::OPTIMIZER_KIND_DION: return OptimizerKind::kDion;
    case v1::OPTIMIZER_KIND_ADAMW: return OptimizerKind::kAdamW;
    case v1::OPTIMIZER_KIND_LION: return OptimizerKind::kLion;
    case v1::OPTIMIZER_KIND_MUON: return OptimizerKind::kMuon;
    default: break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "optimizer kind ", static_cast<int>(kind), " is not one of dion, adamw, lion, muon"));
}

v1::OptimizerKind OptimizerKindToProto(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kDion: return v1::OPTIMIZER_KIND_DION;
    case OptimizerKind::kAdamW: return v1::OPTIMIZER_KIND_ADAMW;
    case OptimizerKind::kLion: return v1::OPTIMIZER_KIND_LION;
    case OptimizerKind::kMuon: return v1::OPTIMIZER_KIND_MUON;
  }
  return v1::OPTIMIZER_KIND_UNSPECIFIED;
}

absl::StatusOr<ParameterDefinition> ParameterFromProto(const v1::ParameterSpec& proto) {
  const auto error = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("parameter '", proto.name(), "': ", parts...));
  };
  ParameterDefinition definition;
  ParamSpec& spec = definition.spec;
  spec.name = proto.name();
  spec.shape.assign(proto.shape().begin(), proto.shape().end());
  absl::StatusOr<OptimizerKind> kind = OptimizerKindFromProto(proto.optimizer());
  if (!kind.ok()) return error(kind.status().message());
  spec.optimizer = *kind;

  if (std::optional<OptimizerKind> given = HyperparameterKind(proto);
      given.has_value() && *given != spec.optimizer) {
    return error("hyper-parameters for ", OptimizerKindName(*given), " given, but the optimizer is ",
                 OptimizerKindName(spec.optimizer));
  }
  switch (proto.hyperparameters_case()) {
    case v1::ParameterSpec::kDion: {
      DionFromProto(proto.dion(), spec.dion);
      absl::StatusOr<OrthoMethod> method = OrthoMethodFromProto(proto.dion().ortho_method());
      if (!method.ok()) return error(method.status().message());
      spec.dion.ortho.method = *method;
      break;
    }
    case v1::ParameterSpec::kAdamw: AdamWFromProto(proto.adamw(), spec.adamw); break;
    case v1::ParameterSpec::kLion: LionFromProto(proto.lion(), spec.lion); break;
    case v1::ParameterSpec::kMuon: MuonFromProto(proto.muon(), spec.muon); break;
    case v1::ParameterSpec::HYPERPARAMETERS_NOT_SET: break;
  }

  spec.init.seed = proto.seed();
  if (proto.split_owners() > static_cast<uint32_t>(kMaxSplitOwners)) {
    return error("split_owners must be in [0, ", kMaxSplitOwners, "], got ", proto.split_owners());
  }
  spec.split_owners = static_cast<int>(proto.split_owners());
  if (proto.has_init()) {
    absl::StatusOr<InitSpec::Kind> init_kind = InitKindFromProto(proto.init().kind());
    if (!init_kind.ok()) return error(init_kind.status().message());
    spec.init.kind = *init_kind;
    if (proto.init().has_scale()) spec.init.scale = proto.init().scale();
  }
  if (absl::Status s = ValidateParamSpec(spec); !s.ok()) return s;
  if (proto.has_initial_value()) {
    absl::StatusOr<Matrix> value = TensorToMatrix(
        proto.initial_value(), spec.shape, absl::StrCat("initial value of '", spec.name, "'"));
    if (!value.ok()) return value.status();
    definition.initial_value = *std::move(value);
  }
  return definition;
}

void ParameterToProto(const ParamSpec& spec, v1::ParameterSpec* proto) {
  proto->Clear();
  proto->set_name(spec.name);
  for (int64_t d : spec.shape) proto->add_shape(d);
  proto->set_optimizer(OptimizerKindToProto(spec.optimizer));
  switch (spec.optimizer) {
    case OptimizerKind::kDion: {
      const DionConfig& c = spec.dion;
      v1::DionHyperparameters* h = proto->mutable_dion();
      h->set_lr(c.lr);
      h->set_mu(c.mu);
      h->set_weight_decay(c.weight_decay);
      h->set_eps(c.eps);
      h->set_power_iters(c.power_iters);
      h->set_rank_fraction(c.rank_fraction);
      h->set_rank_multiple_of(c.rank_multiple_of);
      h->set_ortho_method(OrthoMethodToProto(c.ortho.method));
      h->set_ortho_oversample(c.ortho.oversample);
      h->set_ortho_seed(c.ortho.seed);
      break;
    }
    case OptimizerKind::kAdamW: {
      const AdamWConfig& c = spec.adamw;
      v1::AdamWHyperparameters* h = proto->mutable_adamw();
      h->set_lr(c.lr);
      h->set_beta1(c.beta1);
      h->set_beta2(c.beta2);
      h->set_eps(c.eps);
      h->set_weight_decay(c.weight_decay);
      break;
    }
    case OptimizerKind::kLion: {
      const LionConfig& c = spec.lion;
      v1::LionHyperparameters* h = proto->mutable_lion();
      h->set_lr(c.lr);
      h->set_beta1(c.beta1);
      h->set_beta2(c.beta2);
      h->set_weight_decay(c.weight_decay);
      break;
    }
    case OptimizerKind::kMuon: {
      const MuonConfig& c = spec.muon;
      v1::MuonHyperparameters* h = proto->mutable_muon();
      h->set_lr(c.lr);
      h->set_mu(c.mu);
      h->set_nesterov(c.nesterov);
      h->set_weight_decay(c.weight_decay);
      h->set_ns_steps(c.ns_steps);
      break;
    }
  }
  proto->mutable_init()->set_kind(InitKindToProto(spec.init.kind));
  proto->mutable_init()->set_scale(spec.init.scale);
  proto->set_seed(spec.init.seed);
  if (spec.split_owners >= 2) proto->set_split_owners(spec.split_owners);
}

absl::StatusOr<ModelTable> ModelTableFromProto(const v1::RegisterModelRequest& request) {
  ModelTable table;
  table.model_name = request.model_name();
  table.parameters.reserve(request.parameters_size());
  for (const v1::ParameterSpec& proto : request.parameters()) {
    absl::StatusOr<ParameterDefinition> definition = ParameterFromProto(proto);
    if (!definition.ok()) return definition.status();
    table.parameters.push_back(*std::move(definition));
  }
  if (absl::Status s = ValidateModelTable(table); !s.ok()) return s;
  return table;
}

void ModelTableToProto(const ModelTable& table, v1::RegisterModelRequest* request) {
  request->set_model_name(table.model_name);
  for (const ParameterDefinition& d : table.parameters) {
    v1::ParameterSpec* proto = request->add_parameters();
    ParameterToProto(d.spec, proto);
    if (!d.initial_value.has_value()) continue;
    MatrixToTensor(*d.initial_value, d.spec.shape, proto->mutable_initial_value());
  }
}

void LayoutToProto(const Layout& layout, v1::Layout* proto) {
  proto->Clear();
  proto->set_num_shards(layout.num_shards());
  for (const Placement& placement : layout.placements()) {
    v1::Layout::Placement* p = proto->add_placements();
    p->set_parameter(placement.parameter);
    p->set_shard(placement.shard);
    p->set_size(placement.size);
    for (const RowOwner& owner : placement.split) {
      v1::Layout::RowOwner* o = p->add_row_owners();
      o->set_shard(owner.shard);
      o->set_row_begin(owner.rows.begin);
      o->set_row_end(owner.rows.end);
    }
  }
}

absl::StatusOr<Contribution> ContributionFromProto(const v1::Contribution& proto,
                                                   const ParamSpec* spec, PayloadValues values) {
  const std::string where =
      absl::StrCat("contribution ", proto.sequence(), " of worker '", proto.worker_id(),
                   "' to '", proto.parameter(), "'");
  Contribution c;
  c.worker_id = proto.worker_id();
  c.sequence = proto.sequence();
  c.parameter = proto.parameter();
  c.base_version = proto.base_version();
  c.sample_count = proto.sample_count();
  c.loss = proto.loss();
  if (!std::isfinite(c.loss)) {
    return NonFiniteError(absl::StrCat(where, ": loss ", c.loss, " is not finite"));
  }
  switch (proto.payload_case()) {
    case v1::Contribution::kFactors: {
      absl::StatusOr<Matrix> P =
          DecodeTensor(proto.factors().p(), {}, absl::StrCat(where, ", P"), values);
      if (!P.ok()) return P.status();
      absl::StatusOr<Matrix> R =
          DecodeTensor(proto.factors().r(), {}, absl::StrCat(where, ", R"), values);
      if (!R.ok()) return R.status();
      if (proto.factors().p().shape_size() != 2 || proto.factors().r().shape_size() != 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": P and R must be 2-D (m x r and n x r)"));
      }
      if (P->cols() != R->cols()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": P has ", P->cols(), " columns but R has ", R->cols(),
            "; both must have rank r"));
      }
      c.payload = LowRankFactors{*std::move(P), *std::move(R)};
      break;
    }
    case v1::Contribution::kGradient: {
      absl::StatusOr<Matrix> G =
          DecodeTensor(proto.gradient(), spec != nullptr ? spec->shape : std::vector<int64_t>{},
                       absl::StrCat(where, ", gradient"), values);
      if (!G.ok()) return G.status();
      c.payload = *std::move(G);
      break;
    }
    case v1::Contribution::PAYLOAD_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": carries neither low-rank factors nor a gradient"));
  }
  return c;
}

void ContributionToProto(const Contribution& contribution, v1::Contribution* proto,
                         absl::Span<const int64_t> gradient_shape) {
  proto->Clear();
  proto->set_worker_id(contribution.worker_id);
  proto->set_sequence(contribution.sequence);
  proto->set_parameter(contribution.parameter);
  proto->set_base_version(contribution.base_version);
  proto->set_sample_count(contribution.sample_count);
  proto->set_loss(contribution.loss);
  if (contribution.is_low_rank()) {
    MatrixToTensor(contribution.factors().P, proto->mutable_factors()->mutable_p());
    MatrixToTensor(contribution.factors().R, proto->mutable_factors()->mutable_r());
  } else if (gradient_shape.empty()) {
    MatrixToTensor(contribution.gradient(), proto->mutable_gradient());
  } else {
    MatrixToTensor(contribution.gradient(), gradient_shape, proto->mutable_gradient());
  }
}

void VersionUpdateToProto(const VersionUpdate& update, absl::Span<const int64_t> shape,
                          v1::VersionUpdate* proto) {
  proto->Clear();
  proto->set_parameter(update.parameter);
  proto->set_version(update.version);
  proto->set_checksum(update.checksum);
  if (const LowRankStep* step = std::get_if<LowRankStep>(&update.content)) {
    v1::LowRankStep* s = proto->mutable_low_rank_step();
    s->set_decay(step->decay);
    s->set_scale(step->scale);
    MatrixToTensor(step->P, s->mutable_p());
    MatrixToTensor(step->Q, s->mutable_q());
    s->set_transposed(step->transposed);
  } else {
    MatrixToTensor(std::get<Matrix>(update.content), shape, proto->mutable_value());
  }
}

absl::StatusOr<VersionUpdate> VersionUpdateFromProto(const v1::VersionUpdate& proto) {
  const std::string where =
      absl::StrCat("version ", proto.version(), " of '", proto.parameter(), "'");
  VersionUpdate update;
  update.parameter = proto.parameter();
  update.version = proto.version();
  update.checksum = proto.checksum();
  switch (proto.content_case()) {
    case v1::VersionUpdate::kLowRankStep: {
      const v1::LowRankStep& s = proto.low_rank_step();
      absl::StatusOr<Matrix> P = TensorToMatrix(s.p(), absl::StrCat(where, ", P"));
      if (!P.ok()) return P.status();
      absl::StatusOr<Matrix> Q = TensorToMatrix(s.q(), absl::StrCat(where, ", Q"));
      if (!Q.ok()) return Q.status();
      if (P->cols() != Q->cols()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": P has ", P->cols(), " columns but Q has ", Q->cols()));
      }
      if (!std::isfinite(s.decay()) || !std::isfinite(s.scale())) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": decay or scale not finite"));
      }
      update.content = LowRankStep{s.decay(), s.scale(), *std::move(P), *std::move(Q),
                                   s.transposed()};
      break;
    }
    case v1::VersionUpdate::kValue: {
      absl::StatusOr<Matrix> value = TensorToMatrix(proto.value(), absl::StrCat(where, ", value"));
      if (!value.ok()) return value.status();
      update.content = *std::move(value);
      break;
    }
    case v1::VersionUpdate::CONTENT_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": carries neither a low-rank step nor a value"));
  }
  return update;
}

}  // namespace dion
