// The parameter table's half of common/wire.h: optimizer kinds, parameter specs with their
// hyper-parameters and init, model tables and layouts. Tensors, contributions and versions are
// in common/wire.cc.
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/wire.h"

namespace dion {
namespace {

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

}  // namespace dion
