#include "server/peer/reduce_hub.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/checksum.h"

namespace dion {

// Fields are guarded by the hub's mu_, except `parts` while kSumming: then the one Submit that
// completes the reduction owns them.
struct ReduceHub::Reduction {
  enum class State { kGathering, kSumming, kDone };

  ReduceKey key;
  std::string tag;
  int32_t owners = 1;
  int32_t first_owner = 0;  // whose part set tag, owners and shape
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<Matrix> parts;  // by owner
  std::vector<bool> arrived;  // by owner
  std::vector<uint64_t> fingerprints;  // by owner: WeightsChecksum of its part
  int32_t count = 0;
  int64_t bytes = 0;
  absl::Time deadline = absl::InfiniteFuture();  // the earliest of its waiters'
  State state = State::kGathering;
  absl::Status failure;
  std::shared_ptr<const Matrix> sum;
  CondVar ended;
};

namespace {

int64_t PartBytes(const Matrix& value) { return value.size() * int64_t{sizeof(float)}; }

std::string Describe(const ReduceKey& key, absl::string_view tag, int32_t owners) {
  return absl::StrCat("the reduction of ", DescribeKey(key), " (tag '", tag, "', ", owners,
                      " owners)");
}

// INVALID_ARGUMENT naming what `part` disagrees on, or OK when it fits the reduction.
absl::Status CheckAgrees(const ReduceKey& key, const std::string& tag, int32_t owners,
                         int64_t rows, int64_t cols, int32_t first_owner,
                         const ReducePart& part) {
  std::string expected;
  std::string got;
  if (part.owners != owners) {
    expected = absl::StrCat(owners, " owners");
    got = absl::StrCat(part.owners, " owners");
  } else if (part.tag != tag) {
    expected = absl::StrCat("tag '", tag, "'");
    got = absl::StrCat("tag '", part.tag, "'");
  } else if (part.value.rows() != rows || part.value.cols() != cols) {
    expected = absl::StrCat("a ", rows, " x ", cols, " part");
    got = absl::StrCat("a ", part.value.rows(), " x ", part.value.cols(), " part");
  } else {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the reduction of ", DescribeKey(key), ": owner ", part.owner, " sent ", got,
      ", expected ", expected, " (as owner ", first_owner, "'s part); the reduction failed"));
}

// Adds the parts in owner order in double precision, a cache-sized chunk at a time, and
// rounds each element to float once.
Matrix SumInOwnerOrder(const std::vector<Matrix>& parts) {
  const int64_t n = parts[0].size();
  Matrix out(parts[0].rows(), parts[0].cols());
  constexpr int64_t kChunk = 4096;
  Eigen::ArrayXd acc(kChunk);
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t len = std::min(kChunk, n - begin);
    const auto part = [&](size_t k) {
      return Eigen::Map<const Eigen::ArrayXf>(parts[k].data() + begin, len);
    };
    acc.head(len) = part(0).cast<double>();
    for (size_t k = 1; k < parts.size(); ++k) acc.head(len) += part(k).cast<double>();
    Eigen::Map<Eigen::ArrayXf>(out.data() + begin, len) = acc.head(len).cast<float>();
  }
  return out;
}

}  // namespace

std::string DescribeKey(const ReduceKey& key) {
  return absl::StrCat("parameter '", key.parameter, "' step ", key.step, " round ", key.round,
                      key.attempt > 0 ? absl::StrCat(", attempt ", key.attempt) : "");
}

absl::Status ValidateReducePart(const ReducePart& part) {
  const auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("malformed reduction part: ", what));
  };
  if (part.key.parameter.empty() || part.key.parameter.size() > kMaxReduceParameterBytes) {
    return bad(absl::StrCat("the parameter name must be 1-", kMaxReduceParameterBytes,
                            " bytes, got ", part.key.parameter.size()));
  }
  if (part.tag.empty() || part.tag.size() > kMaxReduceTagBytes) {
    return bad(absl::StrCat("the tag must be 1-", kMaxReduceTagBytes, " bytes, got ",
                            part.tag.size()));
  }
  if (part.key.step < 0) return bad(absl::StrCat("step must be >= 0, got ", part.key.step));
  if (part.key.attempt < 0) {
    return bad(absl::StrCat("attempt must be >= 0, got ", part.key.attempt));
  }
  if (part.key.round < 0) return bad(absl::StrCat("round must be >= 0, got ", part.key.round));
  if (part.owners < 1 || part.owners > kMaxReduceOwners) {
    return bad(absl::StrCat("owners must be in [1, ", kMaxReduceOwners, "], got ", part.owners));
  }
  if (part.owner < 0 || part.owner >= part.owners) {
    return bad(absl::StrCat("owner must be in [0, ", part.owners, "), got ", part.owner));
  }
  if (part.value.rows() < 1 || part.value.cols() < 1) {
    return bad(absl::StrCat("the part must be at least 1 x 1, got ", part.value.rows(), " x ",
                            part.value.cols()));
  }
  return absl::OkStatus();
}

