// How the client pushes a contribution to a split parameter (common/layout.h; docs/worker.md,
// "Split parameters"): each owner gets its rows of the tall side's factor, and the commit is
// follower-first: every follower (owners 1 .. k-1, in row order) must have staged the
// contribution (ACCEPTED or DUPLICATE) before the leader (owner 0) is sent its block; the
// leader's answer is the contribution's outcome, and a follower's refusal settles it without
// the leader ever seeing it. Private to worker/client/.
//
// Thread-safety: ContributionBlock is a pure function; SplitPushes is not safe for concurrent
// use (the client guards it with the parameter's accumulator lock).
#ifndef DION_WORKER_SPLIT_PUSH_H_
#define DION_WORKER_SPLIT_PUSH_H_

#include <cstdint>
#include <map>
#include <vector>

#include "common/contribution.h"
#include "common/layout.h"
#include "common/param_spec.h"
#include "common/row_reduce.h"

namespace dion {

// The part of `whole` (a contribution to the split parameter `spec`) that the owner of `rows`
// takes: low-rank factors with P's rows [begin, end) when rows >= cols, else R's rows (X's
// columns), the other factor whole; a dense gradient's rows (or columns when wide). Worker id,
// sequence, base version, samples and loss as in `whole`. REQUIRES: rows within the tall side.
Contribution ContributionBlock(const ParamSpec& spec, const Contribution& whole, RowBlock rows);

// The two-phase commits in flight of one split parameter, by sequence.
class SplitPushes {
 public:
  // `owners`: the parameter's owners in row order (Placement::split), at least one.
  explicit SplitPushes(std::vector<RowOwner> owners);

  const std::vector<RowOwner>& owners() const { return owners_; }
  // The index in owners() of `shard`, or -1 when it holds no block.
  int OwnerIndex(int shard) const;

  // Starts the commit of `sequence` (not yet in flight). Returns the owner indexes to send
  // their blocks to now: the followers, or the leader (0) alone when there is no follower.
  std::vector<int> Begin(uint64_t sequence);

  // What an answer of owner `index` about `sequence` means.
  enum class Next {
    kIgnore,      // not awaited from that owner (answered already, or settled): nothing to do
    kWait,        // a follower staged it; other followers have still to answer
    kSendLeader,  // the last follower staged it: send the leader its block now
    kSettle,      // the contribution's outcome (the leader's answer, or a follower's refusal);
                  // the commit is forgotten
  };
  // `staged`: the answer was ACCEPTED or DUPLICATE.
  Next OnAnswer(uint64_t sequence, int index, bool staged);

  // Owner `index`'s block of `sequence` was queued on its link's Push stream `generation`.
  void Queued(uint64_t sequence, int index, uint64_t generation);
  // The sequences, oldest first, whose block owner `index` must be sent again on its new Push
  // stream `generation`: those awaited from it and not queued in that generation already.
  std::vector<uint64_t> ToResend(int index, uint64_t generation) const;
  // Forgets `sequence` (settled another way, e.g. the client dropped it).
  void Forget(uint64_t sequence) { commits_.erase(sequence); }
  // Commits in flight.
  size_t size() const { return commits_.size(); }
  // Whether owner `index`'s answer about `sequence` is awaited.
  bool Awaits(uint64_t sequence, int index) const;

 private:
  struct Commit {
    std::vector<bool> awaited;        // per owner
    int followers_left = 0;           // followers that have not staged it yet
    std::vector<uint64_t> queued_in;  // per owner: generation last queued in (0: never)
  };
  std::vector<RowOwner> owners_;
  std::map<uint64_t, Commit> commits_;
};

}  // namespace dion

#endif  // DION_WORKER_SPLIT_PUSH_H_
