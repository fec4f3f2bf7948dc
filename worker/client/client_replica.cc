// Client, the replica side: applying the shards' broadcasts, resyncing a replica that lost
// track, and the change notification that Flush and WaitForVersionsAbove wait on. The
// connection and the push path are in client.cc.
#include "worker/client/client.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/wire.h"
#include "worker/client/client_parameter.h"
#include "worker/client/shard_link.h"

namespace dion {

int64_t Client::CopyWeights(std::vector<Matrix>* weights, double lookahead) const {
  weights->resize(parameters_.size());
  int64_t versions = 0;
  for (const auto& p : parameters_) {
    MutexLock lock(&p->replica_mu);
    p->replica.Extrapolate(lookahead, &(*weights)[p->index]);
    versions += p->replica.version();
  }
  return versions;
}

absl::StatusOr<int64_t> Client::CopyWeightsInto(absl::Span<MatrixRef> weights,
                                                double lookahead) const {
  if (weights.size() != parameters_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("CopyWeightsInto got ", weights.size(),
                                                   " views, expected ", parameters_.size(),
                                                   " (one per parameter, in table order)"));
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i].rows() != specs_[i].rows() || weights[i].cols() != specs_[i].cols()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "view of '", specs_[i].name, "' is ", weights[i].rows(), " x ", weights[i].cols(),
          ", expected ", specs_[i].rows(), " x ", specs_[i].cols()));
    }
  }
  int64_t versions = 0;
  for (const auto& p : parameters_) {
    MutexLock lock(&p->replica_mu);
    p->replica.Extrapolate(lookahead, weights[p->index]);
    versions += p->replica.version();
  }
  return versions;
}

int64_t Client::version(int index) const {
  const Parameter& p = *parameters_.at(index);
  MutexLock lock(&p.replica_mu);
  return p.replica.version();
}

void Client::OnUpdate(int shard, v1::VersionUpdate& message) {
  absl::StatusOr<VersionUpdate> update = VersionUpdateFromProto(message);
  if (!update.ok()) {
    Fail(absl::DataLossError(absl::StrCat("shard ", shard, " sent a malformed version: ",
                                          update.status().message())));
    return;
  }
  Parameter* p = Find(update->parameter);
  if (p == nullptr || !p->HeldBy(shard)) return;
  CountReceived(*p, static_cast<int64_t>(message.ByteSizeLong()));
  if (!(update->rows == *p->BlockOf(shard))) {  // another owner's rows: not this shard's part
    Resync(*p, shard, "malformed_update");
    return;
  }
  absl::StatusOr<ReplicaEvent> event;
  {
    MutexLock lock(&p->replica_mu);
    event = p->replica.Apply(*update, options_.verify_checksums);
  }
  if (!event.ok()) {
    Resync(*p, shard, "malformed_update");
    return;
  }
  NotifyChange();
  if (*event == ReplicaEvent::kWentBack) {
    MutexLock lock(&mu_);
    ++stats_.resyncs;
    if (options_.metrics != nullptr) options_.metrics->RecordResync("went_back");
  }
  if (NeedsResync(*event)) Resync(*p, shard, ReplicaEventName(*event).data());
}

void Client::Resync(Parameter& p, int shard, const char* reason) {
  const std::string& name = specs_[p.index].name;
  {
    MutexLock lock(&mu_);
    ++stats_.resyncs;
  }
  if (options_.metrics != nullptr) options_.metrics->RecordResync(reason);
  uint64_t changes_before;
  {
    MutexLock lock(&p.replica_mu);
    changes_before = p.replica.changes();
  }
  absl::StatusOr<std::vector<v1::ParameterValue>> values = links_[shard]->Pull({name});
  // A failed pull is retried by the next update, which finds the same gap or mismatch; a copy
  // out of sync is left out of Have(), so a resubscription brings its full value as well.
  if (!values.ok() || values->size() != 1) return;
  const v1::ParameterValue& value = values->front();
  CountReceived(p, static_cast<int64_t>(value.ByteSizeLong()));
  absl::StatusOr<Matrix> X = DecodePulled(p, shard, value);
  if (!X.ok()) return;
  MutexLock lock(&p.replica_mu);
  // The other stream thread changed the copy while this one pulled (a resync from an ack runs
  // beside the subscriber): a part in sync is as new as what the stream said last, and the
  // pulled value may be older. Replacing it would take the replica back.
  if (p.replica.changes() != changes_before && PartInSync(p, shard)) return;
  (void)SetPart(p, shard, value.version(), *X, value.checksum());
  NotifyChange();  // the change lock is a leaf: fine under the replica lock
}

absl::Status Client::SetPart(Parameter& p, int s, int64_t version, const Matrix& X,
                             uint64_t checksum) {
  p.replica_mu.AssertHeld();
  if (!p.is_split()) return p.replica.Set(version, X, checksum);
  return p.replica.SetBlock(*p.BlockOf(s), version, X, checksum);
}

bool Client::PartInSync(const Parameter& p, int s) const {
  p.replica_mu.AssertHeld();
  return p.is_split() ? p.replica.block_in_sync(*p.BlockOf(s)) : p.replica.in_sync();
}

void Client::CountReceived(const Parameter& p, int64_t bytes) {
  const int64_t dense = 4 * specs_[p.index].size();
  {
    MutexLock lock(&mu_);
    stats_.received_bytes += bytes;
    stats_.received_dense_bytes += dense;
  }
  if (options_.metrics != nullptr) options_.metrics->RecordReceived(bytes, dense);
}

std::vector<v1::ParameterVersion> Client::Have(int shard) const {
  std::vector<v1::ParameterVersion> have;
  for (const auto& p : parameters_) {
    if (!p->HeldBy(shard)) continue;
    MutexLock lock(&p->replica_mu);
    // A copy out of sync is not held: the shard then sends its full value. A split
    // parameter's owner is told the version of its own block.
    if (!PartInSync(*p, shard)) continue;
    v1::ParameterVersion held;
    held.set_parameter(specs_[p->index].name);
    held.set_version(p->is_split() ? p->replica.block_version(*p->BlockOf(shard))
                                   : p->replica.version());
    have.push_back(std::move(held));
  }
  return have;
}

void Client::NotifyChange() {
  MutexLock lock(&change_mu_);
  ++changes_;
  change_cv_.SignalAll();
}

uint64_t Client::ChangeCount() const {
  MutexLock lock(&change_mu_);
  return changes_;
}

void Client::WaitForChange(uint64_t seen, absl::Time deadline) const {
  MutexLock lock(&change_mu_);
  while (changes_ == seen) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return;
    // Capped: an infinite deadline would overflow the clock arithmetic of wait_for.
    change_cv_.WaitWithTimeout(&change_mu_, std::min(left, absl::Hours(1)));
  }
}

absl::Status Client::WaitForVersionsAbove(absl::Span<const int64_t> versions,
                                          absl::Duration timeout) const {
  if (versions.size() != parameters_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", parameters_.size(),
                                                   " versions (one per parameter), got ",
                                                   versions.size()));
  }
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const uint64_t seen = ChangeCount();
    if (absl::Status s = Usable(); !s.ok()) return s;
    int behind = -1;
    for (int i = 0; i < static_cast<int>(versions.size()) && behind < 0; ++i) {
      if (version(i) <= versions[i]) behind = i;
    }
    if (behind < 0) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "parameter '", specs_[behind].name, "' stayed at version ", versions[behind], " for ",
          absl::FormatDuration(timeout)));
    }
    WaitForChange(seen, deadline);
  }
}

}  // namespace dion
