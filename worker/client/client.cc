// Client: connecting to the shards, the push path (accumulate, compress, send, handle the
// acknowledgement), failure and Close. The replica side is in client_replica.cc, the flushes in
// client_flush.cc.
#include "worker/client/client.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/tls.h"
#include "common/wire.h"
#include "worker/client/client_parameter.h"
#include "worker/client/push_ack.h"
#include "worker/client/push_rank.h"
#include "worker/client/shard_link.h"
#include "worker/client/uplink_probe.h"

namespace dion {

namespace {

v1::RegisterModelRequest RegistrationOf(const ModelTable& table, const std::string& worker_id) {
  v1::RegisterModelRequest request;
  ModelTableToProto(table, &request);
  request.set_worker_id(worker_id);
  return request;
}

bool Retryable(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kDeadlineExceeded;
}

std::string Describe(int shard, absl::Span<const RowOwner> owners) {
  if (owners.empty()) return absl::StrCat("on shard ", shard, " whole");
  std::string out = "split over shards";
  for (const RowOwner& o : owners) {
    absl::StrAppend(&out, " ", o.shard, " [", o.rows.begin, ", ", o.rows.end, ")");
  }
  return out;
}

// Empty when the shard's `placement` is the one `layout` computes, else what each says.
std::string PlacementMismatch(const Layout& layout, const v1::Layout::Placement& placement) {
  std::vector<RowOwner> theirs;
  for (const v1::Layout::RowOwner& o : placement.row_owners()) {
    theirs.push_back(RowOwner{static_cast<int>(o.shard()), RowBlock{o.row_begin(), o.row_end()}});
  }
  const Placement* ours = layout.Find(placement.parameter());
  if (ours != nullptr && ours->shard == static_cast<int>(placement.shard()) &&
      ours->split == theirs) {
    return "";
  }
  return absl::StrCat(
      "places '", placement.parameter(), "' ", Describe(placement.shard(), theirs),
      ", this client computes ",
      ours == nullptr ? "no such parameter" : Describe(ours->shard, ours->split));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ModelTable& table,
                                                        const ClientOptions& options) {
  if (options.shard_addresses.empty()) {
    return absl::InvalidArgumentError("shard_addresses is empty; expected one host:port per shard");
  }
  if (options.worker_id.empty()) return absl::InvalidArgumentError("worker_id must not be empty");
  if (options.max_in_flight < 1 ||
      static_cast<uint64_t>(options.max_in_flight) > kMaxUnacknowledgedSpan) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_in_flight must be in [1, ", kMaxUnacknowledgedSpan, "] (well inside ",
                     "the shards' dedup window), got ", options.max_in_flight));
  }
  if (options.ack_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ack_timeout must be positive");
  }
  if (!(options.compression_rank_fraction > 0.0 && options.compression_rank_fraction <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "compression_rank_fraction must be in (0, 1], got ", options.compression_rank_fraction));
  }
  if (!(options.dp_clip >= 0.0 && std::isfinite(options.dp_clip))) {
    return absl::InvalidArgumentError(
        absl::StrCat("dp_clip must be >= 0 and finite (0: off), got ", options.dp_clip));
  }
  if (absl::Status s = ValidateModelTable(table); !s.ok()) return s;
  absl::StatusOr<Layout> layout =
      Layout::Compute(table.specs(), static_cast<int>(options.shard_addresses.size()));
  if (!layout.ok()) return layout.status();
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  std::unique_ptr<Client> client(new Client(table, options, *std::move(layout)));
  client->credentials_ = *std::move(credentials);
  if (absl::Status s = client->Start(table); !s.ok()) return s;
  return client;
}