ReduceHub::~ReduceHub() { Shutdown(); }

absl::StatusOr<std::shared_ptr<const Matrix>> ReduceHub::Submit(ReducePart part,
                                                                absl::Time deadline) {
  if (absl::Status s = ValidateReducePart(part); !s.ok()) return s;
  const uint64_t fingerprint = WeightsChecksum(part.value);  // outside the lock
  std::shared_ptr<Reduction> r;
  {
    MutexLock lock(&mu_);
    if (std::shared_ptr<const Matrix> sum = ReplayLocked(part, fingerprint); sum != nullptr) {
      return sum;
    }
    absl::StatusOr<std::shared_ptr<Reduction>> joined = Join(part, fingerprint, deadline);
    if (!joined.ok()) return joined.status();
    r = *std::move(joined);
    if (r->count < r->owners) {
      AwaitLocked(r);
      if (!r->failure.ok()) return r->failure;
      return r->sum;
    }
    r->state = Reduction::State::kSumming;  // this call sums; the others keep waiting
  }
  return Complete(r);
}

std::shared_ptr<const Matrix> ReduceHub::ReplayLocked(const ReducePart& part,
                                                      uint64_t fingerprint) {
  if (shut_down_) return nullptr;
  auto it = retained_.find(part.key.parameter);
  if (it == retained_.end()) return nullptr;
  for (const Retained& r : it->second) {
    if (!(r.key == part.key)) continue;
    if (part.tag != r.tag || part.owners != static_cast<int32_t>(r.fingerprints.size()) ||
        part.value.rows() != r.sum->rows() || part.value.cols() != r.sum->cols() ||
        r.fingerprints[part.owner] != fingerprint) {
      return nullptr;  // not a part of this sum: refused as a late one
    }
    ++replays_;
    return r.sum;
  }
  return nullptr;
}

void ReduceHub::RetainLocked(Retained retained) {
  std::vector<Retained>& kept = retained_[retained.key.parameter];
  if (!kept.empty() && (kept.front().key.step != retained.key.step ||
                        kept.front().key.attempt != retained.key.attempt)) {
    kept.clear();
  }
  kept.push_back(std::move(retained));
}

absl::StatusOr<std::shared_ptr<ReduceHub::Reduction>> ReduceHub::Join(ReducePart& part,
                                                                      uint64_t fingerprint,
                                                                      absl::Time deadline) {
  const ReduceKey& key = part.key;
  if (shut_down_) {
    return absl::UnavailableError(absl::StrCat(
        "the leading shard is shutting down: ", DescribeKey(key), " cannot complete"));
  }
  if (auto it = finished_.find(key); it != finished_.end()) {
    return FinishedError(key, it->second, part.owner);
  }
  auto it = pending_.find(key);
  std::shared_ptr<Reduction> r = it == pending_.end() ? nullptr : it->second;
  const int64_t bytes = PartBytes(part.value);
  if (bytes > options_.max_part_bytes) {
    absl::Status s = absl::ResourceExhaustedError(absl::StrCat(
        Describe(key, part.tag, part.owners), ": owner ", part.owner, "'s part of ", bytes,
        " bytes is above this shard's limit of ", options_.max_part_bytes,
        " bytes per part; the reduction failed"));
    if (r != nullptr) FailLocked(r, s); else Remember(key, Finished{false, s});
    return s;
  }
  if (r == nullptr) {
    if (static_cast<int>(pending_.size()) >= options_.max_pending) {
      absl::Status s = absl::ResourceExhaustedError(absl::StrCat(
          Describe(key, part.tag, part.owners), " cannot start: this shard already gathers ",
          pending_.size(), " reductions (its limit)"));
      Remember(key, Finished{false, s});
      return s;
    }
    r = std::make_shared<Reduction>();
    r->key = key;
    r->tag = part.tag;
    r->owners = part.owners;
    r->first_owner = part.owner;
    r->rows = part.value.rows();
    r->cols = part.value.cols();
    r->parts.resize(part.owners);
    r->arrived.assign(part.owners, false);
    r->fingerprints.assign(part.owners, 0);
    pending_.emplace(key, r);
  } else {
    if (absl::Status s = CheckAgrees(key, r->tag, r->owners, r->rows, r->cols, r->first_owner,
                                     part);
        !s.ok()) {
      FailLocked(r, s);
      return s;
    }
    if (r->arrived[part.owner]) {
      return absl::FailedPreconditionError(absl::StrCat(
          Describe(key, r->tag, r->owners), ": owner ", part.owner,
          "'s part is already here (sent twice?); this one is refused"));
    }
  }
  if (pending_bytes_ + bytes > options_.max_pending_bytes) {
    absl::Status s = absl::ResourceExhaustedError(absl::StrCat(
        Describe(key, r->tag, r->owners), ": this shard already holds ", pending_bytes_,
        " bytes of pending parts; owner ", part.owner, "'s ", bytes,
        " more would pass its limit of ", options_.max_pending_bytes, "; the reduction failed"));
    FailLocked(r, s);
    return s;
  }
  r->parts[part.owner] = std::move(part.value);
  r->arrived[part.owner] = true;
  r->fingerprints[part.owner] = fingerprint;
  ++r->count;
  r->bytes += bytes;
  pending_bytes_ += bytes;
  r->deadline = std::min(r->deadline, deadline);
  return r;
}

