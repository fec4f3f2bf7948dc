// Sends one Push stream's acks in order from a thread of its own, each once its contribution
// is durable in the shard's write-ahead log (Shard::WaitDurable), so that the stream's handler
// reads and judges the next contributions meanwhile: a worker's pushes in flight then share
// fdatasyncs with each other and with other streams (group commit), instead of paying one
// sync each in turn (docs/server.md, "What a crash loses").
//
// An ack whose contribution cannot be made durable is sent as REJECTED with UNAVAILABLE: the
// worker keeps it and re-sends it to the restarted shard.
//
// Thread-safety: Add and Finish are called by the stream's handler thread only; the writer
// thread is the only one that writes to the stream.
#ifndef DION_SERVER_PUSH_ACK_WRITER_H_
#define DION_SERVER_PUSH_ACK_WRITER_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/sync_stream.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <deque>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"
#include "dion/v1/dion.pb.h"
#include "server/shard.h"

namespace dion {

class ShardMetrics;

class PushAckWriter {
 public:
  // `metrics` may be null. All pointers must outlive the writer.
  PushAckWriter(Shard* shard, grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream,
                ShardMetrics* metrics);
  // Finish().
  ~PushAckWriter();
  PushAckWriter(const PushAckWriter&) = delete;
  PushAckWriter& operator=(const PushAckWriter&) = delete;

  // Queues `ack`, to be sent once the log is durable through `durable_end` (0: at once).
  // False once a write failed (the client is gone): stop reading then.
  bool Add(v1::PushAck ack, uint64_t durable_end) ABSL_LOCKS_EXCLUDED(mu_);
  // Sends every queued ack and stops the thread. False if a write failed. Idempotent.
  bool Finish() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Pending {
    v1::PushAck ack;
    uint64_t durable_end = 0;
  };
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits for the log and writes one ack; false if the write failed.
  bool Send(Pending pending);

  Shard* const shard_;
  grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* const stream_;
  ShardMetrics* const metrics_;
  Mutex mu_;
  CondVar cv_;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace dion

#endif  // DION_SERVER_PUSH_ACK_WRITER_H_
