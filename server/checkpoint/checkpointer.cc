#include "server/checkpoint/checkpointer.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "server/checkpoint/checkpoint_dir.h"
#include "server/checkpoint/checkpoint_manifest.h"
#include "server/checkpoint/npy.h"
#include "dion/v1/dion.pb.h"
#include "google/protobuf/text_format.h"
#include "common/checksum.h"
#include "common/layout.h"
#include "server/checkpoint/checkpoint_encoding.h"
#include "server/wire.h"

// On-disk format "dion-ps.shard-checkpoint.v1", one directory per checkpoint:
//   manifest.json           server/checkpoint/checkpoint_manifest.h; metadata keys below
//   model_table.textproto   the dion.v1.RegisterModelRequest of the model, without initial
//                           values (every hyper-parameter explicit; doubles print exactly)
//   dedup.txt               the batchers' dedup state (format: server/checkpoint/checkpoint_encoding.h)
//   <stem>.<tensor>.npy     per owned parameter: X, then M Q (Dion), adam_m adam_v (AdamW),
//                           lion_m (Lion), M (Muon); float32, 1-D parameters as 1-D arrays
// <stem> is FileStem(parameter name) (server/checkpoint/checkpoint_encoding.h). The real name is in the
// metadata, so the stem is never decoded.
//
// Metadata: format, sequence, shard_index, num_shards, model_name, workers (escaped, comma
// separated), initial_value_checksums (per table parameter: 16 hex digits or "-"),
// parameters (count) and per owned parameter i, in table order: parameter.<i>.name, .file
// (the stem), .optimizer, .version, .step (the optimizer's update count, Adam's t),
// .contributions_applied, .samples_applied (the lr schedule's position; absent in checkpoints
// written before the schedule existed, read as 0), .checksum (WeightsChecksum of X, hex).

namespace dion {
namespace {

constexpr absl::string_view kFormat = "dion-ps.shard-checkpoint.v1";
constexpr absl::string_view kModelTableFile = "model_table.textproto";
constexpr absl::string_view kDedupFile = "dedup.txt";
// One tensor of an optimizer state: its file suffix, where it lives and its shape.
struct StateTensor {
  absl::string_view suffix;
  Matrix* matrix;
  int64_t rows, cols;
};

// An empty state of the spec's optimizer.
OptimizerState EmptyState(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kDion: return DionState{};
    case OptimizerKind::kAdamW: return AdamWState{};
    case OptimizerKind::kLion: return LionState{};
    case OptimizerKind::kMuon: return MuonState{};
  }
  return AdamWState{};
}

// The tensors of `state`, which holds the optimizer state of `spec`. Every tensor has the
// parameter's shape except Dion's Q (min(m, n) x r).
std::vector<StateTensor> StateTensors(const ParamSpec& spec, OptimizerState& state) {
  const int64_t m = spec.rows(), n = spec.cols();
  return std::visit(
      [&](auto& s) -> std::vector<StateTensor> {
        using T = std::decay_t<decltype(s)>;
        if constexpr (std::is_same_v<T, DionState>) {
          return {{"M", &s.M, m, n}, {"Q", &s.Q, std::min(m, n), spec.rank()}};
        } else if constexpr (std::is_same_v<T, AdamWState>) {
          return {{"adam_m", &s.m, m, n}, {"adam_v", &s.v, m, n}};
        } else if constexpr (std::is_same_v<T, LionState>) {
          return {{"lion_m", &s.m, m, n}};
        } else {
          return {{"M", &s.M, m, n}};
        }
      },
      state);
}

int64_t StateStep(const OptimizerState& state) {
  return std::visit([](const auto& s) { return s.step; }, state);
}

std::string TensorFile(absl::string_view stem, absl::string_view suffix) {
  return absl::StrCat(stem, ".", suffix, ".npy");
}

std::string ParameterKey(size_t i, absl::string_view field) {
  return absl::StrCat("parameter.", i, ".", field);
}

// ------------------------------------------------------------------------------------------
// Reading helpers: every error is DataLoss naming the checkpoint directory and the file or key.

class Reader {
 public:
  Reader(std::string dir, const CheckpointManifest& manifest)
      : dir_(std::move(dir)), manifest_(manifest) {}

