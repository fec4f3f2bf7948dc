#include "server/checkpoint/checkpointer.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "dion/v1/dion.pb.h"
#include "google/protobuf/text_format.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "server/checkpoint/checkpoint_encoding.h"
#include "server/checkpoint/checkpoint_manifest.h"
#include "server/wire.h"

namespace dion {
namespace {

absl::Status CheckOptions(const CheckpointerOptions& options) {
  if (options.root.empty()) return absl::InvalidArgumentError("checkpoint root is empty");
  if (options.keep_last < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep_last must be >= 1, got ", options.keep_last));
  }
  return absl::OkStatus();
}

// What one checkpoint holds of the store and its batchers.
struct ShardState {
  std::vector<ParameterSnapshot> snapshots;          // OwnedParameters() order
  std::vector<std::vector<WorkerDedupState>> dedup;  // same order
};

// Snapshots of every owned parameter with optimizer state, checked against the batchers: a
// contribution in an open or unapplied batch is already marked as seen, so checkpointing it
// would lose it on restore.
absl::StatusOr<ShardState> TakeShardState(const ParameterStore& store,
                                          const std::vector<const Batcher*>& batchers) {
  const std::vector<std::string> owned = store.OwnedParameters();
  if (batchers.size() != owned.size()) {
    return absl::InvalidArgumentError(absl::StrCat(batchers.size(), " batchers for ",
                                                   owned.size(), " owned parameters"));
  }
  ShardState state;
  for (size_t i = 0; i < owned.size(); ++i) {
    const Batcher* batcher = batchers[i];
    if (batcher == nullptr || batcher->parameter() != owned[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "batcher ", i, " must be the one of '", owned[i], "' (OwnedParameters() order)"));
    }
    absl::StatusOr<ParameterSnapshot> snapshot = store.Snapshot(owned[i], true);
    if (!snapshot.ok()) return snapshot.status();
    if (batcher->stats().open_contributions != 0 || batcher->version() != snapshot->version) {
      return absl::FailedPreconditionError(absl::StrCat(
          "parameter '", owned[i], "' has contributions not yet applied (batcher at version ",
          batcher->version(), ", parameter at ", snapshot->version,
          "): flush the batchers and apply every closed batch before a checkpoint"));
    }
    state.snapshots.push_back(*std::move(snapshot));
    state.dedup.push_back(batcher->ExportDedup());
  }
  return state;
}

// The next checkpoint number: above every existing checkpoint and every one this process
// wrote. Removes temporaries left by an interrupted write first.
absl::StatusOr<uint64_t> NextSequence(const std::string& root, uint64_t next_sequence) {
  if (absl::StatusOr<int> removed = RemoveStaleTemporaries(root); !removed.ok()) {
    return removed.status();
  }
  absl::StatusOr<std::vector<CheckpointInfo>> existing = ListCheckpoints(root);
  if (!existing.ok()) return existing.status();
  uint64_t sequence = std::max<uint64_t>(next_sequence, 1);
  if (!existing->empty()) sequence = std::max(sequence, existing->front().version + 1);
  return sequence;
}

// The tag of the checkpoint Write(..., cut) is asked for (see Checkpointer::Write).
absl::StatusOr<CutTag> TagFor(const CutTag& cut, const CutIndex& cuts) {
  if (cut.cut == 0) return CutTag{cuts.last_run_id(), 0};
  if (absl::Status s = ValidateCutRequest(cut); !s.ok()) return s;
  absl::StatusOr<std::optional<CutCheckpoint>> earlier = cuts.Check(cut);
  if (!earlier.ok()) return earlier.status();
  if (earlier->has_value()) {
    return absl::AlreadyExistsError(absl::StrCat("cut ", cut.cut, " of run ", cut.run_id,
                                                 " was already written: ", (*earlier)->path));
  }
  return cut;
}

void SetCutMetadata(const CutTag& tag, CheckpointWriter& w) {
  if (!tag.run_id.empty()) w.SetMetadata(kRunIdKey, tag.run_id);
  if (tag.cut != 0) w.SetMetadata(kCutKey, absl::StrCat(tag.cut));
}

absl::Status AddModelTable(const ModelInfo& model, CheckpointWriter& w) {
  v1::RegisterModelRequest request;
  request.set_model_name(model.model_name);
  for (const ParamSpec& spec : model.parameters) ParameterToProto(spec, request.add_parameters());
  std::string table_text;
  if (!google::protobuf::TextFormat::PrintToString(request, &table_text)) {
    return absl::InternalError("cannot print the model table");
  }
  return w.AddFile(kModelTableFile, table_text);
}

// The shard-wide metadata keys (server/checkpoint/checkpoint_encoding.h).
void SetShardMetadata(uint64_t sequence, const ParameterStore& store, const ModelInfo& model,
                      const std::vector<std::string>& registered, size_t parameters,
                      CheckpointWriter& w) {
  w.SetMetadata("format", kShardCheckpointFormat);
  w.SetMetadata("sequence", absl::StrCat(sequence));
  w.SetMetadata("shard_index", absl::StrCat(store.options().shard_index));
  w.SetMetadata("num_shards", absl::StrCat(store.options().num_shards));
  w.SetMetadata("model_name", model.model_name);
  std::vector<std::string> checksums;
  for (const std::optional<uint64_t>& c : model.initial_value_checksums) {
    checksums.push_back(c.has_value() ? Fnv1a64::Hex(*c) : "-");
  }
  w.SetMetadata("initial_value_checksums", absl::StrJoin(checksums, ","));
  std::vector<std::string> workers;
  for (const std::string& worker : registered) workers.push_back(Escape(worker));
  w.SetMetadata("workers", absl::StrJoin(workers, ","));
  w.SetMetadata("parameters", absl::StrCat(parameters));
}

// Owned parameter i: its metadata keys, X and optimizer state tensors.
absl::Status AddParameter(size_t i, ParameterSnapshot& s, absl::string_view stem,
                          CheckpointWriter& w) {
  w.SetMetadata(ParameterKey(i, "name"), s.spec.name);
  w.SetMetadata(ParameterKey(i, "file"), stem);
  w.SetMetadata(ParameterKey(i, "optimizer"), OptimizerKindName(s.spec.optimizer));
  w.SetMetadata(ParameterKey(i, "version"), absl::StrCat(s.version));
  w.SetMetadata(ParameterKey(i, "step"), absl::StrCat(StateStep(*s.state)));
  w.SetMetadata(ParameterKey(i, "contributions_applied"), absl::StrCat(s.contributions_applied));
  w.SetMetadata(ParameterKey(i, "samples_applied"), absl::StrCat(s.samples_applied));
  w.SetMetadata(ParameterKey(i, "checksum"), Fnv1a64::Hex(s.checksum));
  if (s.rows.size() > 0) {  // one owner's rows of a split parameter
    w.SetMetadata(ParameterKey(i, "row_begin"), absl::StrCat(s.rows.begin));
    w.SetMetadata(ParameterKey(i, "row_end"), absl::StrCat(s.rows.end));
  }
  const bool one_d = s.spec.shape.size() == 1;
  if (absl::Status st = w.AddNpy(TensorFile(stem, "X"), s.X, one_d); !st.ok()) return st;
  for (const StateTensor& tensor : StateTensors(s.spec, *s.state)) {
    if (absl::Status st = w.AddNpy(TensorFile(stem, tensor.suffix), *tensor.matrix, one_d);
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace

Checkpointer::Checkpointer(CheckpointerOptions options) : options_(std::move(options)) {
  cuts_.Load(options_.root);
}

absl::StatusOr<std::string> Checkpointer::Write(const ParameterStore& store,
                                                const std::vector<const Batcher*>& batchers,
                                                const CutTag& cut) {
  if (absl::Status s = CheckOptions(options_); !s.ok()) return s;
  if (absl::StatusOr<CutTag> tag = TagFor(cut, cuts_); !tag.ok()) return tag.status();
  if (absl::StatusOr<ModelInfo> model = store.model(); !model.ok()) return model.status();
  absl::StatusOr<ShardState> state = TakeShardState(store, batchers);
  if (!state.ok()) return state.status();
  absl::StatusOr<uint64_t> sequence = ReserveSequence();
  if (!sequence.ok()) return sequence.status();
  CheckpointContents contents;
  contents.workers = store.workers();
  contents.dedup = std::move(state->dedup);
  contents.parameter = [&state](size_t i) -> absl::StatusOr<ParameterSnapshot> {
    return std::move(state->snapshots[i]);
  };
  return WriteContents(*sequence, store, contents, cut);
}

absl::StatusOr<uint64_t> Checkpointer::ReserveSequence(uint64_t at_least) {
  if (absl::Status s = CheckOptions(options_); !s.ok()) return s;
  absl::StatusOr<uint64_t> sequence = NextSequence(options_.root, next_sequence_);
  if (!sequence.ok()) return sequence.status();
  const uint64_t reserved = std::max(*sequence, at_least);
  next_sequence_ = reserved + 1;
  return reserved;
}

absl::StatusOr<std::string> Checkpointer::WriteContents(uint64_t sequence,
                                                        const ParameterStore& store,
                                                        const CheckpointContents& contents,
                                                        const CutTag& cut) {
  if (absl::Status s = CheckOptions(options_); !s.ok()) return s;
  absl::StatusOr<CutTag> tag = TagFor(cut, cuts_);
  if (!tag.ok()) return tag.status();
  absl::StatusOr<ModelInfo> model = store.model();
  if (!model.ok()) return model.status();
  const std::vector<std::string> owned = store.OwnedParameters();
  if (contents.dedup.size() != owned.size()) {
    return absl::InvalidArgumentError(absl::StrCat(contents.dedup.size(), " dedup states for ",
                                                   owned.size(), " owned parameters"));
  }
  absl::StatusOr<std::unique_ptr<CheckpointWriter>> writer =
      CheckpointWriter::Begin(options_.root, sequence);
  if (!writer.ok()) return writer.status();
  CheckpointWriter& w = **writer;
  if (absl::Status s = AddModelTable(*model, w); !s.ok()) return s;
  if (absl::Status s = w.AddFile(kDedupFile, SerializeDedupState(contents.dedup)); !s.ok()) {
    return s;
  }
  SetShardMetadata(sequence, store, *model, contents.workers, owned.size(), w);
  SetCutMetadata(*tag, w);
  absl::flat_hash_set<std::string> stems;
  std::vector<std::pair<std::string, int64_t>> versions;
  for (size_t i = 0; i < owned.size(); ++i) {
    if (absl::Status s = contents.keep_going(); !s.ok()) {
      w.Abandon();  // out of time: the next checkpoint removes the directory
      return s;
    }
    absl::StatusOr<ParameterSnapshot> s = contents.parameter(i);
    if (!s.ok()) return s.status();
    if (s->spec.name != owned[i]) {
      return absl::InvalidArgumentError(absl::StrCat("parameter ", i, " must be '", owned[i],
                                                     "', got '", s->spec.name, "'"));
    }
    const std::string stem = FileStem(s->spec.name);
    if (!stems.insert(stem).second) {
      return absl::InternalError(absl::StrCat("file name clash for parameter '", s->spec.name, "'"));
    }
    if (absl::Status st = AddParameter(i, *s, stem, w); !st.ok()) return st;
    versions.emplace_back(s->spec.name, s->version);
  }

  absl::StatusOr<std::string> path = w.Commit();
  if (!path.ok()) return path.status();
  last_written_ = sequence;
  next_sequence_ = std::max(next_sequence_, sequence + 1);
  cuts_.Record({*path, sequence, *tag, std::move(versions), false});
  if (absl::Status s = Prune(*path); !s.ok()) return s;
  return path;
}

absl::StatusOr<uint64_t> Checkpointer::SecondNewest() const {
  absl::StatusOr<std::vector<CheckpointInfo>> checkpoints = ListCheckpoints(options_.root);
  if (!checkpoints.ok()) return checkpoints.status();  // newest first
  if (checkpoints->empty()) return 0;
  return (*checkpoints)[std::min<size_t>(1, checkpoints->size() - 1)].version;
}

absl::Status Checkpointer::Prune(const std::string& written) {
  const std::vector<uint64_t> coordinated = cuts_.NewestSequences(options_.keep_last);
  absl::StatusOr<int> pruned = PruneCheckpoints(options_.root, options_.keep_last, coordinated);
  absl::StatusOr<std::vector<CheckpointInfo>> present =
      pruned.ok() ? ListCheckpoints(options_.root)
                  : absl::StatusOr<std::vector<CheckpointInfo>>(pruned.status());
  if (!present.ok()) {
    return absl::Status(present.status().code(),
                        absl::StrCat("checkpoint ", written, " was written, but removing old ones "
                                     "failed: ", present.status().message()));
  }
  cuts_.KeepOnly(*present);
  return absl::OkStatus();
}

namespace {

// The first of `candidates` (newest first) that is valid. As FindNewestValidCheckpoint, but a
// checkpoint whose files are intact and whose content does not parse is skipped as well.
// DataLoss "no valid <what>: <reasons>" when none is.
absl::StatusOr<ShardCheckpoint> LoadFirstValid(const std::vector<CheckpointInfo>& candidates,
                                               absl::string_view what) {
  std::vector<std::string> skipped;
  for (const CheckpointInfo& info : candidates) {
    absl::StatusOr<CheckpointManifest> manifest = ValidateCheckpoint(info.path);
    absl::StatusOr<ShardCheckpoint> checkpoint =
        manifest.ok() ? ReadShardCheckpoint(info, *manifest)
                      : absl::StatusOr<ShardCheckpoint>(manifest.status());
    if (checkpoint.ok()) {
      checkpoint->skipped = std::move(skipped);
      return checkpoint;
    }
    skipped.push_back(absl::StrCat("skipped ", info.path, ": ", checkpoint.status().message()));
  }
  return absl::DataLossError(
      absl::StrCat("no valid ", what, ": ", absl::StrJoin(skipped, "; ")));
}

}  // namespace

absl::StatusOr<ShardCheckpoint> Checkpointer::LoadNewest() const {
  absl::StatusOr<std::vector<CheckpointInfo>> checkpoints = ListCheckpoints(options_.root);
  if (!checkpoints.ok()) return checkpoints.status();
  if (checkpoints->empty()) {
    return absl::NotFoundError(absl::StrCat("no checkpoint under ", options_.root));
  }
  return LoadFirstValid(*checkpoints, absl::StrCat("checkpoint under ", options_.root));
}

absl::StatusOr<ShardCheckpoint> Checkpointer::LoadCut(absl::string_view run_id,
                                                      uint64_t cut) const {
  if (cut == 0) return absl::InvalidArgumentError("the cut to restore must be >= 1");
  if (!run_id.empty()) {
    if (absl::Status s = ValidateRunId(run_id); !s.ok()) return s;
  }
  absl::StatusOr<std::vector<CutEntry>> cuts = ListCuts(options_.root);
  if (!cuts.ok()) return cuts.status();
  const std::string wanted =
      absl::StrCat("cut ", cut, run_id.empty() ? "" : absl::StrCat(" of run ", run_id));
  std::vector<CheckpointInfo> candidates;  // newest first
  std::set<std::string> runs;
  for (const CutEntry& entry : *cuts) {
    if (entry.tag.cut != cut || (!run_id.empty() && entry.tag.run_id != run_id)) continue;
    candidates.push_back(entry.info);
    runs.insert(entry.tag.run_id);
  }
  if (candidates.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no checkpoint of ", wanted, " under ", options_.root,
                     "; coordinated checkpoints there: ", DescribeCuts(*cuts)));
  }
  if (runs.size() > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("cut ", cut, " exists for several runs under ", options_.root, " (",
                     absl::StrJoin(runs, ", "), "): name the run id"));
  }
  return LoadFirstValid(candidates, absl::StrCat("checkpoint of ", wanted, " under ",
                                                 options_.root));
}

absl::Status Checkpointer::RestoreInto(const ShardCheckpoint& checkpoint, ParameterStore& store) {
  const StoreOptions& options = store.options();
  if (checkpoint.shard_index != options.shard_index ||
      checkpoint.num_shards != options.num_shards) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", checkpoint.path, " belongs to shard ", checkpoint.shard_index, " of ",
        checkpoint.num_shards, ", this is shard ", options.shard_index, " of ",
        options.num_shards));
  }
  if (store.model_registered()) {
    return absl::FailedPreconditionError(
        "cannot restore a checkpoint into a store that already has a model");
  }
  absl::StatusOr<bool> registered =
      store.RegisterRestoredModel(checkpoint.table, checkpoint.initial_value_checksums);
  if (!registered.ok()) return registered.status();
  for (const std::string& worker : checkpoint.workers) {
    if (absl::Status s = store.RegisterWorker(worker); !s.ok()) return s;
  }
  if (store.OwnedParameters().size() != checkpoint.parameters.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", checkpoint.path, " holds ", checkpoint.parameters.size(),
                     " parameters, the store owns ", store.OwnedParameters().size()));
  }
  for (const ParameterSnapshot& snapshot : checkpoint.parameters) {
    if (absl::Status s = store.Restore(snapshot); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace dion
