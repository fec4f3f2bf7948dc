// Helper process of replica_cross_cpu_test: one side of a shard -> replica stream, run under
// whatever OpenBLAS kernel OPENBLAS_CORETYPE selects in its environment.
//
//   replica_cross_cpu_probe shard FILE VERSIONS   Dion-steps two parameters VERSIONS times as
//       a shard does (DionStep, whose power iteration and QR run on OpenBLAS) and writes what
//       it would broadcast to FILE: a full value at version 0, then each version's
//       VersionUpdate (wire form, 8-byte little-endian length before each message).
//   replica_cross_cpu_probe replica FILE           Follows FILE with one Replica per parameter
//       and prints `applied=N full=N mismatched=N other=N`.
// Both print first `sgemm=<hex>`, the checksum of one OpenBLAS sgemm on fixed operands: it
// shows whether the two processes really ran different OpenBLAS kernels.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "common/blas.h"
#include "common/checksum.h"
#include "common/dion.h"
#include "common/rng.h"
#include "common/wire.h"
#include "dion/v1/dion.pb.h"
#include "worker/client/replica.h"

namespace dion {
namespace {

// A tall parameter and a wide one (Dion on X^T), Dion's default rank fraction.
std::vector<ParamSpec> Specs() {
  std::vector<ParamSpec> specs(2);
  specs[0].name = "tall";
  specs[0].shape = {300, 96};
  specs[1].name = "wide";
  specs[1].shape = {64, 200};
  for (ParamSpec& spec : specs) spec.optimizer = OptimizerKind::kDion;
  return specs;
}

uint64_t SgemmFingerprint() {
  Matrix A(64, 48), B(48, 40), C = Matrix::Zero(64, 40);
  Rng(11).FillNormal(A);
  Rng(12).FillNormal(B);
  Gemm(Trans::kNo, Trans::kNo, 1.0f, A, B, 0.0f, C);
  return WeightsChecksum(C);
}

bool Write(std::ofstream& out, const VersionUpdate& update, const ParamSpec& spec) {
  v1::VersionUpdate proto;
  VersionUpdateToProto(update, spec.shape, &proto);
  const std::string bytes = proto.SerializeAsString();
  const uint64_t length = bytes.size();
  out.write(reinterpret_cast<const char*>(&length), sizeof length);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(out);
}

int Shard(const std::string& path, int versions) {
  std::ofstream out(path, std::ios::binary);
  const std::vector<ParamSpec> specs = Specs();
  std::vector<Matrix> X;
  std::vector<DionState> state;
  for (size_t p = 0; p < specs.size(); ++p) {
    const int64_t m = specs[p].rows(), n = specs[p].cols();
    X.push_back(Matrix(m, n));
    Rng(100 + p).FillNormal(X[p]);
    state.push_back(InitDionState(m, n, specs[p].rank(), 200 + p));
    if (!Write(out, VersionUpdate{specs[p].name, 0, WeightsChecksum(X[p]), X[p]}, specs[p])) {
      return 1;
    }
  }
  Rng gradients(300);
  for (int v = 1; v <= versions; ++v) {
    for (size_t p = 0; p < specs.size(); ++p) {
      Matrix G(X[p].rows(), X[p].cols());
      gradients.FillNormal(G);
      absl::StatusOr<DionStepResult> step = DionStep(X[p], G, state[p], specs[p].dion);
      if (!step.ok()) return 1;
      VersionUpdate update{specs[p].name, v, WeightsChecksum(X[p]), X[p]};
      if (step->applied) {
        update.content = LowRankStep{step->decay, step->scale, std::move(step->P),
                                     std::move(step->Q), step->transposed};
      }
      if (!Write(out, update, specs[p])) return 1;
    }
  }
  return out.good() ? 0 : 1;
}

int Follow(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<ParamSpec> specs = Specs();
  std::vector<Replica> replicas;
  for (const ParamSpec& spec : specs) replicas.emplace_back(spec);
  int applied = 0, full = 0, mismatched = 0, other = 0;
  uint64_t length = 0;
  while (in.read(reinterpret_cast<char*>(&length), sizeof length)) {
    std::string bytes(length, '\0');
    v1::VersionUpdate proto;
    if (!in.read(bytes.data(), static_cast<std::streamsize>(length)) ||
        !proto.ParseFromString(bytes)) {
      return 1;
    }
    absl::StatusOr<VersionUpdate> update = VersionUpdateFromProto(proto);
    if (!update.ok()) return 1;
    Replica& replica = replicas[update->parameter == specs[0].name ? 0 : 1];
    absl::StatusOr<ReplicaEvent> event = replica.Apply(*update);
    if (!event.ok()) return 1;
    if (*event == ReplicaEvent::kApplied) ++applied;
    else if (*event == ReplicaEvent::kReplaced) ++full;
    else if (*event == ReplicaEvent::kChecksumMismatch) ++mismatched;
    else ++other;
  }
  std::printf("applied=%d full=%d mismatched=%d other=%d\n", applied, full, mismatched, other);
  return 0;
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  int versions = 0;
  if (!((mode == "shard" && argc == 4 && absl::SimpleAtoi(argv[3], &versions)) ||
        (mode == "replica" && argc == 3))) {
    std::fprintf(stderr, "usage: %s shard FILE VERSIONS | replica FILE\n", argv[0]);
    return 2;
  }
  std::printf("sgemm=%llx\n", static_cast<unsigned long long>(dion::SgemmFingerprint()));
  return mode == "shard" ? dion::Shard(argv[2], versions) : dion::Follow(argv[2]);
}