  absl::Status Error(absl::string_view where, absl::string_view what) const {
    return absl::DataLossError(absl::StrCat(dir_, "/", where, ": ", what));
  }

  absl::StatusOr<std::string> Meta(absl::string_view key) const {
    auto it = manifest_.metadata.find(std::string(key));
    if (it == manifest_.metadata.end()) {
      return Error(kManifestFileName, absl::StrCat("metadata '", key, "' is missing"));
    }
    return it->second;
  }

  bool HasMeta(absl::string_view key) const {
    return manifest_.metadata.contains(std::string(key));
  }

  absl::StatusOr<int64_t> MetaInt(absl::string_view key) const {
    absl::StatusOr<std::string> text = Meta(key);
    if (!text.ok()) return text.status();
    int64_t value = 0;
    if (!absl::SimpleAtoi(*text, &value)) {
      return Error(kManifestFileName,
                   absl::StrCat("metadata '", key, "' is '", *text, "', expected an integer"));
    }
    return value;
  }

  absl::StatusOr<uint64_t> MetaHex(absl::string_view key) const {
    absl::StatusOr<std::string> text = Meta(key);
    if (!text.ok()) return text.status();
    uint64_t value = 0;
    if (text->size() != 16 || !absl::SimpleHexAtoi(*text, &value)) {
      return Error(kManifestFileName,
                   absl::StrCat("metadata '", key, "' is '", *text, "', expected 16 hex digits"));
    }
    return value;
  }

  absl::StatusOr<std::string> ReadFile(absl::string_view name) const {
    if (manifest_.Find(name) == nullptr) return Error(name, "not listed in the manifest");
    const std::string path = absl::StrCat(dir_, "/", name);
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) return Error(name, "cannot be opened");
    std::string bytes;
    char buffer[1 << 16];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), f)) > 0) bytes.append(buffer, n);
    const bool failed = std::ferror(f) != 0;
    std::fclose(f);
    if (failed) return Error(name, "read error");
    return bytes;
  }

  // A float32 tensor of exactly rows x cols ({cols} when one_dimensional).
  absl::StatusOr<Matrix> Tensor(absl::string_view name, int64_t rows, int64_t cols,
                                bool one_dimensional) const {
    if (manifest_.Find(name) == nullptr) return Error(name, "not listed in the manifest");
    absl::StatusOr<NpyArray> array = ReadNpy(absl::StrCat(dir_, "/", name));
    if (!array.ok()) return absl::DataLossError(array.status().message());
    const std::vector<int64_t> expected =
        one_dimensional ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols};
    if (array->dtype != NpyDtype::kFloat32 || array->shape != expected) {
      return Error(name, absl::StrCat("expected float32 of shape (", absl::StrJoin(expected, ", "),
                                      "), found ", NpyDescr(array->dtype), " of shape (",
                                      absl::StrJoin(array->shape, ", "), ")"));
    }
    return std::move(array->f32);
  }

 private:
  std::string dir_;
  const CheckpointManifest& manifest_;
};

absl::StatusOr<ModelTable> ReadModelTable(const Reader& reader) {
  absl::StatusOr<std::string> text = reader.ReadFile(kModelTableFile);
  if (!text.ok()) return text.status();
  v1::RegisterModelRequest request;
  if (!google::protobuf::TextFormat::ParseFromString(*text, &request)) {
    return reader.Error(kModelTableFile, "not a text dion.v1.RegisterModelRequest");
  }
  absl::StatusOr<ModelTable> table = ModelTableFromProto(request);
  if (!table.ok()) return reader.Error(kModelTableFile, table.status().message());
  return table;
}

