#include "server/broadcaster.h"

#include <utility>
#include <variant>

#include "server/metrics.h"

namespace dion {

Subscription::~Subscription() {
  broadcaster_->Remove(this);
  MutexLock lock(&mu_);
  if (lagging_ && metrics() != nullptr) metrics()->AddLaggingSubscribers(-1);
  lagging_ = false;
}

ShardMetrics* Subscription::metrics() const { return broadcaster_->metrics(); }

void Subscription::NeedFullLocked(const std::string& parameter, bool fallback) {
  auto [it, inserted] = need_full_.try_emplace(parameter, fallback);
  if (!inserted) it->second = it->second || fallback;
}

void Subscription::UpdateLaggingLocked() {
  if (lagging_ && need_full_.empty()) {
    lagging_ = false;
    if (metrics() != nullptr) metrics()->AddLaggingSubscribers(-1);
  }
}

void Subscription::Offer(const std::shared_ptr<const VersionUpdate>& update, int capacity) {
  if (!follows_.contains(update->parameter)) return;
  MutexLock lock(&mu_);
  if (closed_) return;
  if (static_cast<int>(queue_.size()) >= capacity) {
    // Lagging: never grow the queue; what was in it is replaced by full values sent later.
    for (const auto& queued : queue_) NeedFullLocked(queued->parameter, true);
    queue_.clear();
    NeedFullLocked(update->parameter, true);
    ++lag_events_;
    if (metrics() != nullptr) {
      metrics()->RecordSubscriberLag();
      if (!lagging_) metrics()->AddLaggingSubscribers(1);
    }
    lagging_ = true;
  } else {
    queue_.push_back(update);
  }
  cv_.Signal();
}

namespace {

// Elements on the wire: the step's P and Q, or the value.
int64_t Elements(const VersionUpdate& update) {
  if (update.is_low_rank()) {
    const LowRankStep& step = std::get<LowRankStep>(update.content);
    return step.P.size() + step.Q.size();
  }
  return std::get<Matrix>(update.content).size();
}

// The elements of the full value an update's parameter (or block) has.
int64_t ValueElements(const VersionUpdate& update) {
  if (update.is_low_rank()) {
    const LowRankStep& step = std::get<LowRankStep>(update.content);
    return step.P.rows() * step.Q.rows();
  }
  return std::get<Matrix>(update.content).size();
}

}  // namespace

int64_t Subscription::ConflateLocked(const VersionUpdate& update) {
  int64_t queued = 0;
  int64_t elements = Elements(update);
  for (const auto& later : queue_) {
    if (later->parameter != update.parameter) continue;
    ++queued;
    elements += Elements(*later);
  }
  if (queued == 0) return 0;
  // A value is replaced by a newer one whatever the sizes; steps when they outweigh a value.
  if (update.is_low_rank() && elements < ValueElements(update)) return 0;
  std::erase_if(queue_, [&](const std::shared_ptr<const VersionUpdate>& later) {
    return later->parameter == update.parameter;
  });
  return queued + 1;
}

std::optional<std::shared_ptr<const VersionUpdate>> Subscription::Next(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  MutexLock lock(&mu_);
  while (true) {
    if (closed_) return std::nullopt;
    if (!need_full_.empty()) {
      const std::string parameter = need_full_.begin()->first;
      const bool fallback = need_full_.begin()->second;
      need_full_.erase(need_full_.begin());
      UpdateLaggingLocked();
      // Read the value without holding mu_, so Publish never waits for a snapshot.
      mu_.Unlock();
      absl::StatusOr<VersionUpdate> full = broadcaster_->source().full_value(parameter);
      mu_.Lock();
      if (!full.ok()) continue;  // the parameter vanished (cannot happen once registered)
      auto it = delivered_.find(parameter);
      if (it != delivered_.end() && full->version <= it->second) continue;
      delivered_[parameter] = full->version;
      if (fallback && metrics() != nullptr) metrics()->RecordFullValueFallback();
      return std::make_shared<const VersionUpdate>(*std::move(full));
    }
    if (!queue_.empty()) {
      std::shared_ptr<const VersionUpdate> update = std::move(queue_.front());
      queue_.pop_front();
      auto it = delivered_.find(update->parameter);
      const bool holds = it != delivered_.end();
      if (holds && update->version <= it->second) continue;  // already covered by a full value
      if (update->is_low_rank() && (!holds || update->version != it->second + 1)) {
        // A step only applies to the version right before it: send the full value instead.
        NeedFullLocked(update->parameter, true);
        continue;
      }
      if (const int64_t replaced = ConflateLocked(*update); replaced > 0) {
        NeedFullLocked(update->parameter, false);  // read when sent: as new as possible
        if (metrics() != nullptr) metrics()->RecordConflatedUpdates(replaced);
        continue;
      }
      delivered_[update->parameter] = update->version;
      return update;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return std::nullopt;
    cv_.WaitWithTimeout(&mu_, left);
  }
}

bool Subscription::closed() const {
  MutexLock lock(&mu_);
  return closed_;
}

void Subscription::Close() {
  MutexLock lock(&mu_);
  closed_ = true;
  queue_.clear();
  cv_.SignalAll();
}

int64_t Subscription::lag_events() const {
  MutexLock lock(&mu_);
  return lag_events_;
}

Broadcaster::Broadcaster(const BroadcasterOptions& options, VersionSource source,
                         ShardMetrics* metrics)
    : options_(options), source_(std::move(source)), metrics_(metrics) {}

Broadcaster::~Broadcaster() = default;

std::unique_ptr<Subscription> Broadcaster::Subscribe(
    std::vector<std::string> parameters, const absl::flat_hash_map<std::string, int64_t>& have) {
  std::unique_ptr<Subscription> subscription(new Subscription(this, std::move(parameters)));
  {
    MutexLock lock(&mu_);
    if (shut_down_) {
      subscription->Close();
    }
    subscriptions_.insert(subscription.get());
    // Under mu_ so that concurrent changes reach the gauge in order.
    if (metrics_ != nullptr) metrics_->SetSubscribers(subscriptions_.size());
  }
  // Registered first, versions read second: an update published in between is queued and
  // either applies on top of `have` or is superseded by the full value.
  MutexLock lock(&subscription->mu_);
  for (const std::string& parameter : subscription->parameters_) {
    auto held = have.find(parameter);
    absl::StatusOr<int64_t> current = source_.version(parameter);
    if (held != have.end() && current.ok() && *current == held->second) {
      subscription->delivered_[parameter] = held->second;
    } else {
      subscription->NeedFullLocked(parameter, false);
    }
  }
  return subscription;
}

void Broadcaster::Publish(VersionUpdate update) {
  auto shared = std::make_shared<const VersionUpdate>(std::move(update));
  ReaderMutexLock lock(&mu_);
  for (Subscription* subscription : subscriptions_) {
    subscription->Offer(shared, options_.queue_capacity);
  }
}

void Broadcaster::Shutdown() {
  MutexLock lock(&mu_);
  shut_down_ = true;
  for (Subscription* subscription : subscriptions_) subscription->Close();
}

int64_t Broadcaster::subscribers() const {
  ReaderMutexLock lock(&mu_);
  return static_cast<int64_t>(subscriptions_.size());
}

int64_t Broadcaster::queued_updates() const {
  ReaderMutexLock lock(&mu_);
  int64_t queued = 0;
  for (const Subscription* subscription : subscriptions_) {
    MutexLock subscription_lock(&subscription->mu_);
    queued += static_cast<int64_t>(subscription->queue_.size());
  }
  return queued;
}

void Broadcaster::Remove(Subscription* subscription) {
  MutexLock lock(&mu_);
  subscriptions_.erase(subscription);
  if (metrics_ != nullptr) metrics_->SetSubscribers(subscriptions_.size());
}

}  // namespace dion
