#include "server/wire.h"

#include <variant>
#include <vector>

namespace dion {

void SnapshotToProto(const ParameterSnapshot& snapshot, v1::ParameterValue* proto) {
  proto->Clear();
  proto->set_parameter(snapshot.spec.name);
  proto->set_version(snapshot.version);
  proto->set_checksum(snapshot.checksum);
  // A split parameter's block travels in its own shape (proto: ParameterValue.row_begin).
  const bool block = snapshot.rows.size() > 0;
  const std::vector<int64_t> shape =
      block ? std::vector<int64_t>{snapshot.X.rows(), snapshot.X.cols()} : snapshot.spec.shape;
  if (block) {
    proto->set_row_begin(snapshot.rows.begin);
    proto->set_row_end(snapshot.rows.end);
  }
  MatrixToTensor(snapshot.X, shape, proto->mutable_value());
  if (!snapshot.state.has_value()) return;
  if (const DionState* s = std::get_if<DionState>(&*snapshot.state)) {
    MatrixToTensor(s->M, shape, proto->mutable_dion()->mutable_momentum());
    MatrixToTensor(s->Q, proto->mutable_dion()->mutable_q());
    proto->mutable_dion()->set_step(s->step);
  } else if (const AdamWState* s = std::get_if<AdamWState>(&*snapshot.state)) {
    MatrixToTensor(s->m, shape, proto->mutable_adamw()->mutable_m());
    MatrixToTensor(s->v, shape, proto->mutable_adamw()->mutable_v());
    proto->mutable_adamw()->set_step(s->step);
  } else if (const LionState* s = std::get_if<LionState>(&*snapshot.state)) {
    MatrixToTensor(s->m, shape, proto->mutable_lion()->mutable_m());
    proto->mutable_lion()->set_step(s->step);
  } else if (const MuonState* s = std::get_if<MuonState>(&*snapshot.state)) {
    MatrixToTensor(s->M, shape, proto->mutable_muon()->mutable_momentum());
    proto->mutable_muon()->set_step(s->step);
  }
}

}  // namespace dion