Client::Client(const ModelTable& table, const ClientOptions& options, Layout layout)
    : options_(options), specs_(table.specs()), layout_(std::move(layout)) {
  const uint64_t first_sequence =
      options_.first_sequence != 0 ? options_.first_sequence
                                   : static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()));
  for (int i = 0; i < static_cast<int>(specs_.size()); ++i) {
    const ParamSpec& spec = specs_[i];
    index_of_[spec.name] = i;
    parameters_.push_back(std::make_unique<Parameter>(
        spec, i, *layout_.Find(spec.name),
        CompressionRank(spec, options_.compression_rank_fraction),
        MixSeed(options_.seed, 0xC0, static_cast<uint64_t>(i)), first_sequence,
        options_.track_last_step));
    Parameter& added = *parameters_.back();
    MutexLock lock(&added.accumulator_mu);
    added.accumulator.set_clip(options_.dp_clip);
  }
  if (options_.auto_compression_rank) {
    // The controller counts a split parameter's bytes with the owners the layout gives it.
    std::vector<ParamSpec> served = specs_;
    for (ParamSpec& spec : served) {
      spec.split_owners = static_cast<int>(layout_.Find(spec.name)->split.size());
    }
    push_rank_ =
        std::make_unique<PushRankController>(std::move(served), options_.compression_rank_fraction);
    uplink_ = std::make_unique<UplinkProbe>(options_.shard_addresses);
  }
}

Client::~Client() { Close(); }

Client::Parameter* Client::Find(absl::string_view name) const {
  auto it = index_of_.find(name);
  return it == index_of_.end() ? nullptr : parameters_[it->second].get();
}

absl::Status Client::Start(const ModelTable& table) {
  CreateLinks(table);
  // Register everywhere (shards may still be starting: retry while they are unavailable),
  // check each address serves the index it is listed at, and that the layouts agree.
  for (int s = 0; s < static_cast<int>(links_.size()); ++s) {
    if (absl::Status registered = RegisterWith(s); !registered.ok()) return registered;
  }
  // The initial weights, then the subscriptions (which only send what changed since).
  for (int s = 0; s < static_cast<int>(links_.size()); ++s) {
    if (absl::Status pulled = PullInitialWeights(s); !pulled.ok()) return pulled;
  }
  for (const auto& p : parameters_) {
    MutexLock lock(&p->replica_mu);
    if (!p->replica.has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shard ", p->shard, " did not send '", specs_[p->index].name, "' when pulled"));
    }
  }
  for (auto& link : links_) link->Start();
  return absl::OkStatus();
}

void Client::CreateLinks(const ModelTable& table) {
  const v1::RegisterModelRequest registration = RegistrationOf(table, options_.worker_id);
  const int num_shards = static_cast<int>(options_.shard_addresses.size());
  for (int s = 0; s < num_shards; ++s) {
    ShardLinkOptions link;
    link.shard_index = s;
    link.address = options_.shard_addresses[s];
    link.worker_id = options_.worker_id;
    link.rpc_deadline = options_.rpc_deadline;
    link.ack_timeout = options_.ack_timeout;
    link.reconnect = options_.reconnect;
    link.max_message_bytes = options_.max_message_bytes;
    link.credentials = credentials_;
    link.tls = options_.tls;
    link.seed = MixSeed(options_.seed, 0x11, static_cast<uint64_t>(s));
    ShardLinkCallbacks callbacks;
    callbacks.on_ack = [this, s](const v1::PushAck& ack) { OnAck(s, ack); };
    callbacks.on_update = [this, s](v1::VersionUpdate& update) { OnUpdate(s, update); };
    callbacks.have = [this, s] { return Have(s); };
    callbacks.on_push_stream_opened = [this, s](uint64_t generation) {
      ResendInFlight(s, generation);
    };
    callbacks.on_reconnect = [this] {
      {
        MutexLock lock(&mu_);
        ++stats_.reconnects;
      }
      if (options_.metrics != nullptr) options_.metrics->RecordReconnect();
    };
    callbacks.on_give_up = [this](const absl::Status& status) { Fail(status); };
    links_.push_back(std::make_unique<ShardLink>(std::move(link), registration, callbacks));
  }
}