// The optimizer state of `spec` read from the files of `stem`, with the recorded step.
absl::StatusOr<OptimizerState> ReadState(const Reader& reader, const ParamSpec& spec,
                                         absl::string_view stem, int64_t step) {
  OptimizerState state = EmptyState(spec.optimizer);
  std::visit([&](auto& s) { s.step = step; }, state);
  for (const StateTensor& tensor : StateTensors(spec, state)) {
    // Element-wise moments of a 1-D parameter are 1-D like X; Dion and Muon are 2-D only.
    absl::StatusOr<Matrix> value = reader.Tensor(TensorFile(stem, tensor.suffix), tensor.rows,
                                                 tensor.cols, spec.shape.size() == 1);
    if (!value.ok()) return value.status();
    *tensor.matrix = *std::move(value);
  }
  return state;
}

absl::StatusOr<std::vector<std::vector<WorkerDedupState>>> ReadDedup(const Reader& reader,
                                                                     size_t parameters) {
  absl::StatusOr<std::string> text = reader.ReadFile(kDedupFile);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<std::vector<WorkerDedupState>>> dedup =
      ParseDedupState(*text, parameters);
  if (!dedup.ok()) return reader.Error(kDedupFile, dedup.status().message());
  return dedup;
}

// Everything of one checkpoint directory whose files passed ValidateCheckpoint.
absl::StatusOr<ShardCheckpoint> Parse(const CheckpointInfo& info,
                                      const CheckpointManifest& manifest) {
  const Reader reader(info.path, manifest);
  ShardCheckpoint checkpoint;
  checkpoint.path = info.path;
  checkpoint.sequence = info.version;

  absl::StatusOr<std::string> format = reader.Meta("format");
  if (!format.ok()) return format.status();
  if (*format != kFormat) {
    return reader.Error(kManifestFileName,
                        absl::StrCat("format '", *format, "', expected '", kFormat, "'"));
  }
  absl::StatusOr<int64_t> shard_index = reader.MetaInt("shard_index");
  if (!shard_index.ok()) return shard_index.status();
  absl::StatusOr<int64_t> num_shards = reader.MetaInt("num_shards");
  if (!num_shards.ok()) return num_shards.status();
  if (*num_shards < 1 || *num_shards > (1 << 20) || *shard_index < 0 ||
      *shard_index >= *num_shards) {
    return reader.Error(kManifestFileName, absl::StrCat("shard ", *shard_index, " of ",
                                                        *num_shards, " is not a valid shard"));
  }
  checkpoint.shard_index = static_cast<int>(*shard_index);
  checkpoint.num_shards = static_cast<int>(*num_shards);

  absl::StatusOr<ModelTable> table = ReadModelTable(reader);
  if (!table.ok()) return table.status();
  checkpoint.table = *std::move(table);
  absl::StatusOr<std::string> model_name = reader.Meta("model_name");
  if (!model_name.ok()) return model_name.status();
  if (*model_name != checkpoint.table.model_name) {
    return reader.Error(kModelTableFile, absl::StrCat("model '", checkpoint.table.model_name,
                                                      "', the manifest says '", *model_name, "'"));
  }

  absl::StatusOr<std::string> checksums = reader.Meta("initial_value_checksums");
  if (!checksums.ok()) return checksums.status();
  std::vector<absl::string_view> entries = absl::StrSplit(*checksums, ',', absl::SkipEmpty());
  if (entries.size() != checkpoint.table.parameters.size()) {
    return reader.Error(kManifestFileName,
                        absl::StrCat(entries.size(), " initial_value_checksums for ",
                                     checkpoint.table.parameters.size(), " parameters"));
  }
  for (absl::string_view entry : entries) {
    uint64_t value = 0;
    if (entry == "-") {
      checkpoint.initial_value_checksums.push_back(std::nullopt);
    } else if (entry.size() == 16 && absl::SimpleHexAtoi(entry, &value)) {
      checkpoint.initial_value_checksums.push_back(value);
    } else {
      return reader.Error(kManifestFileName,
                          absl::StrCat("initial_value_checksums entry '", entry, "'"));
    }
  }

  absl::StatusOr<std::string> workers = reader.Meta("workers");
  if (!workers.ok()) return workers.status();
  for (absl::string_view escaped : absl::StrSplit(*workers, ',', absl::SkipEmpty())) {
    absl::StatusOr<std::string> worker = Unescape(escaped);
    if (!worker.ok()) return reader.Error(kManifestFileName, worker.status().message());
    checkpoint.workers.push_back(*std::move(worker));
  }

  // The owned parameters must be exactly those the layout gives this shard, in table order.
  absl::StatusOr<Layout> layout = Layout::Compute(checkpoint.table.specs(), checkpoint.num_shards);
  if (!layout.ok()) return reader.Error(kModelTableFile, layout.status().message());
  std::vector<const ParamSpec*> owned;
  for (const ParameterDefinition& p : checkpoint.table.parameters) {
    if (layout->ShardOf(p.spec.name) == checkpoint.shard_index) owned.push_back(&p.spec);
  }
  absl::StatusOr<int64_t> count = reader.MetaInt("parameters");
  if (!count.ok()) return count.status();
  if (*count != static_cast<int64_t>(owned.size())) {
    return reader.Error(kManifestFileName,
                        absl::StrCat(*count, " parameters recorded, but shard ",
                                     checkpoint.shard_index, " owns ", owned.size()));
  }
  for (size_t i = 0; i < owned.size(); ++i) {
    const ParamSpec& spec = *owned[i];
    absl::StatusOr<std::string> name = reader.Meta(ParameterKey(i, "name"));
    if (!name.ok()) return name.status();
    if (*name != spec.name) {
      return reader.Error(kManifestFileName, absl::StrCat("parameter ", i, " is '", *name,
                                                          "', expected '", spec.name, "'"));
    }
    absl::StatusOr<std::string> stem = reader.Meta(ParameterKey(i, "file"));
    if (!stem.ok()) return stem.status();
    absl::StatusOr<std::string> optimizer = reader.Meta(ParameterKey(i, "optimizer"));
    if (!optimizer.ok()) return optimizer.status();
    if (*optimizer != OptimizerKindName(spec.optimizer)) {
      return reader.Error(kManifestFileName,
                          absl::StrCat("parameter '", spec.name, "' has optimizer '", *optimizer,
                                       "', the table says ", OptimizerKindName(spec.optimizer)));
    }
    absl::StatusOr<int64_t> version = reader.MetaInt(ParameterKey(i, "version"));
    if (!version.ok()) return version.status();
    absl::StatusOr<int64_t> step = reader.MetaInt(ParameterKey(i, "step"));
    if (!step.ok()) return step.status();
    absl::StatusOr<int64_t> applied = reader.MetaInt(ParameterKey(i, "contributions_applied"));
    if (!applied.ok()) return applied.status();
    int64_t samples_applied = 0;
    if (reader.HasMeta(ParameterKey(i, "samples_applied"))) {
      absl::StatusOr<int64_t> samples = reader.MetaInt(ParameterKey(i, "samples_applied"));
      if (!samples.ok()) return samples.status();
      samples_applied = *samples;
    }
    absl::StatusOr<uint64_t> checksum = reader.MetaHex(ParameterKey(i, "checksum"));
    if (!checksum.ok()) return checksum.status();
    if (*version < 0 || *step < 0 || *applied < 0 || samples_applied < 0) {
      return reader.Error(kManifestFileName,
                          absl::StrCat("parameter '", spec.name, "' has a negative counter"));
    }

    ParameterSnapshot snapshot;
    snapshot.spec = spec;
    snapshot.version = *version;
    snapshot.contributions_applied = *applied;
    snapshot.samples_applied = samples_applied;
    const std::string x_file = TensorFile(*stem, "X");
    absl::StatusOr<Matrix> X =
        reader.Tensor(x_file, spec.rows(), spec.cols(), spec.shape.size() == 1);
    if (!X.ok()) return X.status();
    snapshot.X = *std::move(X);
    snapshot.checksum = WeightsChecksum(snapshot.X);
    if (snapshot.checksum != *checksum) {
      return reader.Error(x_file, absl::StrCat("weights checksum ", Fnv1a64::Hex(snapshot.checksum),
                                               ", recorded ", Fnv1a64::Hex(*checksum)));
    }
    absl::StatusOr<OptimizerState> state = ReadState(reader, spec, *stem, *step);
    if (!state.ok()) return state.status();
    snapshot.state = *std::move(state);
    checkpoint.parameters.push_back(std::move(snapshot));
  }

  absl::StatusOr<std::vector<std::vector<WorkerDedupState>>> dedup =
      ReadDedup(reader, owned.size());
  if (!dedup.ok()) return dedup.status();
  checkpoint.dedup = *std::move(dedup);
  return checkpoint;
}

}  // namespace

