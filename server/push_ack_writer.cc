#include "server/push_ack_writer.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "dion/v1/dion.grpc.pb.h"  // SerializationTraits for protobuf messages
#include "server/metrics.h"

namespace dion {

PushAckWriter::PushAckWriter(
    Shard* shard, grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream,
    ShardMetrics* metrics)
    : shard_(shard), stream_(stream), metrics_(metrics), thread_([this] { Loop(); }) {}

PushAckWriter::~PushAckWriter() { Finish(); }

bool PushAckWriter::Add(v1::PushAck ack, uint64_t durable_end) {
  MutexLock lock(&mu_);
  if (failed_) return false;
  queue_.push_back({std::move(ack), durable_end});
  cv_.Signal();
  return true;
}

bool PushAckWriter::Finish() {
  {
    MutexLock lock(&mu_);
    closing_ = true;
    cv_.Signal();
  }
  if (thread_.joinable()) thread_.join();
  MutexLock lock(&mu_);
  return !failed_;
}

void PushAckWriter::Loop() {
  while (true) {
    Pending next;
    {
      MutexLock lock(&mu_);
      while (queue_.empty() && !closing_) cv_.Wait(&mu_);
      if (queue_.empty() || failed_) return;  // closing with nothing left, or client gone
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    if (!Send(std::move(next))) {
      MutexLock lock(&mu_);
      failed_ = true;
      queue_.clear();
      return;
    }
  }
}

bool PushAckWriter::Send(Pending pending) {
  v1::PushAck& ack = pending.ack;
  if (pending.durable_end > 0) {
    if (absl::Status s = shard_->WaitDurable(pending.durable_end); !s.ok()) {
      ack.set_result(v1::PUSH_RESULT_REJECTED);
      ack.set_status_code(static_cast<int32_t>(absl::StatusCode::kUnavailable));
      ack.set_staleness(0);
      ack.set_message(std::string(s.message()));
    }
  }
  if (metrics_ != nullptr) metrics_->RecordSentBytes(ack.ByteSizeLong());
  grpc::ByteBuffer reply;
  bool own_buffer = false;
  if (!grpc::SerializationTraits<v1::PushAck>::Serialize(ack, &reply, &own_buffer).ok()) {
    return false;
  }
  return stream_->Write(reply);
}

}  // namespace dion
