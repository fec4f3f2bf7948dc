// A TCP relay that adds a fixed one-way delay: the latency half of the links `dion local
// --link_rate / --link_delay` puts between each worker and the shards (worker/local/
// worker_links.h; netem, the kernel's delay qdisc, is not available everywhere).
//
// Each route accepts connections on `listen` and opens one to `target` per accepted
// connection; every chunk read from one side is written to the other `delay` after it was
// read, in order, in both directions. A side that closes its sending half is shut down on the
// other side once everything before it is delivered; an error on either side resets both.
// At most `max_queued` bytes wait per direction (then the relay stops reading that side, so
// the sender sees backpressure). TCP is terminated at the relay: the delay is added to every
// message, but the two TCP connections each see the short RTT of their own hop, so a
// sender's congestion window does not ramp up over the long RTT as it would on a real link
// (docs/worker.md, "Slow links").
//
// Thread-safety: one thread of its own moves the bytes; the byte counters may be read from any
// thread; Start and the destructor from one thread.
#ifndef DION_WORKER_LOCAL_LINK_RELAY_H_
#define DION_WORKER_LOCAL_LINK_RELAY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace dion {

class LinkRelay {
 public:
  struct Route {
    std::string listen;  // IPv4 "a.b.c.d:port"; port 0: any free port
    std::string target;  // IPv4 "a.b.c.d:port"
    int link = 0;        // whose counters the route's bytes go to, in [0, links)
  };

  // Binds every route's listening socket, then starts the relay thread. InvalidArgument for a
  // malformed address or link; Unavailable naming the address when a socket cannot be bound.
  static absl::StatusOr<std::unique_ptr<LinkRelay>> Start(const std::vector<Route>& routes,
                                                          int links, absl::Duration delay,
                                                          int64_t max_queued);
  // Stops the thread and closes every connection and listening socket.
  ~LinkRelay();
  LinkRelay(const LinkRelay&) = delete;
  LinkRelay& operator=(const LinkRelay&) = delete;

  // The bound address of route `index` ("a.b.c.d:port").
  const std::string& listen_address(int index) const { return bound_[index]; }
  // Bytes read so far from the accepting side (to the target) and from the target side.
  int64_t bytes_to_target(int link) const { return counters_[2 * link].load(); }
  int64_t bytes_from_target(int link) const { return counters_[2 * link + 1].load(); }
  // "" when no connection was reset by the relay; else how many and the last reason (a
  // target that refused, a read or write error, a peer gone with bytes still queued).
  std::string Resets() const;

 private:
  struct Listener {
    int fd;
    std::string target;
    int link;
  };
  LinkRelay(absl::Duration delay, int64_t max_queued, int links);
  std::optional<std::pair<int, int>> Accept(const Listener& l);
  void Loop();
  void Note(const std::string& what);

  const int64_t delay_ns_;
  const int64_t max_queued_;
  std::vector<Listener> listeners_;
  std::vector<std::string> bound_;
  std::unique_ptr<std::atomic<int64_t>[]> counters_;  // 2 per link
  mutable absl::Mutex mutex_;
  int64_t resets_ ABSL_GUARDED_BY(mutex_) = 0;
  std::string last_reset_ ABSL_GUARDED_BY(mutex_);
  int wake_[2] = {-1, -1};  // a pipe: the destructor writes to stop the loop
  std::thread thread_;
};

}  // namespace dion

#endif  // DION_WORKER_LOCAL_LINK_RELAY_H_
