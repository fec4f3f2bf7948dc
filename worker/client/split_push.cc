#include "worker/client/split_push.h"

#include <utility>

namespace dion {

Contribution ContributionBlock(const ParamSpec& spec, const Contribution& whole, RowBlock rows) {
  const bool wide = spec.rows() < spec.cols();
  Contribution block;
  block.worker_id = whole.worker_id;
  block.sequence = whole.sequence;
  block.parameter = whole.parameter;
  block.base_version = whole.base_version;
  block.sample_count = whole.sample_count;
  block.loss = whole.loss;
  if (whole.is_low_rank()) {
    const LowRankFactors& f = whole.factors();
    LowRankFactors part;
    // P is m x r (X's rows), R is n x r (X's columns): the tall side's factor is cut.
    part.P = wide ? f.P : Matrix(f.P.middleRows(rows.begin, rows.size()));
    part.R = wide ? Matrix(f.R.middleRows(rows.begin, rows.size())) : f.R;
    block.payload = std::move(part);
  } else {
    const Matrix& G = whole.gradient();
    block.payload = wide ? Matrix(G.middleCols(rows.begin, rows.size()))
                         : Matrix(G.middleRows(rows.begin, rows.size()));
  }
  return block;
}

SplitPushes::SplitPushes(std::vector<RowOwner> owners) : owners_(std::move(owners)) {}

int SplitPushes::OwnerIndex(int shard) const {
  for (int i = 0; i < static_cast<int>(owners_.size()); ++i) {
    if (owners_[i].shard == shard) return i;
  }
  return -1;
}

std::vector<int> SplitPushes::Begin(uint64_t sequence) {
  const int owners = static_cast<int>(owners_.size());
  Commit commit;
  commit.awaited.assign(owners, false);
  commit.queued_in.assign(owners, 0);
  commit.followers_left = owners - 1;
  std::vector<int> send;
  for (int i = 1; i < owners; ++i) send.push_back(i);
  if (send.empty()) send.push_back(0);
  for (int i : send) commit.awaited[i] = true;
  commits_[sequence] = std::move(commit);
  return send;
}

SplitPushes::Next SplitPushes::OnAnswer(uint64_t sequence, int index, bool staged) {
  auto it = commits_.find(sequence);
  if (it == commits_.end() || index < 0 || index >= static_cast<int>(owners_.size()) ||
      !it->second.awaited[index]) {
    return Next::kIgnore;
  }
  Commit& commit = it->second;
  commit.awaited[index] = false;
  if (index == 0 || !staged) {
    commits_.erase(it);
    return Next::kSettle;
  }
  if (--commit.followers_left > 0) return Next::kWait;
  commit.awaited[0] = true;
  return Next::kSendLeader;
}

void SplitPushes::Queued(uint64_t sequence, int index, uint64_t generation) {
  auto it = commits_.find(sequence);
  if (it != commits_.end()) it->second.queued_in[index] = generation;
}

std::vector<uint64_t> SplitPushes::ToResend(int index, uint64_t generation) const {
  std::vector<uint64_t> out;
  for (const auto& [sequence, commit] : commits_) {
    if (commit.awaited[index] && commit.queued_in[index] != generation) out.push_back(sequence);
  }
  return out;
}

bool SplitPushes::Awaits(uint64_t sequence, int index) const {
  auto it = commits_.find(sequence);
  return it != commits_.end() && index >= 0 && index < static_cast<int>(owners_.size()) &&
         it->second.awaited[index];
}

}  // namespace dion
