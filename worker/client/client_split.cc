// Client, the pushes of split parameters: each owner gets its block of a contribution, and the
// followers must all have staged it before the leader is sent its own (split_push.h). The
// rest of the push path is in client.cc.
#include <cstdint>
#include <utility>

#include "common/wire.h"
#include "worker/client/client.h"
#include "worker/client/client_parameter.h"
#include "worker/client/push_ack.h"
#include "worker/client/shard_link.h"

namespace dion {

int64_t Client::SendBlock(Parameter& p, const Contribution& c, int owner) {
  p.accumulator_mu.AssertHeld();
  const RowOwner& o = p.owners[owner];
  v1::Contribution message;
  ContributionToProto(ContributionBlock(specs_[p.index], c, o.rows), &message, {});
  const int64_t bytes = static_cast<int64_t>(message.ByteSizeLong());
  p.split->Queued(c.sequence, owner, links_[o.shard]->Send(std::move(message)));
  return bytes;
}

void Client::ResendBlocks(Parameter& p, int shard, uint64_t generation) {
  p.accumulator_mu.AssertHeld();
  const int owner = p.split->OwnerIndex(shard);
  if (owner < 0) return;
  for (uint64_t sequence : p.split->ToResend(owner, generation)) {
    for (const Contribution* c : p.accumulator.InFlight()) {
      if (c->sequence == sequence) SendBlock(p, *c, owner);
    }
  }
}

bool Client::SplitAnswerSettles(Parameter& p, int shard, const v1::PushAck& ack,
                                const AckOutcome& outcome) {
  p.accumulator_mu.AssertHeld();
  const bool staged = outcome.result == WorkerPushResult::kAccepted ||
                      outcome.result == WorkerPushResult::kDuplicate;
  const uint64_t sequence = ack.sequence();
  switch (p.split->OnAnswer(sequence, p.split->OwnerIndex(shard), staged)) {
    case SplitPushes::Next::kIgnore:
    case SplitPushes::Next::kWait:
      return false;
    case SplitPushes::Next::kSendLeader:
      for (const Contribution* c : p.accumulator.InFlight()) {
        if (c->sequence == sequence) SendBlock(p, *c, 0);
      }
      return false;
    case SplitPushes::Next::kSettle:
      break;
  }
  return true;
}

}  // namespace dion