absl::Status Client::RegisterWith(int s) {
  const int num_shards = static_cast<int>(options_.shard_addresses.size());
  Backoff backoff(options_.reconnect, MixSeed(options_.seed, 0x22, s));
  absl::StatusOr<v1::RegisterModelResponse> response = links_[s]->Register();
  while (!response.ok() && Retryable(response.status()) && !backoff.Expired(absl::Now())) {
    absl::SleepFor(backoff.NextDelay());
    response = links_[s]->Register();
  }
  if (!response.ok()) return response.status();
  if (static_cast<int>(response->shard_index()) != s ||
      static_cast<int>(response->layout().num_shards()) != num_shards) {
    return absl::FailedPreconditionError(absl::StrCat(
        options_.shard_addresses[s], " is shard ", response->shard_index(), " of ",
        response->layout().num_shards(), ", but it is listed as shard ", s, " of ", num_shards,
        "; list the addresses in shard-index order"));
  }
  for (const v1::Layout::Placement& placement : response->layout().placements()) {
    if (std::string mismatch = PlacementMismatch(layout_, placement); !mismatch.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("shard ", s, " ", mismatch));
    }
  }
  return absl::OkStatus();
}

absl::Status Client::PullInitialWeights(int s) {
  absl::StatusOr<std::vector<v1::ParameterValue>> values = links_[s]->Pull({});
  if (!values.ok()) return values.status();
  for (const v1::ParameterValue& value : *values) {
    Parameter* p = Find(value.parameter());
    if (p == nullptr || !p->HeldBy(s)) {
      return absl::FailedPreconditionError(
          absl::StrCat("shard ", s, " sent '", value.parameter(),
                       "', which this client does not place there"));
    }
    if (absl::Status set = SetPulled(*p, s, value); !set.ok()) return set;
  }
  return absl::OkStatus();
}

absl::StatusOr<Matrix> Client::DecodePulled(const Parameter& p, int s,
                                            const v1::ParameterValue& value) const {
  const RowBlock rows{value.row_begin(), value.row_end()};
  const RowBlock& expected = *p.BlockOf(s);
  const ParamSpec& spec = specs_[p.index];
  if (!(rows == expected)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shard ", s, " sent rows [", rows.begin, ", ", rows.end, ") of '", spec.name,
        "', expected [", expected.begin, ", ", expected.end, ")"));
  }
  std::vector<int64_t> shape = spec.shape;
  if (p.is_split()) {
    shape = spec.rows() >= spec.cols() ? std::vector<int64_t>{rows.size(), spec.cols()}
                                       : std::vector<int64_t>{spec.rows(), rows.size()};
  }
  return TensorToMatrix(value.value(), shape, value.parameter());
}

absl::Status Client::SetPulled(Parameter& p, int s, const v1::ParameterValue& value) {
  absl::StatusOr<Matrix> X = DecodePulled(p, s, value);
  if (!X.ok()) return X.status();
  MutexLock lock(&p.replica_mu);
  return SetPart(p, s, value.version(), *X, value.checksum());
}

absl::Status Client::Submit(absl::Span<const Matrix> gradients, int64_t samples, double loss) {
  std::vector<ConstMatrixRef> views(gradients.begin(), gradients.end());
  return Submit(absl::MakeConstSpan(views), samples, loss);
}

absl::Status Client::Submit(absl::Span<const ConstMatrixRef> gradients, int64_t samples,
                            double loss) {
  if (absl::Status s = Usable(); !s.ok()) return s;
  if (gradients.size() != parameters_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Submit got ", gradients.size(),
                                                   " gradients, expected ", parameters_.size(),
                                                   " (one per parameter, in table order)"));
  }
  if (samples <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("samples must be > 0, got ", samples));
  }
  // Everything is checked before anything is accumulated: bad input changes nothing.
  for (size_t i = 0; i < gradients.size(); ++i) {
    const ParamSpec& spec = specs_[i];
    if (gradients[i].rows() != spec.rows() || gradients[i].cols() != spec.cols()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradient of '", spec.name, "' is ", gradients[i].rows(), " x ", gradients[i].cols(),
          ", expected ", spec.rows(), " x ", spec.cols()));
    }
    if (!AllFinite(gradients[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("gradient of '", spec.name, "' contains NaN or Inf"));
    }
  }
  if (push_rank_ != nullptr) {
    // Connections (one per shard) that delivered since the last step shared the uplink: their
    // rates add up to what it carried.
    const absl::Time now = absl::Now();
    const std::vector<double> rates = uplink_->Sample(now);
    double uplink = 0;
    for (double rate : rates) uplink += rate;
    if (uplink > 0) push_rank_->OnDelivery({uplink}, now);
  }
  for (auto& p : parameters_) {
    MutexLock lock(&p->accumulator_mu);
    int64_t base_version;
    {
      MutexLock replica_lock(&p->replica_mu);
      base_version = p->replica.version();
    }
    if (absl::Status s =
            p->accumulator.Accumulate(gradients[p->index], samples, loss, base_version);
        !s.ok()) {
      return s;  // only an overflowing residual gets here; earlier parameters keep their step
    }
    MaybeSend(*p);
  }
  {
    MutexLock lock(&mu_);
    ++stats_.local_steps;
  }
  if (options_.metrics != nullptr) {
    options_.metrics->RecordSamples(samples);
    options_.metrics->SetTrainingLoss(loss);
  }
  return absl::OkStatus();
}

