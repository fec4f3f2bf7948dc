// The broadcaster of one shard: fans each new version of a parameter out to the subscribers
// that follow it (the Subscribe RPC), in bounded memory.
//
// Every subscription has a queue of at most `queue_capacity` updates. Publish never blocks on
// a subscriber: when a subscriber's queue is full it is marked lagging, its queue is dropped and
// every parameter that had an update in it (and the one being published) is remembered as
// "needs a full value". Next() then sends the full current value of those parameters (fetched
// from the shard when it is sent, so it is as new as possible) before anything else queued for
// them. A subscriber therefore never sees a silent gap: per parameter it receives strictly
// increasing versions, a low-rank step only ever for exactly the version after the one it
// already has, and otherwise a full value (which carries the checksum of the weights).
//
// The same rule serves new subscriptions: a parameter the subscriber does not already hold at
// the current version starts with a full value.
//
// Conflation: a subscriber whose stream is slower than the shard's steps (a slow downlink)
// finds several updates of a parameter queued. Next() sends one full value in their place when
// that is fewer bytes: low-rank steps whose P and Q together hold at least as many elements as
// the value (m n against (m + n) r per step: from ceil(m n / ((m + n) r)) steps on, 4 for a
// 256 x 784 matrix at rank 64), and a value of a parameter with a newer value queued behind it.
// The subscriber gets the newest weights sooner, in fewer bytes, and never a gap.
//
// Updates are shared between subscribers (one copy per published version, not per subscriber).
// Lag events, full values sent in place of missed updates, conflated updates and the
// subscribers still catching up are counted in ShardMetrics (dion_subscriber_lag_events_total,
// dion_broadcast_full_value_fallbacks_total, dion_broadcast_conflated_updates_total,
// dion_lagging_subscribers).
//
// Thread-safety: safe for concurrent use. Publish is called by the shard's compute threads, in
// version order per parameter; Next by one thread per subscription (the RPC's handler).
#ifndef DION_SERVER_BROADCASTER_H_
#define DION_SERVER_BROADCASTER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "common/version_update.h"

namespace dion {

class ShardMetrics;

struct BroadcasterOptions {
  int queue_capacity = 64;  // updates buffered per subscriber before it counts as lagging (>= 1)
};

// Where the broadcaster reads the shard's current state.
struct VersionSource {
  // The full current value of a parameter as an update (content = the matrix).
  std::function<absl::StatusOr<VersionUpdate>(const std::string& parameter)> full_value;
  // The current version of a parameter.
  std::function<absl::StatusOr<int64_t>(const std::string& parameter)> version;
};

class Broadcaster;

// One subscriber's view. Created by Broadcaster::Subscribe; unsubscribes when destroyed.
// Thread-safety: Next() from one thread at a time; the rest safe for concurrent use.
class Subscription {
 public:
  ~Subscription();
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  // The next update to send, waiting at most `timeout`. nullopt on timeout or once the
  // subscription is closed (closed() tells which).
  std::optional<std::shared_ptr<const VersionUpdate>> Next(absl::Duration timeout)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Closed by Broadcaster::Shutdown or Close(); Next() then returns nullopt at once.
  bool closed() const ABSL_LOCKS_EXCLUDED(mu_);
  void Close() ABSL_LOCKS_EXCLUDED(mu_);
  // How many times this subscriber's queue overflowed.
  int64_t lag_events() const ABSL_LOCKS_EXCLUDED(mu_);
  const std::vector<std::string>& parameters() const { return parameters_; }

 private:
  friend class Broadcaster;
  Subscription(Broadcaster* broadcaster, std::vector<std::string> parameters)
      : broadcaster_(broadcaster),
        parameters_(std::move(parameters)),
        follows_(parameters_.begin(), parameters_.end()) {}

  // Queues an update, or drops the queue and remembers full values when it is full.
  void Offer(const std::shared_ptr<const VersionUpdate>& update, int capacity)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Marks `parameter` as owing a full value; `fallback`: in place of updates (metrics).
  void NeedFullLocked(const std::string& parameter, bool fallback)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the lagging state (and its gauge) once every owed full value went out.
  void UpdateLaggingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `update` (just taken from the queue) and the updates of its parameter still queued
  // cost more than one full value (file comment); if so, drops those and returns how many
  // updates the full value replaces (0: send `update`).
  int64_t ConflateLocked(const VersionUpdate& update) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ShardMetrics* metrics() const;

  Broadcaster* const broadcaster_;
  const std::vector<std::string> parameters_;
  const absl::flat_hash_set<std::string> follows_;

  mutable Mutex mu_;
  CondVar cv_;
  std::deque<std::shared_ptr<const VersionUpdate>> queue_ ABSL_GUARDED_BY(mu_);
  // Parameters owing a full value, sent before anything queued; the flag says whether it
  // replaces missed updates (a fallback) rather than starting the subscription.
  absl::btree_map<std::string, bool> need_full_ ABSL_GUARDED_BY(mu_);
  // From a queue overflow until every full value it caused was sent.
  bool lagging_ ABSL_GUARDED_BY(mu_) = false;
  // The version the subscriber holds per parameter; absent: none yet.
  absl::flat_hash_map<std::string, int64_t> delivered_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  int64_t lag_events_ ABSL_GUARDED_BY(mu_) = 0;
};

class Broadcaster {
 public:
  // REQUIRES: options.queue_capacity >= 1; source's functions set. `metrics` may be null and
  // must otherwise outlive the broadcaster.
  Broadcaster(const BroadcasterOptions& options, VersionSource source,
              ShardMetrics* metrics = nullptr);
  ~Broadcaster();
  Broadcaster(const Broadcaster&) = delete;
  Broadcaster& operator=(const Broadcaster&) = delete;

  // Follows `parameters` (names the caller has checked). `have` lists the versions the
  // subscriber already holds; any other parameter starts with a full value. After Shutdown
  // the subscription is returned closed. The subscription must not outlive the broadcaster.
  std::unique_ptr<Subscription> Subscribe(std::vector<std::string> parameters,
                                          const absl::flat_hash_map<std::string, int64_t>& have)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Hands a new version to every subscriber following its parameter. Never blocks on a
  // subscriber. REQUIRES: called in version order per parameter.
  void Publish(VersionUpdate update) ABSL_LOCKS_EXCLUDED(mu_);

  // Closes every subscription (now and later): their Next() returns nullopt.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  int64_t subscribers() const ABSL_LOCKS_EXCLUDED(mu_);
  // Updates waiting in all subscription queues (each holds at most queue_capacity).
  int64_t queued_updates() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  friend class Subscription;
  void Remove(Subscription* subscription) ABSL_LOCKS_EXCLUDED(mu_);
  const VersionSource& source() const { return source_; }
  ShardMetrics* metrics() const { return metrics_; }

  const BroadcasterOptions options_;
  const VersionSource source_;
  ShardMetrics* const metrics_;

  mutable Mutex mu_;
  absl::flat_hash_set<Subscription*> subscriptions_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace dion

#endif  // DION_SERVER_BROADCASTER_H_