Checkpointer::Checkpointer(CheckpointerOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::string> Checkpointer::Write(const ParameterStore& store,
                                                const std::vector<const Batcher*>& batchers) {
  if (options_.root.empty()) return absl::InvalidArgumentError("checkpoint root is empty");
  if (options_.keep_last < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep_last must be >= 1, got ", options_.keep_last));
  }
  absl::StatusOr<ModelInfo> model = store.model();
  if (!model.ok()) return model.status();
  const std::vector<std::string> owned = store.OwnedParameters();
  if (batchers.size() != owned.size()) {
    return absl::InvalidArgumentError(absl::StrCat(batchers.size(), " batchers for ",
                                                   owned.size(), " owned parameters"));
  }

  // Snapshots, checked against the batchers: a contribution in an open or unapplied batch is
  // already marked as seen, so checkpointing it would lose it on restore.
  std::vector<ParameterSnapshot> snapshots;
  std::vector<std::vector<WorkerDedupState>> dedup;
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
    snapshots.push_back(*std::move(snapshot));
    dedup.push_back(batcher->ExportDedup());
  }

  if (absl::StatusOr<int> removed = RemoveStaleTemporaries(options_.root); !removed.ok()) {
    return removed.status();
  }
  absl::StatusOr<std::vector<CheckpointInfo>> existing = ListCheckpoints(options_.root);
  if (!existing.ok()) return existing.status();
  uint64_t sequence = std::max<uint64_t>(next_sequence_, 1);
  if (!existing->empty()) sequence = std::max(sequence, existing->front().version + 1);

  absl::StatusOr<std::unique_ptr<CheckpointWriter>> writer =
      CheckpointWriter::Begin(options_.root, sequence);
  if (!writer.ok()) return writer.status();
  CheckpointWriter& w = **writer;

  v1::RegisterModelRequest request;
  request.set_model_name(model->model_name);
  for (const ParamSpec& spec : model->parameters) ParameterToProto(spec, request.add_parameters());
  std::string table_text;
  if (!google::protobuf::TextFormat::PrintToString(request, &table_text)) {
    return absl::InternalError("cannot print the model table");
  }
  if (absl::Status s = w.AddFile(kModelTableFile, table_text); !s.ok()) return s;
  if (absl::Status s = w.AddFile(kDedupFile, SerializeDedupState(dedup)); !s.ok()) return s;

  w.SetMetadata("format", kFormat);
  w.SetMetadata("sequence", absl::StrCat(sequence));
  w.SetMetadata("shard_index", absl::StrCat(store.options().shard_index));
  w.SetMetadata("num_shards", absl::StrCat(store.options().num_shards));
  w.SetMetadata("model_name", model->model_name);
  std::vector<std::string> checksums;
  for (const std::optional<uint64_t>& c : model->initial_value_checksums) {
    checksums.push_back(c.has_value() ? Fnv1a64::Hex(*c) : "-");
  }
  w.SetMetadata("initial_value_checksums", absl::StrJoin(checksums, ","));
  std::vector<std::string> workers;
  for (const std::string& worker : store.workers()) workers.push_back(Escape(worker));
  w.SetMetadata("workers", absl::StrJoin(workers, ","));
  w.SetMetadata("parameters", absl::StrCat(snapshots.size()));

  absl::flat_hash_set<std::string> stems;
  for (size_t i = 0; i < snapshots.size(); ++i) {
    ParameterSnapshot& s = snapshots[i];
    const std::string stem = FileStem(s.spec.name);
    if (!stems.insert(stem).second) {
      return absl::InternalError(absl::StrCat("file name clash for parameter '", s.spec.name, "'"));
    }
    w.SetMetadata(ParameterKey(i, "name"), s.spec.name);
    w.SetMetadata(ParameterKey(i, "file"), stem);
    w.SetMetadata(ParameterKey(i, "optimizer"), OptimizerKindName(s.spec.optimizer));
    w.SetMetadata(ParameterKey(i, "version"), absl::StrCat(s.version));
    w.SetMetadata(ParameterKey(i, "step"), absl::StrCat(StateStep(*s.state)));
    w.SetMetadata(ParameterKey(i, "contributions_applied"), absl::StrCat(s.contributions_applied));
    w.SetMetadata(ParameterKey(i, "samples_applied"), absl::StrCat(s.samples_applied));
    w.SetMetadata(ParameterKey(i, "checksum"), Fnv1a64::Hex(s.checksum));
    const bool one_d = s.spec.shape.size() == 1;
    if (absl::Status st = w.AddNpy(TensorFile(stem, "X"), s.X, one_d); !st.ok()) return st;
    for (const StateTensor& tensor : StateTensors(s.spec, *s.state)) {
      if (absl::Status st = w.AddNpy(TensorFile(stem, tensor.suffix), *tensor.matrix, one_d);
          !st.ok()) {
        return st;
      }
    }
  }

  absl::StatusOr<std::string> path = w.Commit();
  if (!path.ok()) return path.status();
  next_sequence_ = sequence + 1;
  if (absl::StatusOr<int> pruned = PruneCheckpoints(options_.root, options_.keep_last);
      !pruned.ok()) {
    return absl::Status(pruned.status().code(),
                        absl::StrCat("checkpoint ", *path, " was written, but removing old ones "
                                     "failed: ", pruned.status().message()));
  }
  return path;
}