bool Client::MaybeSend(Parameter& p, bool whole) {
  p.accumulator_mu.AssertHeld();  // every caller holds it (Parameter is incomplete in client.h)
  GradientAccumulator& acc = p.accumulator;
  if (acc.in_flight() >= options_.max_in_flight) return false;
  if (whole ? !acc.HasAnythingToFlush() : acc.pending_samples() <= 0) return false;
  const int local_steps = acc.pending_steps();
  int64_t base_version;
  {
    MutexLock lock(&p.replica_mu);
    base_version = p.replica.version();
  }
  const ParamSpec& spec = specs_[p.index];
  // A full-rank block costs 4 (m + n) bytes per column; half the message limit leaves room.
  const int64_t max_rank = options_.max_message_bytes / 2 / (4 * (spec.rows() + spec.cols()));
  if (push_rank_ != nullptr && !whole) {
    acc.set_compression_rank(CompressionRank(spec, push_rank_->fraction()));
  }
  const Contribution* contribution =
      whole ? acc.TakeWhole(options_.worker_id, base_version, absl::Now(), max_rank)
            : acc.Take(options_.worker_id, base_version, absl::Now());
  if (contribution == nullptr) return false;
  if (push_rank_ != nullptr) {
    push_rank_->OnSent(PayloadBytes(*contribution, static_cast<int>(p.owners.size())),
                       absl::Now());
  }
  int64_t bytes = 0;
  if (p.is_split()) {
    for (int owner : p.split->Begin(contribution->sequence)) {
      bytes += SendBlock(p, *contribution, owner);
    }
  } else {
    v1::Contribution message;
    ContributionToProto(*contribution, &message, specs_[p.index].shape);
    bytes = static_cast<int64_t>(message.ByteSizeLong());
    p.queued_in[contribution->sequence] = links_[p.shard]->Send(std::move(message));
  }
  const int64_t dense = 4 * specs_[p.index].size();
  {
    MutexLock lock(&mu_);
    ++stats_.pushes;
    stats_.sent_bytes += bytes;
    stats_.dense_bytes += dense;
  }
  if (options_.metrics != nullptr) options_.metrics->RecordPush(local_steps, bytes, dense);
  return true;
}

void Client::ResendInFlight(int shard, uint64_t generation) {
  for (auto& p : parameters_) {
    if (!p->HeldBy(shard)) continue;
    MutexLock lock(&p->accumulator_mu);
    if (p->is_split()) {
      ResendBlocks(*p, shard, generation);
      continue;
    }
    for (const Contribution* c : p->accumulator.InFlight()) {
      // Taken and queued after the link cleared its queue for this stream: already on its way.
      // A second copy on the same stream could be refused and restored, and then accepted.
      auto queued = p->queued_in.find(c->sequence);
      if (queued != p->queued_in.end() && queued->second == generation) continue;
      v1::Contribution message;
      ContributionToProto(*c, &message, specs_[p->index].shape);
      p->queued_in[c->sequence] = links_[shard]->Send(std::move(message));
    }
  }
}

