// Latency of one shard-to-shard reduction (server/peer/, docs/server.md "Peers") over gRPC on
// loopback, at the sizes of a row-split 8192 x 8192 Dion step with r = 512: the r x r Gram
// matrix and the n x r R, for 2 and 4 owners.
//
// `owners` ShardPeer servers run in this process, one per shard, each with its ReduceHub; each
// owner calls GrpcRowReducer::AllReduce from its own thread, all released together. A
// repetition is one reduction; its time is the slowest owner's AllReduce. In the same run, the
// same reduction with every owner submitting to one hub in process (no gRPC) gives the
// transport's share: reps alternate between the two so that load hits both alike. Figures are
// medians. Wire MiB: the tensors on the wire per reduction (every follower's part and its
// sum; protobuf framing adds a few bytes).
//
// Output: a markdown table on stdout; progress on stderr.
#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/median.h"
#include "common/matrix.h"
#include "server/metrics.h"
#include "server/peer/grpc_row_reducer.h"
#include "server/peer/peer_channels.h"
#include "server/peer/peer_service.h"
#include "server/peer/reduce_hub.h"
#include "bench/loopback_peers.h"

ABSL_FLAG(int, reps, 15, "Timed reductions of each case (median), after 2 warm-up ones");
ABSL_FLAG(std::string, owners, "2,4", "Comma-separated owner counts");

namespace dion {
namespace {

using Clock = std::chrono::steady_clock;

// One reduction of `rows` x `cols` parts among all owners, over gRPC or into hub 0 in process;
// the slowest owner's seconds.
double OneReduction(LoopbackPeers& cluster, int owners, int rows, int cols, int64_t step, bool grpc) {
  std::vector<int> shards(owners);
  for (int k = 0; k < owners; ++k) shards[k] = k;
  std::vector<double> seconds(owners);
  std::barrier start(owners);
  std::vector<std::thread> threads;
  for (int k = 0; k < owners; ++k) {
    threads.emplace_back([&, k] {
      Matrix part = Matrix::Constant(rows, cols, 1.0f + k);
      GrpcRowReducer reducer("bench", step, shards, k,
                             PeerEnv{cluster.hubs[0].get(), cluster.channels.get(),
                                     absl::Seconds(60), nullptr});
      start.arrive_and_wait();
      const Clock::time_point t0 = Clock::now();
      absl::Status s;
      if (grpc) {
        s = reducer.AllReduce("bench", part);
      } else {
        ReducePart mine;
        mine.key = ReduceKey{"local", step, 0};
        mine.tag = "bench";
        mine.owner = k;
        mine.owners = owners;
        mine.value = part;
        s = cluster.hubs[0]->Submit(std::move(mine), absl::Now() + absl::Seconds(60)).status();
      }
      seconds[k] = std::chrono::duration<double>(Clock::now() - t0).count();
      if (!s.ok()) std::fprintf(stderr, "reduction failed: %s\n", s.ToString().c_str());
    });
  }
  for (std::thread& t : threads) t.join();
  return *std::max_element(seconds.begin(), seconds.end());
}

void Run() {
  const int reps = absl::GetFlag(FLAGS_reps);
  struct Shape {
    const char* name;
    int rows;
    int cols;
  };
  const Shape shapes[] = {{"r x r (Gram)", 512, 512}, {"n x r (R)", 8192, 512}};
  std::printf("| owners | part | MiB per part | wire MiB per reduction | gRPC median ms | "
              "in-process median ms | gRPC / in-process |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  for (absl::string_view o : absl::StrSplit(absl::GetFlag(FLAGS_owners), ',')) {
    const int owners = std::stoi(std::string(o));
    LoopbackPeers cluster(owners);
    int64_t step = 0;
    for (const Shape& shape : shapes) {
      std::vector<double> over_grpc;
      std::vector<double> in_process;
      for (int rep = 0; rep < reps + 2; ++rep) {
        const double g = OneReduction(cluster, owners, shape.rows, shape.cols, ++step, true);
        const double l = OneReduction(cluster, owners, shape.rows, shape.cols, step, false);
        if (rep >= 2) {
          over_grpc.push_back(g);
          in_process.push_back(l);
        }
      }
      const double part_mib = 4.0 * shape.rows * shape.cols / (1 << 20);
      std::fprintf(stderr, "owners %d %s done\n", owners, shape.name);
      std::printf("| %d | %s %dx%d | %.2f | %.2f | %.2f | %.2f | %.2f |\n", owners, shape.name,
                  shape.rows, shape.cols, part_mib, 2.0 * (owners - 1) * part_mib,
                  1e3 * Median(over_grpc), 1e3 * Median(in_process),
                  Median(over_grpc) / Median(in_process));
    }
  }
}

}  // namespace
}  // namespace dion

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  dion::Run();
  return 0;
}