absl::Status ReduceHub::FinishedError(const ReduceKey& key, const Finished& finished,
                                      int32_t owner) const {
  if (finished.completed) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the reduction of ", DescribeKey(key), " already completed; owner ", owner,
        "'s part arrived after it (sent twice?)"));
  }
  return absl::AbortedError(absl::StrCat(
      "owner ", owner, "'s part arrived after the reduction failed: ", finished.failure.message()));
}

void ReduceHub::FailLocked(const std::shared_ptr<Reduction>& r, absl::Status failure) {
  if (r->state != Reduction::State::kGathering) return;
  r->state = Reduction::State::kDone;
  r->failure = std::move(failure);
  Retire(r);
  r->ended.SignalAll();
}

void ReduceHub::Retire(const std::shared_ptr<Reduction>& r) {
  pending_.erase(r->key);
  pending_bytes_ -= r->bytes;
  r->bytes = 0;
  r->parts.clear();
  Remember(r->key, Finished{r->failure.ok(), r->failure});
  if (r->sum != nullptr) RetainLocked({r->key, r->tag, std::move(r->fingerprints), r->sum});
}

void ReduceHub::Remember(const ReduceKey& key, Finished finished) {
  finished_[key] = std::move(finished);
  finished_order_.push_back(key);
  while (static_cast<int>(finished_order_.size()) > options_.finished_memory) {
    finished_.erase(finished_order_.front());
    finished_order_.pop_front();
  }
}

std::shared_ptr<const Matrix> ReduceHub::Complete(const std::shared_ptr<Reduction>& r) {
  auto sum = std::make_shared<const Matrix>(SumInOwnerOrder(r->parts));
  MutexLock lock(&mu_);
  r->sum = sum;
  r->state = Reduction::State::kDone;
  Retire(r);
  r->ended.SignalAll();
  return sum;
}

void ReduceHub::AwaitLocked(const std::shared_ptr<Reduction>& r) {
  while (r->state != Reduction::State::kDone) {
    const absl::Time now = absl::Now();
    if (r->state == Reduction::State::kGathering && now >= r->deadline) {
      std::vector<int32_t> missing;
      std::vector<int32_t> present;
      for (int32_t k = 0; k < r->owners; ++k) (r->arrived[k] ? present : missing).push_back(k);
      FailLocked(r, absl::DeadlineExceededError(absl::StrCat(
                        Describe(r->key, r->tag, r->owners), ": no part from owner(s) ",
                        absl::StrJoin(missing, ", "), " by the deadline (parts of owner(s) ",
                        absl::StrJoin(present, ", "), " arrived)")));
      return;
    }
    // While a completing call sums, wait for it (bounded: one pass over the parts).
    const absl::Duration slice = r->state == Reduction::State::kGathering
                                     ? std::min(r->deadline - now, absl::Seconds(1))
                                     : absl::Milliseconds(100);
    r->ended.WaitWithTimeout(&mu_, slice);
  }
}

void ReduceHub::Shutdown() {
  MutexLock lock(&mu_);
  shut_down_ = true;
  std::vector<std::shared_ptr<Reduction>> gathering;
  for (const auto& [key, r] : pending_) gathering.push_back(r);
  for (const std::shared_ptr<Reduction>& r : gathering) {
    FailLocked(r, absl::UnavailableError(absl::StrCat(
                      Describe(r->key, r->tag, r->owners),
                      " failed: the leading shard is shutting down")));
  }
}

int ReduceHub::pending() const {
  MutexLock lock(&mu_);
  return static_cast<int>(pending_.size());
}

int64_t ReduceHub::replays() const {
  MutexLock lock(&mu_);
  return replays_;
}

int ReduceHub::parts_arrived(const ReduceKey& key) const {
  MutexLock lock(&mu_);
  auto it = pending_.find(key);
  return it == pending_.end() ? 0 : it->second->count;
}

}  // namespace dion