void Client::OnAck(int shard, const v1::PushAck& ack) {
  Parameter* p = Find(ack.parameter());
  // Nothing of this shard's is in flight for a name it does not own.
  if (p == nullptr || !p->HeldBy(shard)) return;
  const AckOutcome outcome = Classify(shard, ack, options_.worker_id);
  const AckAction action = outcome.action;
  absl::Time taken;
  int64_t samples;
  {
    MutexLock lock(&p->accumulator_mu);
    // A split parameter's follower that staged it, or an answer not awaited: nothing settles.
    if (p->is_split() && !SplitAnswerSettles(*p, shard, ack, outcome)) return;
    absl::StatusOr<GradientAccumulator::Acknowledged> done =
        p->accumulator.Acknowledge(ack.sequence(), action);
    // Not in flight (answered already): nothing to settle.
    if (absl::IsNotFound(done.status())) return;
    p->queued_in.erase(ack.sequence());
    if (!done.ok()) {
      // The refused contribution could not be put back (non-finite after scaling): it is
      // neither applied nor kept, so the run cannot go on without losing it.
      Fail(absl::DataLossError(absl::StrCat("a refused contribution to '", ack.parameter(),
                                            "' could not be restored: ",
                                            done.status().message())));
      return;
    }
    taken = done->taken;
    samples = done->contribution.sample_count;
    if (options_.on_acknowledged && !outcome.unknown) {
      options_.on_acknowledged(done->contribution, FateOf(action));
    }
    if (!outcome.fatal.ok()) Fail(outcome.fatal);
    // A settled push frees its slot for what accumulated meanwhile. A restored one goes out
    // again with the next Submit or Flush, not from here: a shard that keeps refusing (shutting
    // down, or behind the base version until the resync below) would otherwise be sent the
    // same gradient in a loop as fast as the network (and the compressor) can go.
    if (action != AckAction::kRestore && Usable().ok()) MaybeSend(*p);  // not after Close
  }
  {
    MutexLock lock(&mu_);
    CountAck(outcome, ack, samples, stats_);
  }
  if (options_.metrics != nullptr) {
    options_.metrics->RecordAck(outcome.result, absl::ToDoubleSeconds(absl::Now() - taken));
    if (action == AckAction::kRestore) options_.metrics->RecordRefused();
    if (action == AckAction::kDropStale) options_.metrics->RecordStaleDropped(samples);
    if (push_rank_ != nullptr) {
      const PushRankController::State state = push_rank_->state();
      options_.metrics->SetPushRank(state.fraction, state.rate_bytes_per_s);
    }
  }
  // Before the resync, which can block on a pull for up to rpc_deadline (and signals itself).
  NotifyChange();
  if (outcome.resync) Resync(*p, shard, "rejected_version");
}

ClientStats Client::stats() const {
  ClientStats stats;
  {
    MutexLock lock(&mu_);
    stats = stats_;
  }
  stats.push_rank_fraction = options_.compression_rank_fraction;
  if (push_rank_ != nullptr) {
    const PushRankController::State state = push_rank_->state();
    stats.adaptive_push_rank = true;
    stats.push_rank_fraction = state.fraction;
    stats.push_rank_changes = state.changes;
    stats.uplink_rate_bytes_per_second = state.rate_bytes_per_s;
  }
  return stats;
}

absl::Status Client::status() const {
  MutexLock lock(&mu_);
  return fatal_;
}

absl::Status Client::Usable() const {
  MutexLock lock(&mu_);
  if (!fatal_.ok()) return fatal_;
  if (closed_) return absl::FailedPreconditionError("the client is closed");
  return absl::OkStatus();
}

void Client::Fail(const absl::Status& status) {
  if (status.ok()) return;
  {
    MutexLock lock(&mu_);
    if (fatal_.ok()) fatal_ = status;
  }
  NotifyChange();
}

void Client::Close() {
  {
    MutexLock lock(&mu_);
    closed_ = true;
  }
  NotifyChange();  // waiters return now, not at their deadlines
  for (auto& link : links_) link->Stop();
}

}  // namespace dion