absl::StatusOr<ShardCheckpoint> Checkpointer::LoadNewest() const {
  absl::StatusOr<std::vector<CheckpointInfo>> checkpoints = ListCheckpoints(options_.root);
  if (!checkpoints.ok()) return checkpoints.status();
  if (checkpoints->empty()) {
    return absl::NotFoundError(absl::StrCat("no checkpoint under ", options_.root));
  }
  // As FindNewestValidCheckpoint, but a checkpoint whose files are intact and whose content
  // does not parse is skipped as well.
  std::vector<std::string> skipped;
  for (const CheckpointInfo& info : *checkpoints) {
    absl::StatusOr<CheckpointManifest> manifest = ValidateCheckpoint(info.path);
    absl::StatusOr<ShardCheckpoint> checkpoint =
        manifest.ok() ? Parse(info, *manifest) : absl::StatusOr<ShardCheckpoint>(manifest.status());
    if (checkpoint.ok()) {
      checkpoint->skipped = std::move(skipped);
      return checkpoint;
    }
    skipped.push_back(absl::StrCat("skipped ", info.path, ": ", checkpoint.status().message()));
  }
  return absl::DataLossError(absl::StrCat("no valid checkpoint under ", options_.root, ": ",
                                          absl::StrJoin(skipped, "; ")));
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
