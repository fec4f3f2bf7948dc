#include "server/checkpoint/checkpoint_reader.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/checksum.h"
#include "common/layout.h"
#include "dion/v1/dion.pb.h"
#include "google/protobuf/text_format.h"
#include "server/checkpoint/checkpoint_encoding.h"
#include "server/checkpoint/npy.h"
#include "server/wire.h"

namespace dion {
namespace {

// The manifest's metadata and the listed files of one checkpoint directory; every error is
// DataLoss naming the directory and the file or key.
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

// The format tag and the shard's index and count.
absl::Status ReadIdentity(const Reader& reader, ShardCheckpoint& checkpoint) {
  absl::StatusOr<std::string> format = reader.Meta("format");
  if (!format.ok()) return format.status();
  if (*format != kShardCheckpointFormat) {
    return reader.Error(kManifestFileName, absl::StrCat("format '", *format, "', expected '",
                                                        kShardCheckpointFormat, "'"));
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
  return absl::OkStatus();
}

// The model table file, which must name the model the manifest names.
absl::StatusOr<ModelTable> ReadModelTable(const Reader& reader) {
  absl::StatusOr<std::string> text = reader.ReadFile(kModelTableFile);
  if (!text.ok()) return text.status();
  v1::RegisterModelRequest request;
  if (!google::protobuf::TextFormat::ParseFromString(*text, &request)) {
    return reader.Error(kModelTableFile, "not a text dion.v1.RegisterModelRequest");
  }
  absl::StatusOr<ModelTable> table = ModelTableFromProto(request);
  if (!table.ok()) return reader.Error(kModelTableFile, table.status().message());
  absl::StatusOr<std::string> model_name = reader.Meta("model_name");
  if (!model_name.ok()) return model_name.status();
  if (*model_name != table->model_name) {
    return reader.Error(kModelTableFile, absl::StrCat("model '", table->model_name,
                                                      "', the manifest says '", *model_name, "'"));
  }
  return table;
}

// One entry per table parameter: 16 hex digits, or "-" for a parameter without initial value.
absl::StatusOr<std::vector<std::optional<uint64_t>>> ReadInitialValueChecksums(
    const Reader& reader, size_t parameters) {
  absl::StatusOr<std::string> checksums = reader.Meta("initial_value_checksums");
  if (!checksums.ok()) return checksums.status();
  std::vector<absl::string_view> entries = absl::StrSplit(*checksums, ',', absl::SkipEmpty());
  if (entries.size() != parameters) {
    return reader.Error(kManifestFileName, absl::StrCat(entries.size(),
                                                        " initial_value_checksums for ",
                                                        parameters, " parameters"));
  }
  std::vector<std::optional<uint64_t>> out;
  for (absl::string_view entry : entries) {
    uint64_t value = 0;
    if (entry == "-") {
      out.push_back(std::nullopt);
    } else if (entry.size() == 16 && absl::SimpleHexAtoi(entry, &value)) {
      out.push_back(value);
    } else {
      return reader.Error(kManifestFileName,
                          absl::StrCat("initial_value_checksums entry '", entry, "'"));
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ReadWorkers(const Reader& reader) {
  absl::StatusOr<std::string> workers = reader.Meta("workers");
  if (!workers.ok()) return workers.status();
  std::vector<std::string> out;
  for (absl::string_view escaped : absl::StrSplit(*workers, ',', absl::SkipEmpty())) {
    absl::StatusOr<std::string> worker = Unescape(escaped);
    if (!worker.ok()) return reader.Error(kManifestFileName, worker.status().message());
    out.push_back(*std::move(worker));
  }
  return out;
}

// The parameters the layout gives this shard, in table order; the manifest must record as many.
absl::StatusOr<std::vector<const ParamSpec*>> OwnedSpecs(const Reader& reader,
                                                         const ShardCheckpoint& checkpoint) {
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
  return owned;
}

// The optimizer state of `spec` read from the files of `stem`, with the recorded step.
absl::StatusOr<OptimizerState> ReadState(const Reader& reader, const ParamSpec& spec,
                                         absl::string_view stem, int64_t step, RowBlock rows) {
  OptimizerState state = EmptyState(spec.optimizer);
  std::visit([&](auto& s) { s.step = step; }, state);
  for (const StateTensor& tensor : StateTensors(spec, state, rows)) {
    // Element-wise moments of a 1-D parameter are 1-D like X; Dion and Muon are 2-D only.
    absl::StatusOr<Matrix> value = reader.Tensor(TensorFile(stem, tensor.suffix), tensor.rows,
                                                 tensor.cols, spec.shape.size() == 1);
    if (!value.ok()) return value.status();
    *tensor.matrix = *std::move(value);
  }
  return state;
}

// The metadata of owned parameter i (whose spec is `spec`) that is not a tensor.
struct ParameterRecord {
  std::string stem;
  int64_t version = 0, step = 0, contributions_applied = 0, samples_applied = 0;
  uint64_t checksum = 0;
  RowBlock rows;  // one owner's rows of a split parameter; empty: the whole parameter
};

absl::StatusOr<ParameterRecord> ReadParameterRecord(const Reader& reader, size_t i,
                                                    const ParamSpec& spec) {
  absl::StatusOr<std::string> name = reader.Meta(ParameterKey(i, "name"));
  if (!name.ok()) return name.status();
  if (*name != spec.name) {
    return reader.Error(kManifestFileName, absl::StrCat("parameter ", i, " is '", *name,
                                                        "', expected '", spec.name, "'"));
  }
  ParameterRecord record;
  absl::StatusOr<std::string> stem = reader.Meta(ParameterKey(i, "file"));
  if (!stem.ok()) return stem.status();
  record.stem = *std::move(stem);
  absl::StatusOr<std::string> optimizer = reader.Meta(ParameterKey(i, "optimizer"));
  if (!optimizer.ok()) return optimizer.status();
  if (*optimizer != OptimizerKindName(spec.optimizer)) {
    return reader.Error(kManifestFileName,
                        absl::StrCat("parameter '", spec.name, "' has optimizer '", *optimizer,
                                     "', the table says ", OptimizerKindName(spec.optimizer)));
  }
  for (auto [field, out] : {std::pair<absl::string_view, int64_t*>{"version", &record.version},
                            {"step", &record.step},
                            {"contributions_applied", &record.contributions_applied}}) {
    absl::StatusOr<int64_t> value = reader.MetaInt(ParameterKey(i, field));
    if (!value.ok()) return value.status();
    *out = *value;
  }
  if (reader.HasMeta(ParameterKey(i, "samples_applied"))) {
    absl::StatusOr<int64_t> samples = reader.MetaInt(ParameterKey(i, "samples_applied"));
    if (!samples.ok()) return samples.status();
    record.samples_applied = *samples;
  }
  absl::StatusOr<uint64_t> checksum = reader.MetaHex(ParameterKey(i, "checksum"));
  if (!checksum.ok()) return checksum.status();
  record.checksum = *checksum;
  if (reader.HasMeta(ParameterKey(i, "row_begin"))) {
    absl::StatusOr<int64_t> begin = reader.MetaInt(ParameterKey(i, "row_begin"));
    if (!begin.ok()) return begin.status();
    absl::StatusOr<int64_t> end = reader.MetaInt(ParameterKey(i, "row_end"));
    if (!end.ok()) return end.status();
    const int64_t tall = std::max(spec.rows(), spec.cols());
    if (spec.optimizer != OptimizerKind::kDion || *begin < 0 || *end <= *begin || *end > tall) {
      return reader.Error(kManifestFileName,
                          absl::StrCat("parameter '", spec.name, "' has rows [", *begin, ", ",
                                       *end, "), not a block of its tall side of ", tall));
    }
    record.rows = RowBlock{*begin, *end};
  }
  if (record.version < 0 || record.step < 0 || record.contributions_applied < 0 ||
      record.samples_applied < 0) {
    return reader.Error(kManifestFileName,
                        absl::StrCat("parameter '", spec.name, "' has a negative counter"));
  }
  return record;
}

// Owned parameter i: its record, X (checked against the recorded checksum) and state.
absl::StatusOr<ParameterSnapshot> ReadParameter(const Reader& reader, size_t i,
                                                const ParamSpec& spec) {
  absl::StatusOr<ParameterRecord> record = ReadParameterRecord(reader, i, spec);
  if (!record.ok()) return record.status();
  ParameterSnapshot snapshot;
  snapshot.spec = spec;
  snapshot.version = record->version;
  snapshot.contributions_applied = record->contributions_applied;
  snapshot.samples_applied = record->samples_applied;
  snapshot.rows = record->rows;
  const std::string x_file = TensorFile(record->stem, "X");
  const bool block = record->rows.size() > 0;
  const int64_t x_rows = block && spec.rows() >= spec.cols() ? record->rows.size() : spec.rows();
  const int64_t x_cols = block && spec.rows() < spec.cols() ? record->rows.size() : spec.cols();
  absl::StatusOr<Matrix> X = reader.Tensor(x_file, x_rows, x_cols, spec.shape.size() == 1);
  if (!X.ok()) return X.status();
  snapshot.X = *std::move(X);
  snapshot.checksum = WeightsChecksum(snapshot.X);
  if (snapshot.checksum != record->checksum) {
    return reader.Error(x_file, absl::StrCat("weights checksum ", Fnv1a64::Hex(snapshot.checksum),
                                             ", recorded ", Fnv1a64::Hex(record->checksum)));
  }
  absl::StatusOr<OptimizerState> state =
      ReadState(reader, spec, record->stem, record->step, record->rows);
  if (!state.ok()) return state.status();
  snapshot.state = *std::move(state);
  return snapshot;
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

}  // namespace

absl::StatusOr<ShardCheckpoint> ReadShardCheckpoint(const CheckpointInfo& info,
                                                    const CheckpointManifest& manifest) {
  const Reader reader(info.path, manifest);
  ShardCheckpoint checkpoint;
  checkpoint.path = info.path;
  checkpoint.sequence = info.version;
  absl::StatusOr<CutTag> tag = ReadCutTag(manifest);
  if (!tag.ok()) return reader.Error(kManifestFileName, tag.status().message());
  checkpoint.tag = *std::move(tag);
  if (absl::Status s = ReadIdentity(reader, checkpoint); !s.ok()) return s;
  absl::StatusOr<ModelTable> table = ReadModelTable(reader);
  if (!table.ok()) return table.status();
  checkpoint.table = *std::move(table);
  absl::StatusOr<std::vector<std::optional<uint64_t>>> checksums =
      ReadInitialValueChecksums(reader, checkpoint.table.parameters.size());
  if (!checksums.ok()) return checksums.status();
  checkpoint.initial_value_checksums = *std::move(checksums);
  absl::StatusOr<std::vector<std::string>> workers = ReadWorkers(reader);
  if (!workers.ok()) return workers.status();
  checkpoint.workers = *std::move(workers);

  absl::StatusOr<std::vector<const ParamSpec*>> owned = OwnedSpecs(reader, checkpoint);
  if (!owned.ok()) return owned.status();
  for (size_t i = 0; i < owned->size(); ++i) {
    absl::StatusOr<ParameterSnapshot> snapshot = ReadParameter(reader, i, *(*owned)[i]);
    if (!snapshot.ok()) return snapshot.status();
    checkpoint.parameters.push_back(*std::move(snapshot));
  }
  absl::StatusOr<std::vector<std::vector<WorkerDedupState>>> dedup =
      ReadDedup(reader, owned->size());
  if (!dedup.ok()) return dedup.status();
  checkpoint.dedup = *std::move(dedup);
  return checkpoint;
}

}  // namespace dion
